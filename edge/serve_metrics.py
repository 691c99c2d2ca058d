"""serve's counters (Prometheus' text format) and its per-address rate limit.

Standard library only: this file ships to the device.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

# Request latency histogram bounds, in seconds (Prometheus' le= buckets).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A client may spend this many seconds of its request rate at once (a page load is 3 requests).
BURST_SECONDS = 2.0
# Client addresses the rate limit remembers; the one seen longest ago is forgotten first.
RATE_CLIENTS = 1024


class Metrics:
    """Counters and a request latency histogram, as Prometheus' text format."""

    HELP = {
        "noodle_frames_total": ("counter", "Frames read from the source."),
        "noodle_classified_total": ("counter", "Images classified, by where they came from."),
        "noodle_unknown_total": ("counter", "Answers labelled unknown (top score under --threshold), "
                                            "by where they came from."),
        "noodle_errors_total": ("counter", "Failures: camera reads and frames, refused uploads."),
        "noodle_camera_reconnects_total": ("counter", "Times the source was opened again."),
        "noodle_requests_total": ("counter", "HTTP requests by route and status code."),
    }

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., sum, count]

    def inc(self, name: str, by: int = 1, **labels: str) -> None:
        with self.lock:
            self.counts[(name, tuple(sorted(labels.items())))] += by

    def classified(self, source: str, unknown: bool) -> None:
        """An image classified (a camera frame, an upload), and whether its answer was `unknown`."""
        self.inc("noodle_classified_total", source=source)
        if unknown:
            self.inc("noodle_unknown_total", source=source)

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[("noodle_requests_total", (("code", str(status)), ("route", route)))] += 1
            h = self.latency.setdefault(route, [0] * len(LATENCY_BUCKETS) + [0.0, 0])
            for i, bound in enumerate(LATENCY_BUCKETS):
                h[i] += seconds <= bound
            h[-2] += seconds
            h[-1] += 1

    def text(self, gauges: dict[str, float]) -> bytes:
        lines = []
        with self.lock:
            for name, (kind, help_) in self.HELP.items():
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                rows = [(labels, v) for (n, labels), v in sorted(self.counts.items()) if n == name]
                for labels, value in rows or [((), 0)]:
                    inside = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{inside}}} {value}" if inside else f"{name} {value}")
            name = "noodle_request_duration_seconds"
            lines += [f"# HELP {name} HTTP request latency by route (streams: until they end).",
                      f"# TYPE {name} histogram"]
            for route, h in sorted(self.latency.items()):
                for bound, count in zip(LATENCY_BUCKETS, h, strict=False):
                    lines.append(f'{name}_bucket{{route="{route}",le="{bound:g}"}} {count}')
                lines += [f'{name}_bucket{{route="{route}",le="+Inf"}} {h[-1]}',
                          f'{name}_sum{{route="{route}"}} {h[-2]:.6f}',
                          f'{name}_count{{route="{route}"}} {h[-1]}']
        for name, (help_, value) in gauges.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return ("\n".join(lines) + "\n").encode()


class RateLimit:
    """A token bucket per client address: `rate` requests a second, BURST_SECONDS of them at once."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(1.0, rate * BURST_SECONDS)
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        if not self.rate:
            return True
        with self.lock:
            now = time.monotonic()
            tokens, last = self.buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self.buckets[client] = (tokens - allowed, now)  # re-inserted last: the order is recency
            if len(self.buckets) > RATE_CLIENTS:
                del self.buckets[next(iter(self.buckets))]
            return allowed
