"""`noodle-edge serve`: one camera loop, a live page, an HTTP API and MQTT, from one process.

    GET  /              the live page: the stream, the label, top-k bars, FPS and invoke ms
    GET  /stream.mjpg   the camera's frames as JPEGs (multipart/x-mixed-replace)
    GET  /events        server-sent events: each new camera result as JSON (the page's feed)
    POST /v1/classify   image bytes, or a multipart/form-data file field -> the top-k as JSON
    GET  /v1/model      labels, input, variant, quantization and the metadata the file carries
    GET  /v1/latest     the camera's last result
    GET  /healthz       "ok" and the camera's state
    GET  /metrics       Prometheus text: frames, classified, errors, reconnects, requests, latency

One thread reads the source through edge.camera.Frames (its retries and back-off) and
classifies every frame once; viewers only read what it left, so clients never drive the
camera and ten viewers cost what one does. An upload is decoded in its request's thread by
edge.preprocess.load_image, the decoder `classify` uses (bomb and truncation guards, the
process's decode budget); the one interpreter runs one invoke at a time under a lock.

Safe by default: loopback only unless --host says otherwise, and beyond loopback a token is
required (compared in constant time). Bodies, connections, streaming clients and each
client's request rate are capped; only the fixed routes above exist, so no request path
ever reaches the file system; a bad request is a 4xx with a one-line JSON error, never a
traceback. Labels reach the page as JSON and are set with textContent, never as HTML.

Standard library, numpy, Pillow and an interpreter (paho-mqtt for --mqtt): this file ships
to the device. It is imported only by the `serve` command, so `classify` never pays for it.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import ipaddress
import socket
import sys
import threading
import time
from collections import Counter, deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge import camera
from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.jsonout import to_json
from edge.preprocess import DecodeBudget, ImageError, from_frame, load_image, return_freed_decodes
from edge.serve_page import PAGE, PAGE_HEADERS

# A request's line and headers must all have come this many seconds after its first wait
# began (a client sending a byte now and then holds no thread for longer), and a client
# silent this long loses its connection, and its thread with it; one in the middle of a
# request, or that never finished its first, gets a 408 first.
REQUEST_TIMEOUT = 10.0
# Open connections at once, streams included: each holds a thread and its stack.
MAX_CONNECTIONS = 64
# Bytes all request bodies being read may hold at once (a Pi 3 has 1 GB); an upload waits
# for its share, as decodes wait for theirs in edge.preprocess.BUDGET.
BODIES_BYTES = 64 * 2**20
# A body slower than this many bytes a second, after REQUEST_TIMEOUT, is cut off.
SLOWEST_BODY = 20_000
# After refusing a body it has not read, the server reads and drops what the client still
# sends for up to this long before closing, so that the client, still sending, gets the
# answer and not a reset connection (a lingering close, as Apache's).
LINGER_SECONDS = 2.0
# The stream's JPEG quality: the frame is for people to look at, not to classify.
STREAM_QUALITY = 80
# Results a second /events sends a page: a 30 fps camera need not redraw the label 30 times.
EVENTS_PER_SECOND = 10
# With no new frame for this long, a stream resends its last one and /events a comment, so
# a client that went away is noticed and its slot freed.
KEEPALIVE_SECONDS = 5.0
# A client may spend this many seconds of its request rate at once (a page load is 3 requests).
BURST_SECONDS = 2.0
# Client addresses the rate limit remembers; the one seen longest ago is forgotten first.
RATE_CLIENTS = 1024
# Request latency histogram bounds, in seconds (Prometheus' le= buckets).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A token beyond loopback: long enough that guessing at --rate requests a second is hopeless.
TOKEN_MIN = 16
# What a token may hold: URL-safe characters, the same in a header, a query and a cookie.
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
TOKEN_ENV = "NOODLE_TOKEN"
MAKE_TOKEN = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())'"
COOKIE = "noodle_token"
# Frames per second a video file is played at when its container does not say.
FILE_FPS = 25.0
# The page's FPS: frames over the last this many.
FPS_WINDOW = 30

# The only routes: path -> (methods, handler name). Anything else is a 404.
ROUTES = {
    "/": ("GET", "page"),
    "/stream.mjpg": ("GET", "stream"),
    "/events": ("GET", "events"),
    "/v1/classify": ("POST", "classify"),
    "/v1/model": ("GET", "model"),
    "/v1/latest": ("GET", "latest"),
    "/healthz": ("GET", "healthz"),
    "/metrics": ("GET", "metrics"),
}
# Routes open without the token: a health check carries no secret and tells nothing.
OPEN_ROUTES = {"/healthz"}


class ServeError(NoodleError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def same_secret(given: str, token: str) -> bool:
    """Whether `given` is the token, in time that depends on neither: digests of equal length,
    compared by hmac.compare_digest, so not even the token's length shows."""
    def digest(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()

    return hmac.compare_digest(digest(given), digest(token))


# --- options checked before the model loads ------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ServeError(f"--host {shown(host)}: not an address or a name this machine can resolve; "
                         "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def loopback_name(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback by an address or "localhost"."""
    try:
        host = urlsplit("//" + host_header.strip()).hostname or ""
    except ValueError:  # "[" without its "]"
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, token_file, host: str) -> str | None:
    """The token from --token (or $NOODLE_TOKEN) or --token-file; required beyond loopback."""
    if token is not None and token_file is not None:
        raise ServeError("--token and --token-file: give one")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ServeError(f"{escape_name(str(token_file))}: cannot read the token ({why}); "
                             "give a readable file holding it on its first line") from None
    if token is not None:
        if not token or not set(token) <= TOKEN_CHARS:
            raise ServeError("the token may hold only the letters A-Z and a-z, digits and - . _ ~ (printable "
                             f"ASCII that fits a header, an address and a cookie as it is); {MAKE_TOKEN}")
        return token
    if not is_loopback(host):
        raise ServeError(f"--host {shown(host)} serves beyond this machine, so a token is required: "
                         f"--token, ${TOKEN_ENV} or --token-file (at least {TOKEN_MIN} characters; "
                         f"{MAKE_TOKEN})")
    return None


