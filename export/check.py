"""Load and run exported models in this process's interpreter; print one JSON line.

The exporter runs this module with the device environment's Python
(`.venv-edge/bin/python -m export.check ...`, tflite-runtime 2.14, no
TensorFlow) to prove every file loads and runs on the Pi's runtime, and to
measure invoke latency and the peak memory of a process that loads and runs
one model. numpy and edge.runtime only: it must import where TensorFlow cannot.

    python -m export.check MODEL.tflite... [--pixels X.npy] [--out DIR]
                         [--runtime tflite-runtime] [--latency 200] [--latency-budget 5]
                         [--threads 1,4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from edge.bench import latency_ms, peak_rss_mb
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


class ChildFailed(Exception):
    """A child process that printed no JSON line; str() is its exit code and last stderr line."""


def run_json(cmd: list, timeout: float, env: dict | None = None, ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run a child that prints one JSON line (this module, bench.probe, edge bench); its object.

    The last line starting with "{" counts, so log lines before it do no harm.
    `ok_codes`: exit codes whose JSON is a report (this module exits 1 when some model failed).
    """
    import json
    import subprocess

    cmd = [str(c) for c in cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timed out after {timeout:g} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in ok_codes or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildFailed(f"exit {done.returncode}: {tail}")
    return json.loads(lines[-1])


def check(models: list[Path], pixels: np.ndarray | None, runtime: str | None, out: Path | None,
          latency_runs: int, threads: list[int], latency_budget: float | None = None) -> dict:
    name, _ = find_runtime(runtime)
    baseline = peak_rss_mb()
    report = {"runtime": name, "version": package_version(name), "python": sys.version.split()[0],
              "numpy": np.__version__, "baseline_rss_mb": baseline, "models": {}}
    for path in models:
        entry: dict = {}
        try:
            clf = Classifier(path, runtime=name, threads=threads[0] if threads else None)
            if pixels is None:
                pixels = np.random.default_rng(RANDOM_SEED).integers(0, 256, (8, *clf.size, 3), np.uint8)
            probs = clf.probabilities(pixels)
            entry.update(ok=True, variant=clf.variant, **describe(clf.interpreter))
            # Read before the latency runs: what loading and running one model costs.
            entry["peak_rss_mb"] = peak_rss_mb()
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                np.save(out / f"{path.stem}.npy", probs)
                entry["probabilities"] = str(out / f"{path.stem}.npy")
            if latency_runs:
                entry["latency_ms"] = {}
                for n in threads:
                    timed = clf if n == threads[0] else Classifier(path, runtime=name, threads=n)
                    entry["latency_ms"][str(n)] = latency_ms(timed, pixels[:1], latency_runs,
                                                                 latency_budget)
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
    parser.add_argument("--latency-budget", type=float, metavar="S",
                        help="stop timing a model and thread count after S seconds (at least 10 invokes)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts for --latency")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    try:
        pixels = np.load(args.pixels) if args.pixels is not None else None
        report = check(args.models, pixels, args.runtime, args.out, args.latency, threads,
                       args.latency_budget)
    except NoodleError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(report))
    return 0 if all(m["ok"] for m in report["models"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
