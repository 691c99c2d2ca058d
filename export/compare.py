"""`noodle compare`: what int8 costs in accuracy and buys in size, speed and memory.

One row per exported variant: file size, accuracy and agreement (from the
validation step, re-run when the files changed), invoke latency at 1 thread
and at every core, the peak memory of a process that loads and runs the
model, and whether the graph is integer only. Latency and memory come from a
fresh process per model in the device environment (tflite-runtime 2.14, the
Pi's interpreter) when it exists, else from this environment's interpreter.
Writes RUN/export/report.{md,json,png}.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

from edge.manifest import atomic_output, read_manifest, write_bytes, write_json
from export.convert import ExportError, export_dir, read_run
from export.validate import RUNTIME, VALIDATION_FILE, edge_python, run_edge_check, validate_export

# Timed invokes per model and thread count: enough for a stable p99 of a
# millisecond-scale model, a second or two per row.
LATENCY_RUNS = 200


def _validation(run_dir: Path, manifest: dict, data, edge, log) -> dict:
    """validation.json if it describes these exact files; otherwise validate again."""
    path = export_dir(run_dir) / VALIDATION_FILE
    current = {v: e["sha256"] for v, e in manifest["models"].items()}
    if path.is_file():
        import json

        report = json.loads(path.read_text())
        if report.get("files_sha256") == current:
            return report
    log("validation missing or out of date; validating")
    return validate_export(run_dir, data=data, edge=edge, log=log)


def measure(out: Path, manifest: dict, edge, runs: int, log) -> tuple[dict, dict]:
    """Latency and peak memory per variant, each in its own process."""
    python = edge_python(edge)
    runtime = "tflite-runtime" if python else RUNTIME
    python = python or Path(sys.executable)
    threads = sorted({1, os.cpu_count() or 1})
    results, info = {}, {"runtime": runtime, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="noodle-bench-") as tmp:
        for variant, entry in manifest["models"].items():
            path = out / entry["file"]
            report = run_edge_check(python, [path], None, Path(tmp), runtime=runtime, latency=runs,
                                    threads=",".join(map(str, threads)))
            results[variant] = report["models"][str(path)]
            info.update(version=report["version"], python=report["python"],
                        baseline_rss_kb=report["baseline_rss_kb"])
            log(f"measured {entry['file']}")
    return results, info


def compare_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                edge: str | os.PathLike | None = None, latency_runs: int = LATENCY_RUNS,
                log=print) -> dict:
    """Build, write and return the comparison report of RUN/export/."""
    run_dir = Path(run_dir)
    read_run(run_dir)
    out = export_dir(run_dir)
    if not out.is_dir():
        raise ExportError(f"{out}: no export yet; run `noodle export {run_dir}` first")
    manifest = read_manifest(out)
    if not manifest.get("models"):
        raise ExportError(f"{out / 'manifest.json'}: lists no models; run `noodle export {run_dir}`")
    validation = _validation(run_dir, manifest, data, edge, log)
    bench, bench_info = measure(out, manifest, edge, latency_runs, log)
    base_bytes = manifest["models"].get("float32", {}).get("bytes")
    rows = []
    for variant, entry in manifest["models"].items():
        v, b = validation["variants"].get(variant, {}), bench[variant]
        rows.append({
            "variant": variant, "file": entry["file"], "bytes": entry["bytes"],
            "size_vs_float32": entry["bytes"] / base_bytes if base_bytes else None,
            "accuracy": v.get("accuracy"), "accuracy_delta": v.get("accuracy_delta"),
            "agreement": v.get("agreement"), "mean_prob_diff": v.get("mean_prob_diff"),
            "max_prob_diff": v.get("max_prob_diff"), "per_class_accuracy": v.get("per_class_accuracy"),
            "latency_ms": b.get("latency_ms"), "peak_rss_kb": b.get("peak_rss_kb"),
            "fully_integer": b.get("fully_integer", entry.get("fully_integer")),
            "input": entry["input"], "output": entry["output"],
            "runtimes": {**v.get("runtimes", {}), bench_info["runtime"]: {"ok": b["ok"]}},
        })
    report = {
        "run": str(run_dir), "split": validation["split"], "count": validation["count"],
        "labels": validation["labels"], "keras_accuracy": validation["keras"]["accuracy"],
        "parity": validation["parity"], "runtimes": validation["runtimes"],
        "benchmark": {**bench_info, "runs": latency_runs, "machine": platform.machine(),
                      "cpus": os.cpu_count(), "loadavg": _loadavg()},
        "rows": rows, "failed": manifest.get("failed", {}),
    }
    write_json(out / "report.json", report)
    markdown = to_markdown(report)
    write_bytes(out / "report.md", markdown.encode())
    chart(report, out / "report.png")
    return report


def to_markdown(report: dict) -> str:
    threads = report["benchmark"]["threads"]
    head = ["variant", "bytes", "size vs float32", "accuracy", "delta vs float32", "agreement",
            "per-class accuracy"]
    head += [f"p50 / p99 ms, {n} thread{'s' if n > 1 else ''}" for n in threads]
    head += ["peak RSS MiB", "fully integer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["variant"], f"{r['bytes']:,}", _pct(r["size_vs_float32"], 1), _pct(r["accuracy"], 2),
                 "" if r["accuracy_delta"] is None else f"{r['accuracy_delta'] * 100:+.2f} pp",
                 _pct(r["agreement"], 2),
                 ", ".join(f"{k} {_pct(a, 1)}" for k, a in (r["per_class_accuracy"] or {}).items())]
        for n in threads:
            lat = (r["latency_ms"] or {}).get(str(n))
            cells.append(f"{lat['p50']:.3f} / {lat['p99']:.3f}" if lat else "n/a")
        cells += [f"{r['peak_rss_kb'] / 1024:.1f}" if r["peak_rss_kb"] else "n/a",
                  "yes" if r["fully_integer"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    b, p = report["benchmark"], report["parity"]
    notes = [
        f"{report['count']} {report['split']} photos; Keras model accuracy "
        f"{_pct(report['keras_accuracy'], 2)}.",
        (f"float32 parity with Keras: labels agree on {_pct(p['agreement'], 2)}, max |prob diff| "
         f"{p['max_prob_diff']:.2g} ({'ok' if p['ok'] else 'FAILED'})." if p
         else "No float32 file: parity with Keras not checked."),
        f"Every file ran under {', '.join(f'{k} {v}' for k, v in report['runtimes'].items() if v)}"
        + ("" if report["runtimes"].get("tflite-runtime") else " (tflite-runtime 2.14 NOT checked)") + ".",
        f"Latency: interpreter.invoke() alone, batch 1, {b['runs']} runs, {b['runtime']} {b['version']} "
        f"on {b['cpus']} {b['machine']} CPUs (load average {b['loadavg']}); peak RSS of a fresh "
        f"process that loads and runs one model (the bare process: {b['baseline_rss_kb'] / 1024:.1f} MiB).",
    ]
    if report["failed"]:
        notes.append("FAILED: " + "; ".join(f"{k}: {v}" for k, v in report["failed"].items()))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def chart(report: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, threads = report["rows"], report["benchmark"]["threads"]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(names, [r["bytes"] / 1024 for r in rows], color="tab:blue")
    axes[0].set_title("file size (KiB)")
    axes[1].bar(names, [(r["accuracy"] or 0) * 100 for r in rows], color="tab:green")
    low = min((r["accuracy"] or 0) * 100 for r in rows)
    axes[1].set_ylim(max(0, low - 5), 100)
    axes[1].set_title(f"accuracy on {report['count']} {report['split']} photos (%)")
    width = 0.8 / len(threads)
    for i, n in enumerate(threads):
        p50 = [((r["latency_ms"] or {}).get(str(n)) or {}).get("p50", 0) for r in rows]
        axes[2].bar([j + i * width for j in range(len(rows))], p50, width, label=f"{n} thread(s)")
    axes[2].set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(rows))], names)
    axes[2].set_title("invoke latency p50 (ms)")
    axes[2].legend()
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_output(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _pct(x, digits: int) -> str:
    return "" if x is None else f"{x * 100:.{digits}f} %"


def _loadavg() -> str | None:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return None