def check_token_strength(token: str | None, host: str) -> None:
    if token is not None and len(token) < TOKEN_MIN and not is_loopback(host):
        raise ServeError(f"the token is {len(token)} characters; beyond loopback it must be at least "
                         f"{TOKEN_MIN}; {MAKE_TOKEN}")


# --- the model, shared ----------------------------------------------------------------------

class SharedModel:
    """The one interpreter: an invoke at a time, for the camera and every request."""

    def __init__(self, clf, k: int):
        from edge.runtime import embedded_metadata, package_version, read_checked

        self.clf, self.k = clf, min(k, len(clf.labels))
        self.lock = threading.Lock()
        model = read_checked(clf.path)
        self.sha256 = hashlib.sha256(model.data).hexdigest()
        embedded = embedded_metadata(model, clf.path)
        details = {"input": clf.interpreter.get_input_details()[0],
                   "output": clf.interpreter.get_output_details()[0]}
        self.info = {
            "file": clf.path.name, "sha256": self.sha256, "variant": clf.variant, "labels": clf.labels,
            "input": {"height": clf.size[0], "width": clf.size[1], "channels": 3,
                      "dtype": np.dtype(details["input"]["dtype"]).name},
            "quantization": {side: {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                                    "zero_point": int(d["quantization"][1])} for side, d in details.items()},
            "runtime": {"name": clf.runtime, "version": package_version(clf.runtime)},
            "described_by": clf.described_by, "validation": clf.validation, "top_k": self.k,
            "metadata": embedded.to_dict() if embedded is not None else None,
        }
        # A model that loads but cannot run fails here, in one line, not at the first request.
        self.classify(np.zeros((*clf.size, 3), np.uint8))

    def classify(self, pixels: np.ndarray) -> dict:
        with self.lock:
            start = time.perf_counter()
            probs = self.clf.probabilities(pixels[None])
            invoke_ms = (time.perf_counter() - start) * 1000
        top = self.clf.top_k(probs, self.k)[0]
        return {"label": top[0][0], "score": round(top[0][1], 6),
                "top": [{"label": label, "score": round(score, 6)} for label, score in top],
                "invoke_ms": round(invoke_ms, 3)}


# --- what the camera loop leaves for every reader ---------------------------------------------

