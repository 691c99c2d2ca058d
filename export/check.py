"""Load and run exported models in this process's interpreter; print one JSON line.

The exporter runs this module with the device environment's Python
(`.venv-edge/bin/python -m export.check ...`, tflite-runtime 2.14, no
TensorFlow) to prove every file loads and runs on the Pi's runtime, and to
measure invoke latency and the peak memory of a process that loads and runs
one model. numpy and edge.runtime only: it must import where TensorFlow cannot.

    python -m export.check MODEL.tflite... [--pixels X.npy] [--out DIR]
                         [--runtime tflite-runtime] [--latency 200] [--threads 1,4]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import numpy as np

from edge.bench import invoke_times_ms
from edge.errors import NoodleError, first_line
from edge.runtime import RUNTIMES, Classifier, find_runtime, package_version

# Pixels used when none are passed: latency and memory do not depend on content.
RANDOM_SEED = 0
INTEGER_KINDS = "iub"  # signed, unsigned and boolean numpy kinds


def describe(interpreter) -> dict:
    """Input/output dtype, shape and quantization, and whether every tensor is integer."""

    def io(detail: dict) -> dict:
        scale, zero_point = detail["quantization"]
        return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(s) for s in detail["shape"]],
                "scale": float(scale), "zero_point": int(zero_point)}

    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    return {
        "input": io(interpreter.get_input_details()[0]),
        "output": io(interpreter.get_output_details()[0]),
        "fully_integer": all(d.kind in INTEGER_KINDS for d in dtypes),
        "tensor_dtypes": sorted(d.name for d in dtypes),
    }


def peak_rss_kb() -> int:
    """This process's peak resident memory so far, in KiB (macOS reports bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def latency_ms(clf: Classifier, pixels: np.ndarray, runs: int) -> dict:
    """Percentiles of `interpreter.invoke()` alone, batch 1, the input left set by one run."""
    times = invoke_times_ms(clf, pixels[:1], runs)
    return {"runs": runs, "p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "mean": float(times.mean())}


def check(models: list[Path], pixels: np.ndarray | None, runtime: str | None, out: Path | None,
          latency_runs: int, threads: list[int]) -> dict:
    name, _ = find_runtime(runtime)
    baseline = peak_rss_kb()
    report = {"runtime": name, "version": package_version(name), "python": sys.version.split()[0],
              "numpy": np.__version__, "baseline_rss_kb": baseline, "models": {}}
    for path in models:
        entry: dict = {}
        try:
            clf = Classifier(path, runtime=name, threads=threads[0] if threads else None)
            if pixels is None:
                pixels = np.random.default_rng(RANDOM_SEED).integers(0, 256, (8, *clf.size, 3), np.uint8)
            probs = clf.probabilities(pixels)
            entry.update(ok=True, variant=clf.variant, **describe(clf.interpreter))
            # Read before the latency runs: what loading and running one model costs.
            entry["peak_rss_kb"] = peak_rss_kb()
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                np.save(out / f"{path.stem}.npy", probs)
                entry["probabilities"] = str(out / f"{path.stem}.npy")
            if latency_runs:
                entry["latency_ms"] = {}
                for n in threads:
                    timed = clf if n == threads[0] else Classifier(path, runtime=name, threads=n)
                    entry["latency_ms"][str(n)] = latency_ms(timed, pixels, latency_runs)
        except (NoodleError, ValueError, RuntimeError) as exc:
            entry = {"ok": False, "error": first_line(exc)}
        report["models"][str(path)] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.check", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--pixels", type=Path, help="(n, h, w, 3) uint8 .npy; default 8 random images")
    parser.add_argument("--out", type=Path, help="write each model's probabilities here as <stem>.npy")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="insist on this interpreter")
    parser.add_argument("--latency", type=int, default=0, metavar="N", help="time N invokes")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts for --latency")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    try:
        pixels = np.load(args.pixels) if args.pixels is not None else None
        report = check(args.models, pixels, args.runtime, args.out, args.latency, threads)
    except NoodleError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(report))
    return 0 if all(m["ok"] for m in report["models"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
