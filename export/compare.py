"""`noodle compare`: what int8 costs in accuracy and buys in size, speed and memory.

One row per exported variant: file size; accuracy on the evaluation photos
and, paired photo by photo with float32, the delta with its 95 % interval, the
discordant photos, McNemar's exact p and a verdict (export.stats); per-class
accuracy with counts and a confusion matrix; invoke latency at 1 thread and
at every core, and the peak memory of a process that loads and runs the
model. The photos are the training data's test split, or `--test DIR`: a
labelled folder or CSV nobody trained on. Every variant runs through
`edge.runtime.Classifier` under ai-edge-litert, the code `noodle-edge
classify` runs. Latency and memory come from a fresh process per model in the
device environment (tflite-runtime 2.14) when it exists. Runtime checks and
parity with Keras come from validation.json.

Writes RUN/export/report.{md,json,png}, confusion.png and, when int8 and
float32 disagree on some photo, disagreements.png.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.atomic import write_bytes, write_json
from edge.bench import loadavg
from edge.escape import csv_cell, escape_name
from edge.manifest import ExportManifest, RunManifest, load_export
from edge.postprocess import at_boundary, predicted_index
from edge.runtime import Classifier
from export import stats
from export.config import DEFAULTS
from export.convert import (
    ExportError,
    evaluation_data,
    read_run,
)
from export.gate import REFERENCE, export_outcome, gate
from export.report_md import mapping_words, to_markdown
from export.validate import (
    EDGE_RUNTIME,
    RUNTIME,
    edge_python,
    edge_sample,
    load_scores,
    run_edge_check,
    runtime_missing,
    validate_export,
)
from train.rundir import RunDir
from train.splits import Recorded

# Timed invokes per model and thread count (ExportConfig.latency_runs), or
# fewer, at least 10, when they take longer than this (tflite-runtime 2.14's
# int8 depthwise kernels on x86 run for hundreds of ms an invoke).
LATENCY_BUDGET_S = 1.5
# The variant the contact sheet is about: the one `make bundle` ships.
SHEET_VARIANT = "int8"

log = logging.getLogger(__name__)


@dataclass
class Photos:
    """The labelled photos every variant is scored on, and where they came from."""

    source: str
    split: str  # test / val of the training data, or "external" for --test
    items: list[tuple[Path, int]] = field(default_factory=list)  # --test's
    skipped: list[dict] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)  # --test: a class read as another label
    recorded: Recorded | None = None  # the training data's split (train.splits), decoded once an export


@dataclass
class Scores:
    photos: Photos
    files: list[Path]
    x: np.ndarray  # (n, h, w, 3) uint8, what the models saw
    y: np.ndarray
    probs: dict[str, np.ndarray]  # variant -> (n, classes), under ai-edge-litert (RUNTIME)
    # A sample of the photos (device_rows, export.validate.EDGE_SAMPLE) under
    # tflite-runtime 2.14 (the Pi's on Bookworm): its int8 kernels round
    # differently, so a label can differ; a user must see that.
    device_probs: dict[str, np.ndarray] = field(default_factory=dict)
    device_runtime: str | None = None
    device_rows: np.ndarray | None = None


def evaluation_photos(run_dir: Path, train_manifest: RunManifest, data=None, test=None,
                      test_map=None) -> Photos:
    """`test` (a labelled folder or CSV) when given, else the training data's held-out split.

    `test_map`: a class of `test` -> the model's label it is (--test-map).
    """
    if test is not None:
        from train.data import read_labelled

        items, skipped, mapping = read_labelled(Path(test), train_manifest.labels, test_map)
        if mapping:
            log.info(f"{test}: classes read as the model's labels: {mapping_words(mapping)}")
        return Photos(source=str(test), split="external", items=items, skipped=skipped, mapping=mapping)
    recorded = evaluation_data(run_dir, train_manifest, data)
    shared = ((train_manifest.data or {}).get("shared_bursts") or {}).get(recorded.evaluation)
    if shared:
        raise ExportError(f"{escape_name(str(recorded.root))}: {shared} of its {recorded.evaluation} split's "
                          f"{len(recorded.splits[recorded.evaluation])} photos share a burst with training "
                          "photos (frames of one capture, shots seconds apart or near-identical views), so "
                          "no figure of them is reported: it would score memory; score on photos the model "
                          "never saw: make export TEST=folder (--test folder)")
    return Photos(source=str(recorded.root), split=recorded.evaluation, recorded=recorded)


def score(out: Path, manifest: ExportManifest, photos: Photos, edge=None) -> Scores:
    """Every listed variant's probabilities on the photos, decoded once, under both runtimes.

    ai-edge-litert in this process, every photo; tflite-runtime 2.14 in the
    device environment when it exists, a sample of them (export.validate.edge_sample).
    """
    import tempfile

    from train.data import decode
    from train.splits import evaluation_pixels

    if photos.recorded is not None:
        _, decoded = evaluation_pixels(photos.recorded, manifest.input.size)
    else:
        decoded = decode(photos.items, manifest.input.size)
    if not len(decoded.y):
        raise ExportError(f"{photos.source}: no readable photos to score the variants on")
    photos.skipped = photos.skipped + decoded.skipped
    files_sha256 = {v: e.sha256 for v, e in manifest.models.items()}
    # The photos validation scored, with these files: its figures, not a second run of every file.
    saved = None if photos.split == "external" else load_scores(RunDir(out.parent), decoded.files,
                                                                files_sha256)
    if saved is not None and all(f"litert/{v}" in saved for v in manifest.models):
        scores = Scores(photos, decoded.files, decoded.x, decoded.y,
                        {v: saved[f"litert/{v}"] for v in manifest.models})
        if "device/rows" in saved:
            scores.device_rows = saved["device/rows"]
            scores.device_probs = {v: saved[f"device/{v}"] for v in manifest.models
                                   if f"device/{v}" in saved}
            scores.device_runtime = saved_runtime(RunDir(out.parent))
        return scores
    probs = {variant: Classifier(out / entry.file, manifest=manifest, runtime=RUNTIME)
             .probabilities(decoded.x).astype(np.float64)
             for variant, entry in manifest.models.items()}
    scores = Scores(photos, decoded.files, decoded.x, decoded.y, probs)
    python = edge_python(edge)
    if python is not None and not runtime_missing(python):
        models = {v: out / e.file for v, e in manifest.models.items()}
        scores.device_rows = edge_sample(decoded.y)
        with tempfile.TemporaryDirectory(prefix="noodle-score-") as tmp:
            report = run_edge_check(python, list(models.values()), decoded.x[scores.device_rows], Path(tmp))
            scores.device_runtime = f"{report['runtime']} {report['version']}"
            for variant, path in models.items():
                result = report["models"][str(path)]
                if result["ok"]:
                    scores.device_probs[variant] = np.load(result["probabilities"]).astype(np.float64)
    return scores


def saved_runtime(run: RunDir) -> str | None:
    """The device runtime validation.json names, as "tflite-runtime 2.14.0"."""
    try:
        version = json.loads(run.validation.read_text())["runtimes"].get(EDGE_RUNTIME)
    except (OSError, ValueError, KeyError):
        return None
    return f"{EDGE_RUNTIME} {version}" if version else None


def accuracy_figures(scores: Scores, labels: list[str]) -> dict[str, dict]:
    """Per variant: accuracy, per-class, confusion, and the paired comparison with float32."""
    y, probs = scores.y, scores.probs
    reference = probs.get(REFERENCE)
    ref_pred = predicted_index(reference) if reference is not None else None
    figures = {}
    for variant, p in probs.items():
        pred = predicted_index(p)
        counts = stats.confusion(y, pred, len(labels))
        tied = at_boundary(p)
        fig = {"accuracy": float((pred == y).mean()), "per_class": stats.per_class(counts, labels),
               "confusion": {"rows": "true", "cols": "predicted", "counts": counts.tolist()},
               # Photos whose top two scores are equal, and so given to the lower class by the tie rule.
               "boundary": int(tied.sum())}
        if reference is not None:
            diff = np.abs(p - reference)
            fig.update(agreement=float((pred == ref_pred).mean()), mean_prob_diff=float(diff.mean()),
                       max_prob_diff=float(diff.max()), boundary_flips=int((tied & (pred != ref_pred)).sum()))
            if variant == REFERENCE:  # the same model: nothing to estimate
                paired = {"delta_pp": 0.0, "delta_ci95": [0.0, 0.0], "count": len(y),
                          "discordant": {"float_only": 0, "variant_only": 0}, "mcnemar_p": 1.0}
                fig["verdict"] = f"{REFERENCE}: the reference"
            else:
                paired = stats.paired_comparison(y, ref_pred, pred)
                fig["verdict"] = stats.verdict(variant, paired)
            fig.update(paired, accuracy_delta=fig["accuracy"] - float((ref_pred == y).mean()))
        if variant in scores.device_probs:
            rows = scores.device_rows
            device_pred = predicted_index(scores.device_probs[variant])
            fig["device_runtime"] = {"runtime": scores.device_runtime, "photos": int(len(rows)),
                                     "accuracy": float((device_pred == y[rows]).mean()),
                                     "accuracy_litert_same_photos": float((pred[rows] == y[rows]).mean()),
                                     "labels_differ": int((device_pred != pred[rows]).sum())}
        figures[variant] = fig
    return figures


def paired_figures(run_dir: Path, data=None, test=None, edge=None, test_map=None) -> tuple[Scores, dict]:
    """Scores and accuracy figures of RUN/export/ on the evaluation photos (no latency)."""
    train_manifest = read_run(run_dir)
    manifest = _export_manifest(run_dir)
    photos = evaluation_photos(run_dir, train_manifest, data, test, test_map)
    scores = score(RunDir(run_dir).export, manifest, photos, edge)
    return scores, accuracy_figures(scores, manifest.labels)


def write_predictions(scores: Scores, labels: list[str], dest: Path) -> None:
    """file, true label, then each variant's label and its probability, one photo a row.

    Text cells are edge.escape.csv_cell's, as `noodle-edge classify --csv` writes
    them: control characters escaped, a cell that a spreadsheet would run as a
    formula (= + - @) prefixed with a quote; edge.escape.csv_value reverses both.
    """
    import csv
    import io

    labels = [csv_cell(label) for label in labels]
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    # Columns "int8" are ai-edge-litert's; "int8@tflite-runtime" the device environment's.
    columns = {**scores.probs, **{f"{v}@{(scores.device_runtime or '').split()[0]}": p
                                  for v, p in scores.device_probs.items()}}
    out.writerow(["file", "true"] + [csv_cell(c) for v in columns for c in (v, f"{v}_score")])
    preds = {v: predicted_index(p) for v, p in columns.items()}
    # Row i of each column's probabilities: every photo under ai-edge-litert, the sample on the device.
    where = {v: np.arange(len(scores.y)) for v in scores.probs}
    if scores.device_rows is not None:
        where.update({c: scores.device_rows for c in columns if c not in scores.probs})
    at = {v: {int(photo): row for row, photo in enumerate(rows)} for v, rows in where.items()}
    def cells(v: str, i: int) -> tuple[str, str]:
        if i not in at[v]:
            return "", ""
        row = at[v][i]
        return labels[preds[v][row]], f"{columns[v][row, preds[v][row]]:.6f}"

    for i, path in enumerate(scores.files):
        out.writerow([csv_cell(str(path)), labels[scores.y[i]]] + [c for v in columns for c in cells(v, i)])
    write_bytes(dest, buffer.getvalue().encode())


def _export_manifest(run_dir: Path) -> ExportManifest:
    run = RunDir(run_dir)
    if not run.export.is_dir():
        raise ExportError(f"{run.export}: no export yet; run `noodle export {run_dir}` first")
    manifest = load_export(run.export_manifest)
    if not manifest.models:
        raise ExportError(f"{run.export_manifest}: lists no models; run `noodle export {run_dir}`")
    return manifest


def _validation(run_dir: Path, manifest: ExportManifest, data, edge) -> dict:
    """validation.json if it describes these exact files; otherwise validate again."""
    path = RunDir(run_dir).validation
    current = {v: e.sha256 for v, e in manifest.models.items()}
    if path.is_file():
        report = json.loads(path.read_text())
        if report.get("files_sha256") == current:
            return report
    log.info("validation missing or out of date; validating")
    return validate_export(run_dir, data=data, edge=edge)


# Which runtime each Raspberry Pi OS release runs a bundle under (export.wheelhouse's targets).
PI_RUNTIMES = {EDGE_RUNTIME: "Raspberry Pi OS Bookworm (Python 3.11)",
               RUNTIME: "Raspberry Pi OS Trixie (Python 3.13)"}
# Runtimes whose int8 kernels are known slow on a CPU: tflite-runtime 2.14's x86 wheel has no
# optimized int8 depthwise path, so int8 looks slower than float32 there (figures in docs/export.md,
# 'Speed under each runtime'); on the Pi's arm64 it has them.
SLOW_INT8 = {(EDGE_RUNTIME, "x86_64"), (EDGE_RUNTIME, "AMD64")}


def measure(out: Path, manifest: ExportManifest, edge, runs: int) -> tuple[dict, dict]:
    """Latency and peak memory per variant under EVERY installed runtime, each in its own process.

    tflite-runtime 2.14 in the device environment (Bookworm's) when it has it; ai-edge-litert in
    this environment (Trixie's). Returns, per variant, {runtime: figures}, and what was timed.
    """
    python = edge_python(edge)
    timed = [(EDGE_RUNTIME, python)] if python is not None and not runtime_missing(python) else []
    timed.append((RUNTIME, Path(sys.executable)))
    threads = sorted({1, os.cpu_count() or 1})
    results = {v: {} for v in manifest.models}
    info = {"threads": threads, "runtimes": []}
    with tempfile.TemporaryDirectory(prefix="noodle-bench-") as tmp:
        for runtime, py in timed:
            version = None
            for variant, entry in manifest.models.items():
                path = out / entry.file
                report = run_edge_check(py, [path], None, Path(tmp), runtime=runtime, latency=runs,
                                        threads=",".join(map(str, threads)), latency_budget=LATENCY_BUDGET_S)
                results[variant][runtime] = report["models"][str(path)]
                version = report["version"]
                info.setdefault("baseline_rss_mb", report["baseline_rss_mb"])
                log.info(f"measured {entry.file} under {runtime}")
            info["runtimes"].append({
                "name": runtime, "version": version, "python": str(py), "pi": PI_RUNTIMES.get(runtime),
                "slow_int8": (runtime, platform.machine()) in SLOW_INT8})
    # The first runtime's figures stay the row's own (latency_ms, peak RSS): the device environment's.
    info.update(runtime=timed[0][0], version=info["runtimes"][0]["version"])
    return results, info


# How the report's figures are computed, recorded in it.
STATISTICS = {"reference": REFERENCE, "delta": "variant accuracy - float32 accuracy, pp",
              "ci95": "Newcombe hybrid score interval for paired proportions (method 10)",
              "test": "McNemar exact, two-sided binomial on the discordant photos",
              "alpha": stats.ALPHA, "predicted": "argmax; an exact tie goes to the lowest class index"}


def _rows(manifest: ExportManifest, validation: dict, figures: dict, bench: dict, runtime: str) -> list[dict]:
    """A row per variant: its file, size, accuracy figures, latency, memory and the runtimes it ran on."""
    base = manifest.entry(REFERENCE)
    base_bytes = base.bytes if base else None
    rows = []
    for variant, entry in manifest.models.items():
        v, timed = validation["variants"].get(variant, {}), bench[variant]
        b = timed[runtime]  # the row's own figures: the first runtime timed (export.compare.measure)
        rows.append({
            "variant": variant, "file": entry.file, "bytes": entry.bytes,
            "size_vs_float32": entry.bytes / base_bytes if base_bytes else None,
            **figures[variant],
            "latency_ms": b.get("latency_ms"), "peak_rss_mb": b.get("peak_rss_mb"),
            "latency": {rt: t.get("latency_ms") for rt, t in timed.items()},
            "fully_integer": b.get("fully_integer", entry.fully_integer),
            "input": entry.input.to_dict(), "output": entry.output.to_dict(),
            "runtimes": {**v.get("runtimes", {}), **{rt: {"ok": t["ok"]} for rt, t in timed.items()}},
        })
    return rows


def _keras_accuracy(trained: RunManifest, validation: dict) -> float | None:
    """The Keras model on the whole split, as training scored it (validation checks float32 against
    Keras on a sample only: export.validate.EDGE_SAMPLE); None when that split shares bursts with
    training (train.groups): a figure of memory, not accuracy."""
    split = validation["split"]
    if ((trained.data or {}).get("shared_bursts") or {}).get(split):
        return None
    return (trained.metrics or {}).get(split, {}).get("accuracy", validation["keras"]["accuracy"])


def _gate_record(manifest: ExportManifest, figures: dict, count: int) -> dict:
    """The gate export recorded, decided again on this report's photos (the same when they are export's),
    and what the export may do (export.gate.export_outcome)."""
    shipping = export_outcome(manifest.validation)
    asked = (manifest.validation or {}).get("gate") or {}
    decided = gate(figures, asked["max_drop"], count).to_dict() if asked.get("max_drop") is not None else None
    return {"gate": decided, "outcome": {"outcome": shipping.outcome.value, "line": shipping.line}}


def compare_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                edge: str | os.PathLike | None = None, latency_runs: int = DEFAULTS.latency_runs,
                test: str | os.PathLike | None = None,
                top_shifts: int = DEFAULTS.top_shifts, test_map: dict[str, str] | None = None) -> dict:
    """Build, write and return the comparison report of RUN/export/.

    test: a labelled folder or CSV to score on instead of the training data's
        test split; `data` is then needed only if validation must run again.
    test_map: its classes named otherwise than the model's labels -> those labels.
    """
    from export import figures as draw

    run_dir = Path(run_dir)
    trained = read_run(run_dir)
    run = RunDir(run_dir)
    out = run.export
    manifest = _export_manifest(run_dir)
    validation = _validation(run_dir, manifest, data, edge)
    scores, figures = paired_figures(run_dir, data, test, edge, test_map)
    photos = scores.photos
    log.info(f"scored every variant on {len(scores.y)} photos from {photos.source} ({photos.split})")
    bench, bench_info = measure(out, manifest, edge, latency_runs)
    rows = _rows(manifest, validation, figures, bench, bench_info["runtime"])
    labels = manifest.labels
    files = run.reports(test)  # each set of photos its own report: --test never overwrites another's
    files.folder.mkdir(parents=True, exist_ok=True)
    write_predictions(scores, labels, files.predictions)
    sheet = draw.disagreements(scores, labels, files.disagreements, SHEET_VARIANT, REFERENCE,
                               top_shifts)
    report = {
        "run": str(run_dir),
        "test": {"source": photos.source, "split": photos.split, "count": int(len(scores.y)),
                 "skipped": photos.skipped, "mapping": photos.mapping},
        "keras_accuracy": _keras_accuracy(trained, validation),
        "labels": labels,
        # What training warned of its data (too few test photos, shared bursts): said again in report.md
        # when these are its photos.
        "data_warnings": [] if photos.split == "external" else list((trained.data or {}).get("warnings", [])),
        "validation": {"split": validation["split"], "count": validation["count"]},
        "parity": validation["parity"], "runtimes": validation["runtimes"],
        "statistics": STATISTICS,
        "calibration": {v: e.calibration for v, e in manifest.models.items() if e.calibration},
        "benchmark": {**bench_info, "runs": latency_runs, "budget_s": LATENCY_BUDGET_S,
                      "machine": platform.machine(),
                      "cpus": os.cpu_count(), "loadavg": loadavg()},
        "rows": rows, "failed": manifest.failed or {},
        **_gate_record(manifest, figures, len(scores.y)),
        "predictions": files.predictions.name,
        "report": str(files.md),
        "disagreements": sheet,
        "figures": {"confusion": draw.confusion_figure(rows, labels, files.confusion),
                    "chart": "report.png"},
    }
    write_json(files.json, report)
    write_bytes(files.md, to_markdown(report).encode())
    draw.chart(report, files.png)
    return report