class Live:
    """The camera's last frame and result, and a condition to wait on for the next.

    `seq` counts frames; `version` also counts changes of state (running, ended, ...),
    which a page shows too.
    """

    def __init__(self, source: str | None):
        self.source = source  # None: no camera, the API only
        self.cond = threading.Condition()
        self.seq = self.version = 0
        self.frame: np.ndarray | None = None
        self.result: dict | None = None
        self.state = "starting" if source else "none"
        self.closed = False
        self._times: deque = deque(maxlen=FPS_WINDOW)
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._encoding = threading.Lock()

    def publish(self, frame: np.ndarray, result: dict) -> None:
        with self.cond:
            self.seq += 1
            self.version += 1
            self.frame, self.result = frame, result
            self._times.append(time.monotonic())
            self.cond.notify_all()

    def set_state(self, state: str) -> None:
        with self.cond:
            self.state = state
            self.version += 1
            self._times.clear()  # a pause is not a slow frame
            self.cond.notify_all()

    @property
    def fps(self) -> float:
        times = self._times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float, key: str = "seq") -> int:
        """`seq` (or `version`) once it differs from `seen`, or after `timeout` seconds."""
        with self.cond:
            self.cond.wait_for(lambda: getattr(self, key) != seen or self.closed, timeout)
            return getattr(self, key)

    def snapshot(self) -> dict:
        with self.cond:
            return {"state": self.state, "source": self.source, "frame": self.seq, "version": self.version,
                    "fps": round(self.fps, 2), **(self.result or {})}

    def jpeg(self) -> tuple[int, bytes]:
        """The last frame as JPEG, encoded once per frame by the first viewer who asks."""
        from PIL import Image

        with self._encoding:
            with self.cond:
                seq, frame = self.seq, self.frame
            if frame is not None and self._jpeg[0] != seq:
                rgb = frame if frame.ndim == 2 else frame[:, :, 2::-1]  # frames are B, G, R(, A)
                out = _Buffer()
                Image.fromarray(np.ascontiguousarray(rgb)).save(out, "JPEG", quality=STREAM_QUALITY)
                self._jpeg = (seq, out.getvalue())
            return self._jpeg


class _Buffer(list):
    """A write-only file for Pillow's save: cheaper than BytesIO's growing copies."""

    def write(self, data) -> int:
        self.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self)


def file_fps(source: str) -> float:
    """A video file's frame rate, to play it as a camera would: its container's, else FILE_FPS."""
    cap = camera.open_capture(source)
    try:
        fps = float(cap.get(5)) if hasattr(cap, "get") else 0.0  # cv2.CAP_PROP_FPS
    finally:
        cap.release()
    return fps if 0 < fps <= 240 else FILE_FPS


