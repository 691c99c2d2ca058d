"""Load and run exported models in this process's interpreter; print one JSON line.

The exporter runs this module with the device environment's Python
(`.venv-edge/bin/python -m export.runtime_check ...`, tflite-runtime 2.14, no
TensorFlow) to prove every file loads and runs on the Pi's runtime, and to
measure invoke latency and the peak memory of a process that loads and runs
one model. numpy and edge.runtime only: it must import where TensorFlow cannot.

    python -m export.runtime_check MODEL.tflite... [--pixels X.npy] [--out DIR]
                         [--runtime tflite-runtime] [--latency 200] [--latency-budget 5]
                         [--threads 1,4]
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

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


# The interpreters --runtime may insist on, named by edge.runtime's table.
RuntimeName = Enum("RuntimeName", {name: name for name in RUNTIMES}, type=str)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    models: Annotated[list[Path], typer.Argument(help="The .tflite files to load and run.")],
    pixels: Annotated[Path | None, typer.Option(
        help="(n, h, w, 3) uint8 .npy; default 8 random images.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write each model's probabilities here as <stem>.npy.")] = None,
    runtime: Annotated[RuntimeName | None, typer.Option(help="Insist on this interpreter.")] = None,
    latency: Annotated[int, typer.Option(metavar="N", help="Time N invokes.")] = 0,
    latency_budget: Annotated[float | None, typer.Option(
        metavar="S", help="Stop timing a model and thread count after S seconds (at least 10 "
                          "invokes).")] = None,
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts for --latency.")] = "1",
) -> None:
    """Load and run exported models in this process's interpreter; print one JSON line.

    Exit 0 when every model loaded and ran, 1 when one did not, 2 when none could be tried.
    """
    counts = [int(t) for t in threads.split(",") if t.strip()]
    try:
        loaded = np.load(pixels) if pixels is not None else None
        report = check(models, loaded, runtime.value if runtime else None, out, latency, counts,
                       latency_budget)
    except NoodleError as exc:
        print(json.dumps({"error": str(exc)}))
        raise typer.Exit(2) from None
    print(json.dumps(report))
    raise typer.Exit(0 if all(m["ok"] for m in report["models"].values()) else 1)


if __name__ == "__main__":
    from train.quiet import quiet_tensorflow

    quiet_tensorflow()
    app(prog_name="python -m export.runtime_check")
