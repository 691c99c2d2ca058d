"""`noodle-edge bench`: what a model costs on this machine, in the runner's own code.

Three figures: decode time per file on one core (Pillow, draft mode),
interpreter latency per invoke (batch 1 and the chosen batch, p50/p99), and
files per second end to end through edge.files.classify, the code `classify`
runs: the decode pool and batched invokes together, printing aside. Then the
process's peak memory: on copies of the largest file the decode budget
accepts it shows what `--workers 4` costs at worst.

numpy, Pillow and an interpreter only: this file ships to the device.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from edge.files import BATCH, classify, default_workers
from edge.preprocess import BUDGET, return_freed_decodes

# Invokes before timing (the first ones allocate and fill caches), and timed ones.
WARMUP = 5
INVOKES = 200
# The fewest timed invokes a time budget may stop at: a p50 of ten is still a median.
MIN_RUNS = 10


def invoke_times_ms(clf, pixels: np.ndarray, runs: int, budget_s: float | None = None) -> np.ndarray:
    """Milliseconds of each of `runs` bare `interpreter.invoke()` calls on `pixels`.

    `budget_s`: stop early once the timed invokes have taken this long (at
    least MIN_RUNS run), so a slow kernel (tflite-runtime 2.14's int8
    depthwise convolutions on x86: hundreds of ms) cannot hold up an export.
    """
    clf.invoke(pixels)  # sets the input (and size) once; only invoke() is timed
    for _ in range(WARMUP if budget_s is None else 1):
        clf.interpreter.invoke()
    times = np.empty(runs)
    spent = 0
    for i in range(runs):
        start = time.perf_counter_ns()
        clf.interpreter.invoke()
        times[i] = (time.perf_counter_ns() - start) / 1e6
        spent += times[i]
        if budget_s is not None and i + 1 >= MIN_RUNS and spent >= budget_s * 1000:
            return times[: i + 1]
    return times


def latency_ms(clf, pixels: np.ndarray, runs: int, budget_s: float | None = None) -> dict:
    """Percentiles of bare invokes on `pixels`: the one latency summary of noodle's figures.

    "runs" is the number timed: fewer than asked when `budget_s` ran out first.
    """
    times = invoke_times_ms(clf, pixels, runs, budget_s)
    runs = len(times)
    p50 = float(np.percentile(times, 50))
    return {"batch": len(pixels), "runs": runs, "p50_ms": p50, "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(times.mean()), "per_image_ms": p50 / len(pixels)}


def bench(clf, files: list[str], batch: int | None = None, workers: int | None = None,
          repeat: int = 3) -> dict:
    workers = workers or default_workers()
    return_freed_decodes()
    start = time.perf_counter()
    decoded = [clf.preprocess(f) for f in files[:INVOKES]]
    decode_ms = (time.perf_counter() - start) / len(decoded) * 1000
    pixels = np.stack(decoded)
    batch = min(batch or BATCH, len(pixels)) if clf.batchable else 1
    latency = [latency_ms(clf, pixels[:1], INVOKES)]
    if batch > 1:
        tiled = np.resize(pixels, (batch, *pixels.shape[1:]))  # repeats photos when there are fewer
        latency.append(latency_ms(clf, tiled, max(20, INVOKES // batch)))
    passes, failed = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        failed = sum(r.error is not None for r in classify(clf, files, batch=batch, workers=workers))
        passes.append(time.perf_counter() - start)
    best = min(passes)
    return {
        "peak_rss_mb": peak_rss_mb(), "decode_budget_mb": BUDGET.limit / 2**20,
        "model": str(clf.path), "variant": clf.variant, "runtime": clf.runtime,
        "files": len(files), "unreadable": failed, "batch": batch, "decode_workers": workers,
        "decode_ms_per_file": decode_ms, "latency": latency,
        "end_to_end_seconds": passes, "files_per_second": len(files) / best,
        "loadavg": loadavg(),
        "cpus": default_workers(),
    }


def rss_mb(ru_maxrss: int) -> float:
    """A getrusage/wait4 ru_maxrss in MB (10^6 bytes): bytes on macOS, KiB elsewhere."""
    return ru_maxrss / 1e6 if sys.platform == "darwin" else ru_maxrss * 1024 / 1e6


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say).

    Linux's VmHWM first: ru_maxrss of a process started by a large parent keeps
    the parent's high-water mark across fork and exec (measured: a child of a
    300 MB parent reports 313 MB against its own 13 MB), which made every
    model "cost" whatever the exporter held when it measured.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    return rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, printed beside every timing (None where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def report(f: dict) -> str:
    lines = [
        f"model         {f['model']} ({f['variant']}, {f['runtime']}, "
        f"{f['interpreter_threads']} interpreter thread(s), {f['decode_workers']} decode thread(s))",
        f"photos        {f['files']}" + (f" ({f['unreadable']} unreadable)" if f["unreadable"] else ""),
        f"decode        {f['decode_ms_per_file']:.2f} ms per file on one core",
    ]
    for lat in f["latency"]:
        lines.append(f"invoke b={lat['batch']:<3}  p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
                     f"({lat['per_image_ms']:.3f} ms per image)")
    lines.append(f"end to end    {f['files_per_second']:.0f} files/s (best of "
                 f"{', '.join(f'{s:.3f}' for s in f['end_to_end_seconds'])} s; batch {f['batch']})")
    if f.get("peak_rss_mb"):
        lines.append(f"memory        peak RSS {f['peak_rss_mb']:.0f} MB; decodes share a "
                     f"{f['decode_budget_mb']:.0f} MiB budget")
    if f["loadavg"]:
        load = " ".join(f"{x:.2f}" for x in f["loadavg"])
        lines.append(f"machine       {f['cpus']} cpu(s), loadavg {load}")
    return "\n".join(lines)