def need_opencv(source: str) -> None:
    """OpenCV for --source, checked before listening: edge.camera.open_capture's one line otherwise."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise camera.SourceError(f"--source {shown(source)}: OpenCV is not installed; "
                                 "pip install opencv-python-headless") from None


def camera_loop(make_frames, model: SharedModel, live: Live, metrics: Metrics, stop: threading.Event,
                repeat: bool, on_result=None) -> None:
    """Read and classify frames until `stop`; a source that gives up is opened again, for ever.

    A video file is played at its own frame rate, once (or again and again with `repeat`);
    a camera or stream sets its own pace.
    """
    pace = None
    while not stop.is_set():
        frames = make_frames()
        given = 0
        try:
            if frames.is_file and pace is None:
                pace = 1.0 / file_fps(frames.source)
            live.set_state("running")
            start = time.monotonic()
            for frame in frames:
                metrics.inc("noodle_frames_total")
                try:
                    result = model.classify(from_frame(frame, model.clf.size, bgr=True))
                except NoodleError as exc:
                    metrics.inc("noodle_errors_total", kind="camera")
                    log(f"error: {live.source}: a frame could not be classified ({first_line(exc)})")
                    break
                given += 1
                metrics.inc("noodle_classified_total", source="camera")
                live.publish(frame, result)
                if on_result is not None:
                    on_result(result)
                if stop.is_set():
                    return
                if pace is not None:
                    stop.wait(max(0.0, start + given * pace - time.monotonic()))
        except camera.SourceError as exc:
            metrics.inc("noodle_errors_total", kind="camera")
            log(f"error: {exc}")
        finally:
            metrics.inc("noodle_camera_reconnects_total", frames.reopened)
        if frames.lost is not None:
            metrics.inc("noodle_errors_total", kind="camera")
            log(f"error: {frames.lost}")
        elif frames.is_file and given:
            if repeat:
                continue
            live.set_state("ended")
            log(f"{escape_name(frames.source)}: ended after {given} frame(s); the last result stays, "
                "the API goes on (--loop plays it again)")
            return
        live.set_state("reconnecting")
        log(f"warning: {frames.name}: opening it again in {camera.BACKOFF[-1]:g} s")
        metrics.inc("noodle_camera_reconnects_total")
        stop.wait(camera.BACKOFF[-1])


def guarded_camera_loop(make_frames, model, live: Live, metrics: Metrics, stop: threading.Event, repeat: bool,
                        on_result=None) -> None:
    """camera_loop, and after anything it did not expect (a driver's or OpenCV's own error), one line
    in the log and the source opened again after a pause: the thread never dies with a traceback."""
    while not stop.is_set():
        try:
            camera_loop(make_frames, model, live, metrics, stop, repeat, on_result)
            return
        except Exception as exc:  # noqa: BLE001 (the server goes on; the log says what happened)
            metrics.inc("noodle_errors_total", kind="camera")
            live.set_state("reconnecting")
            log(f"error: {live.source}: {type(exc).__name__}: {first_line(exc)}; opening it again in "
                f"{camera.BACKOFF[-1]:g} s")
            stop.wait(camera.BACKOFF[-1])


# --- counters, rate limit ---------------------------------------------------------------------

class Metrics:
    """Counters and a request latency histogram, as Prometheus' text format."""

    HELP = {
        "noodle_frames_total": ("counter", "Frames read from the source."),
        "noodle_classified_total": ("counter", "Images classified, by where they came from."),
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


# --- HTTP ---------------------------------------------------------------------------------------

class Problem(Exception):
    """A request refused: its status and the one line the client gets as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error response, for where no handler runs (connection cap, timeout)."""
    body = to_json({"error": message})
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def file_field(content_type: str, body: bytes) -> bytes:
    """The uploaded file of a multipart/form-data body: the field named file or image, or the first file."""
    from email import policy
    from email.parser import BytesParser

    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise Problem(400, "multipart/form-data without a boundary or parts; send the image as a file "
                           "field (curl -F file=@photo.jpg) or as the raw body (--data-binary @photo.jpg)")
    parts = list(message.iter_parts())
    named = [p for p in parts if p.get_param("name", header="content-disposition") in ("file", "image")]
    chosen = next(iter(named), next((p for p in parts if p.get_filename()), None))
    if chosen is None:
        raise Problem(400, "the form has no file field; send the image as a field named file "
                           "(curl -F file=@photo.jpg)")
    return chosen.get_payload(decode=True) or b""


class DeadlineReader(io.RawIOBase):
    """A connection's reads, each waiting at most until `deadline` (time.monotonic()) and at most
    REQUEST_TIMEOUT: the socket's own timeout alone restarts at every byte, so a client sending
    one now and then would hold its thread for ever."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline = float("inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("past the request's deadline")
        self.sock.settimeout(min(left, REQUEST_TIMEOUT))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(REQUEST_TIMEOUT)  # writes (a stream to a stuck viewer) keep theirs


class App:
    """Everything a request handler reads: the model, the camera's results, the limits."""

    def __init__(self, model: SharedModel, live: Live, token: str | None, max_body: int, max_streams: int,
                 rate: float):
        self.model, self.live, self.token, self.max_body = model, live, token, max_body
        self.metrics = Metrics()
        self.limit = RateLimit(rate)
        self.streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        self.streaming = 0
        self.bodies = DecodeBudget(max(BODIES_BYTES, max_body))
        self.started = time.time()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: a program classifying many images reuses one connection.
    protocol_version = "HTTP/1.1"
    server_version = "noodle-edge"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    # An answer's head and body go out in two writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK of the head, 40 ms an answer on Linux.
    disable_nagle_algorithm = True
    app: App  # set on the subclass serve() makes

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: replaced by one whose reads keep a deadline
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 1 << 16)

    def handle_one_request(self) -> None:
        """http.server's, with JSON for its refusals and a 408 for a client too slow to finish."""
        self.raw_requestline, self.status, self.body_read = b"", 0, True
        # The line and the headers, all of them, within REQUEST_TIMEOUT.
        self.reader.deadline = time.monotonic() + REQUEST_TIMEOUT
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # it has answered already, through send_error
                return
            self.reader.deadline = float("inf")  # a body gets its own (read_body); a stream reads nothing
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
            served = getattr(self, "served", 0)
            if self.raw_requestline or not served:
                self.app.metrics.request("other", 408, REQUEST_TIMEOUT)
                with contextlib.suppress(OSError):
                    self.connection.sendall(raw_response(408, f"no complete request within "
                                                              f"{REQUEST_TIMEOUT:g} s; connection closed"))
        except (ConnectionError, OSError):
            self.close_connection = True

    def finish(self) -> None:
        """Before closing on a client whose body was refused unread: drop what it still sends, for
        LINGER_SECONDS, so that it reads the answer instead of a reset (see LINGER_SECONDS)."""
        with contextlib.suppress(OSError, ValueError):
            self.wfile.flush()
            if not self.body_read:
                self.connection.shutdown(socket.SHUT_WR)
                self.reader.deadline = time.monotonic() + LINGER_SECONDS
                while self.rfile.read1(1 << 16):
                    pass
        super().finish()

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl's, for bodies over 1 MB): no go-ahead for a body over the limit."""
        length = self.headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > self.app.max_body:
            self.close_connection = True
            self.reply(413, {"error": f"a body of {length} bytes is over the {self.app.max_body} byte "
                                      "limit (--max-body-mb); send a smaller image"})
            self.app.metrics.request("/v1/classify", 413, 0.0)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self.dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch("POST")

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (a bad request line, headers too long, an unknown method) as JSON."""
        code = HTTPStatus.METHOD_NOT_ALLOWED if code == HTTPStatus.NOT_IMPLEMENTED else HTTPStatus(code)
        self.close_connection = True
        why = {HTTPStatus.METHOD_NOT_ALLOWED: "method not allowed; the routes take GET, /v1/classify POST"}
        self.reply(code, {"error": why.get(code, message or code.phrase)})
        self.app.metrics.request("other", code, 0.0)

    def send_response(self, code, message=None) -> None:
        """Every answer has a status line and headers, even to a request line without a version
        (http.server takes one as HTTP/0.9 and would send a bare body)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        super().send_response(code, message)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # dispatch logs each refused request itself, in one escaped line

    def reply(self, status: int, payload, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else to_json(payload)
        self.status = status
        self.send_response(status)
        content_type = (headers or {}).pop("Content-Type", "application/json")
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                           **(headers or {})}.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def dispatch(self, method: str) -> None:
        start = time.perf_counter()
        app, url = self.app, urlsplit(self.path)
        route = url.path if url.path in ROUTES else "other"
        self.served = getattr(self, "served", 0) + 1
        self.body_read = not (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                              or "Transfer-Encoding" in self.headers)
        try:
            if app.token is None and not loopback_name(self.headers.get("Host", "")):
                # A loopback server without a token trusts whoever reaches it, so only by a loopback
                # name: a web page elsewhere whose name was made to point here (DNS rebinding) is not.
                raise Problem(403, "without --token this server answers only to a loopback Host "
                                   "(127.0.0.1, localhost, [::1]); open it by one of those, or start it "
                                   "with --token")
            if route == "other":
                raise Problem(404, f"no such route; the routes are {', '.join(ROUTES)}")
            methods, name = ROUTES[route]
            if method not in methods:
                raise Problem(405, f"{route} takes {methods}", {"Allow": methods})
            if not app.limit.allow(self.client_address[0]):
                raise Problem(429, f"over {app.limit.rate:g} requests a second from this address (--rate); "
                                   "slow down", {"Retry-After": "1"})
            if route not in OPEN_ROUTES:
                self.check_token(url, route)
            getattr(self, name)(url)
        except Problem as problem:
            if not self.body_read:
                self.close_connection = True  # what is left of its body would read as the next request
            if problem.status >= 400:
                log(f"{self.client_address[0]} {escape_name(self.requestline[:200])}: {problem.status} "
                    f"{problem.message}")
            self.reply(problem.status, {"error": problem.message} if problem.status >= 400 else b"",
                       problem.headers)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 (a bug: one line in the log, JSON for the client)
            log(f"error: {method} {route}: {type(exc).__name__}: {first_line(exc)}")
            self.close_connection = True
            self.reply(500, {"error": "internal error; the server's log says what"})
        finally:
            app.metrics.request(route, self.status, time.perf_counter() - start)

    def check_token(self, url, route: str) -> None:
        token = self.app.token
        if token is None:
            return
        given = parse_qs(url.query).get("token", [None])[0]
        from_query = given is not None
        auth = self.headers.get("Authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None:
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    given = value
        if given is None or not same_secret(given, token):
            raise Problem(401, "missing or wrong token; send it as Authorization: Bearer TOKEN, or open "
                               "the page as /?token=TOKEN once",
                          {"WWW-Authenticate": 'Bearer realm="noodle"'})
        if from_query and route == "/":
            # Kept in a cookie the page's stream and feed send too, and dropped from the address bar.
            raise Problem(303, "", {"Location": "/", "Set-Cookie":
                                    f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"})

    # --- the routes ---

    def page(self, url) -> None:
        self.reply(200, PAGE, dict(PAGE_HEADERS))

    def need_source(self) -> None:
        if self.app.live.source is None:
            raise Problem(404, "this server has no camera (started without --source or --picamera); "
                               "it serves the API only")

    def classify(self, url) -> None:
        app = self.app
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise Problem(411, "send the image with a Content-Length (chunked bodies are not taken)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise Problem(411, "no Content-Length; POST the image's bytes (curl --data-binary @photo.jpg)")
        if not length.strip().isdigit():
            raise Problem(400, "Content-Length is not a number of bytes")
        size = int(length)
        if size > app.max_body:
            raise Problem(413, f"a body of {size} bytes is over the {app.max_body} byte limit "
                               "(--max-body-mb); send a smaller image")
        if size == 0:
            raise Problem(400, "empty body; POST the image's bytes (curl --data-binary @photo.jpg)")
        with app.bodies.hold(size):
            body = self.read_body(size)
            if self.headers.get_content_type() == "multipart/form-data":
                body = file_field(self.headers["Content-Type"], body)
            try:
                pixels = load_image("upload", app.model.clf.size, data=body)
            except ImageError as exc:
                app.metrics.inc("noodle_errors_total", kind="upload")
                raise Problem(422, f"{exc.reason}") from None
            except MemoryError:
                app.metrics.inc("noodle_errors_total", kind="upload")
                raise Problem(413, "image too large for this device's memory") from None
            del body
        result = app.model.classify(pixels)
        app.metrics.inc("noodle_classified_total", source="api")
        self.reply(200, {**result, "sha256": app.model.sha256, "variant": app.model.clf.variant})

    def read_body(self, size: int) -> bytearray:
        """The body, whole, within REQUEST_TIMEOUT plus what SLOWEST_BODY allows for its size."""
        self.reader.deadline = time.monotonic() + REQUEST_TIMEOUT + size / SLOWEST_BODY
        body, got = bytearray(size), 0
        view = memoryview(body)
        try:
            while got < size:
                n = self.rfile.readinto1(view[got:])
                if not n:
                    raise Problem(400, f"the body ended after {got} of its {size} bytes")
                got += n
        except TimeoutError:
            raise Problem(408, f"the body came too slowly or stopped ({got} of {size} bytes in time); "
                               "send it whole within seconds") from None
        finally:
            view.release()
            self.reader.deadline = float("inf")
        self.body_read = True
        return body

    def model(self, url) -> None:
        self.reply(200, self.app.model.info)

    def latest(self, url) -> None:
        self.need_source()
        self.reply(200, self.app.live.snapshot())

    def healthz(self, url) -> None:
        self.reply(200, {"status": "ok", "camera": self.app.live.state,
                         "uptime_s": round(time.time() - self.app.started, 1)})

    def metrics(self, url) -> None:
        app = self.app
        gauges = {"noodle_stream_clients": ("Streams and event feeds open now.", app.streaming),
                  "noodle_camera_fps": ("Frames a second the camera loop classifies.", app.live.fps)}
        self.reply(200, app.metrics.text(gauges), {"Content-Type": "text/plain; version=0.0.4"})

    @contextlib.contextmanager
    def streaming(self, content_type: str):
        """A slot among --max-streams, the response head, and the connection closed at the end."""
        app = self.app
        self.need_source()
        if not app.streams.acquire(blocking=False):
            raise Problem(429, f"{app.max_streams} streams and event feeds are open already "
                               "(--max-streams); close a page or try again later", {"Retry-After": "5"})
        app.streaming += 1
        try:
            self.close_connection = True
            self.status = 200
            self.send_response(200)
            for key, value in {"Content-Type": content_type, "Cache-Control": "no-store",
                               "X-Content-Type-Options": "nosniff", "Connection": "close"}.items():
                self.send_header(key, value)
            self.end_headers()
            with contextlib.suppress(ConnectionError, TimeoutError):
                yield
        finally:
            app.streaming -= 1
            app.streams.release()

    def stream(self, url) -> None:
        live = self.app.live
        with self.streaming("multipart/x-mixed-replace; boundary=frame"):
            seq = -1
            while not live.closed:
                # A new frame, or none for a while: then the last one again, which finds a dead client.
                live.wait(seq, KEEPALIVE_SECONDS)
                seq, jpeg = live.jpeg()
                if jpeg:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                     % len(jpeg) + jpeg + b"\r\n")
                    self.wfile.flush()

    def events(self, url) -> None:
        live = self.app.live
        with self.streaming("text/event-stream"):
            self.wfile.write(b"retry: 2000\n\n")
            seen = -1
            while not live.closed:
                if live.wait(seen, KEEPALIVE_SECONDS, "version") == seen:
                    self.wfile.write(b": keepalive\n\n")  # finds a client that went away
                else:
                    snapshot = live.snapshot()
                    seen = snapshot["version"]
                    self.wfile.write(b"data: " + to_json(snapshot) + b"\n\n")
                self.wfile.flush()
                time.sleep(1 / EVENTS_PER_SECOND)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # streams never end by themselves: they must not hold up the exit
    block_on_close = False

    def __init__(self, address, handler, family: socket.AddressFamily):
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(raw_response(429, f"{MAX_CONNECTIONS} connections are open already; "
                                                  "try again later"))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            log(f"error: {client_address[0]}: {type(exc).__name__}: {first_line(exc)}")


def listen(host: str, port: int, handler) -> Server:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return Server((host.strip("[]"), port), handler, family)
    except PermissionError:
        raise ServeError(f"port {port}: permission denied (ports below 1024 need root); "
                         "use --port 8080 or another above 1023") from None
    except OSError as exc:
        if exc.errno == 98 or "in use" in str(exc):
            raise ServeError(f"port {port} on {shown(host)} is in use (another serve?); stop it or pass "
                             "another --port") from None
        raise ServeError(f"--host {shown(host)} --port {port}: cannot listen there "
                         f"({exc.strerror or exc}); use an address of this machine") from None


def url_of(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = f"{socket.gethostname()}.local"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


# --- the command ------------------------------------------------------------------------------

def serve(clf, make_frames=None, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          top_k: int = 3, repeat: bool = False, max_body: int = 8_000_000, max_streams: int = 8,
          rate: float = 20.0, mqtt=None) -> None:
    """Serve until Ctrl-C or SIGTERM; `make_frames()` gives a fresh edge.camera.Frames (None: API only).

    `mqtt`: an edge.serve_mqtt.Publisher, or None.
    """
    return_freed_decodes()  # uploads decode in many threads: glibc must give their memory back
    model = SharedModel(clf, top_k)
    first = make_frames() if make_frames else None
    if first is not None and not first.picamera:
        need_opencv(first.source)
    live = Live(first.name.removeprefix("source ") if first else None)
    app = App(model, live, token, max_body, max_streams, rate)
    server = listen(host, port, type("BoundHandler", (Handler,), {"app": app}))
    stop = threading.Event()
    on_result = None
    if mqtt is not None:
        mqtt.start(model.info, live, app.metrics)
        on_result = mqtt.result
    if make_frames is not None:
        threading.Thread(target=guarded_camera_loop, name="camera", daemon=True,
                         args=(make_frames, model, live, app.metrics, stop, repeat, on_result)).start()
    url = url_of(host, port)
    labels = ", ".join(map(shown, clf.labels[:10])) + (", ..." if len(clf.labels) > 10 else "")
    log(f"serving {escape_name(str(clf.path))} ({shown(clf.variant)}, labels {labels}) on {url}"
        + (f" from {shown(live.source)}" if live.source else ", the API only (no --source)")
        + (f"; open {url}?token=TOKEN once" if token else "") + "; Ctrl-C stops")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        live.close()
        server.server_close()
        if mqtt is not None:
            mqtt.close()
