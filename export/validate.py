"""Validate an export: run every .tflite with the edge runner's code on held-out photos.

A separate step from conversion (as in optimum's exporter): it reads only what
`export_run` wrote. Each file runs through `edge.runtime.Classifier`, the code
the device runs, under ai-edge-litert in this process and under tflite-runtime
2.14 (the Pi's) in the device environment `.venv-edge` via `export.runtime_check`.
float32 must match the Keras model; every variant gets accuracy, its delta
and agreement with float32, probability differences and per-class accuracy,
written to RUN/export/validation.json.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from edge.atomic import write_bytes, write_json
from edge.errors import first_line
from edge.manifest import ExportManifest, load_export, sha256_file
from edge.postprocess import predicted_index
from edge.runtime import Classifier, RuntimeMissing, package_version
from export.child import ChildFailed, run_json
from export.convert import (
    ExportError,
    ExportFailed,
    evaluation_data,
    load_model,
    read_run,
)
from train.quiet import quiet_tensorflow
from train.rundir import RunDir

log = logging.getLogger(__name__)

# float32 is the same graph as the Keras model: only float summation order may
# differ, so labels agree on (nearly) every image and probabilities to 1e-4.
PARITY_AGREEMENT = 0.999
PARITY_MAX_DIFF = 1e-4
# The in-process interpreter, and the Pi's one checked in the device environment.
RUNTIME = "ai-edge-litert"
EDGE_RUNTIME = "tflite-runtime"
# The device environment `make edge-env` builds; $NOODLE_EDGE_PYTHON overrides it.
EDGE_PYTHON_ENV = "NOODLE_EDGE_PYTHON"
DEFAULT_EDGE_PYTHON = Path(__file__).resolve().parent.parent / ".venv-edge" / "bin" / "python"
# tflite-runtime 2.14 scores a seeded sample of this many photos (every class
# in proportion), ai-edge-litert all of them: on x86 its int8 depthwise
# convolutions are about 30x slower than ai-edge-litert's (say nothing of a
# Pi's), so an EfficientNet would take minutes over a few hundred photos.
# Label parity between the two runtimes is checked on the sample.
EDGE_SAMPLE = 100
# Threads for scoring photos (not for timing them: compare measures 1 thread and all).
CORES = os.cpu_count() or 1


class ParityError(ExportFailed):
    """float32.tflite does not compute what model.keras computes."""


def edge_python(path: str | os.PathLike | None = None) -> Path | None:
    """The device environment's Python, or None when it has not been made."""
    candidate = Path(path or os.environ.get(EDGE_PYTHON_ENV) or DEFAULT_EDGE_PYTHON)
    return candidate if candidate.is_file() else None


@functools.cache
def runtime_missing(python: Path) -> str | None:
    """Why the device environment cannot run EDGE_RUNTIME, or None when it can.

    tflite-runtime 2.14 has wheels for Python 3.11 and older only: a device
    environment made by a 3.12+ Python (a Debian 13 host) holds ai-edge-litert.
    Asked once a process (a child Python each time): validation, scoring and
    timing all need the answer.
    """
    import subprocess

    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tflite_runtime') is None)"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
    if done.returncode == 0:
        return None
    version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60).stdout.strip() or "?"
    return f"the device environment is Python {version}, without {EDGE_RUNTIME} (it has no wheels past 3.11)"


def edge_sample(y: np.ndarray, n: int = EDGE_SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded sample of `n` photos, each class in proportion (all when fewer)."""
    if len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # Round-robin over classes in a shuffled order: every class keeps its share.
    ranks = np.empty(len(y))
    for c in np.unique(y):
        members = order[y[order] == c]
        ranks[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.sort(order[np.argsort(ranks[order], kind="stable")[:n]])


def run_edge_check(python: Path, models: list[Path], pixels: np.ndarray | None, workdir: Path,
                   runtime: str = EDGE_RUNTIME, latency: int = 0, threads: str = "1",
                   latency_budget: float | None = None) -> dict:
    """`python -m export.runtime_check` in another environment; its one-line JSON report."""
    args = [str(python), "-m", "export.runtime_check", *map(str, models), "--runtime", runtime,
            "--latency", str(latency), "--threads", threads]
    if latency_budget is not None:
        args += ["--latency-budget", str(latency_budget)]
    if pixels is not None:
        np.save(workdir / "pixels.npy", pixels)
        args += ["--pixels", str(workdir / "pixels.npy"), "--out", str(workdir / "probabilities")]
    env = quiet_tensorflow(dict(os.environ))
    env.pop("NOODLE_RUNTIME", None)
    try:
        report = run_json(args, timeout=900, env=env, ok_codes=(0, 1))
    except ChildFailed as exc:
        raise ExportError(f"{python} -m export.runtime_check failed ({exc}); rebuild the device "
                          "environment with `make edge-env`") from None
    if "error" in report:
        raise ExportError(f"{python} -m export.runtime_check: {report['error']}")
    return report


def metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], reference: np.ndarray | None) -> dict:
    pred = predicted_index(probs)
    out = {
        "accuracy": float((pred == y).mean()),
        "per_class_accuracy": {c: float((pred[y == i] == i).mean()) if (y == i).any() else None
                               for i, c in enumerate(labels)},
    }
    if reference is not None:
        diff = np.abs(probs - reference)
        out.update(agreement=float((pred == predicted_index(reference)).mean()),
                   mean_prob_diff=float(diff.mean()), max_prob_diff=float(diff.max()))
    return out


def _scored(out: Path, manifest: ExportManifest, x: np.ndarray) -> tuple[dict, dict]:
    """(variant -> probabilities under RUNTIME, variant -> why it could not run)."""
    probs, failed = {}, {}
    for variant, entry in manifest.models.items():
        try:
            # Every core: this scores photos, it does not time them.
            clf = Classifier(out / entry.file, manifest=manifest, runtime=RUNTIME, threads=CORES)
            probs[variant] = clf.probabilities(x).astype(np.float64)
        except RuntimeMissing:
            raise
        except Exception as exc:  # any load or run error of one file is that file's failure
            failed[variant] = f"{RUNTIME} cannot run it: {first_line(exc)}"
    return probs, failed


def _variants(manifest: ExportManifest, probs: dict, y: np.ndarray, rows: np.ndarray,
              keras_probs: np.ndarray) -> dict:
    """Each variant's figures: against the labels, float32 and (on the sample `rows`) Keras."""
    labels, reference, variants = manifest.labels, probs.get("float32"), {}
    for variant, p in probs.items():
        entry = manifest.models[variant]
        variants[variant] = {"file": entry.file, "bytes": entry.bytes, "fully_integer": entry.fully_integer,
                             **metrics(y, p, labels, reference),
                             "vs_keras": metrics(y[rows], p[rows], labels, keras_probs)}
        if reference is not None:
            delta = variants[variant]["accuracy"] - variants["float32"]["accuracy"]
            variants[variant]["accuracy_delta"] = delta
        variants[variant]["runtimes"] = {RUNTIME: {"ok": True}}
    return variants


def validate_export(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                    edge: str | os.PathLike | None = None) -> dict:
    """Validate RUN/export/, write validation.json, return it.

    A report, not a verdict on the files: it never changes what export
    wrote. `report["failed"]` names each file a runtime could not load or
    run, and `report["parity"]["ok"]` says whether float32 matches the Keras
    model; `export.convert.record_validation` decides what that means for
    the export's manifest, and `raise_for` turns it into the exit code.
    """
    from train.results import predict_probabilities
    from train.splits import evaluation_pixels

    run_dir = Path(run_dir)
    train_manifest = read_run(run_dir)
    run = RunDir(run_dir)
    out = run.export
    manifest = _export_of(run)
    split, decoded = evaluation_pixels(evaluation_data(run_dir, train_manifest, data), manifest.input.size)
    x, y, labels = decoded.x, decoded.y, manifest.labels
    log.info(f"validating on the {split} split: {len(y)} photos under {RUNTIME}")

    # The sample tflite-runtime scores is also where float32 is checked against
    # Keras: parity is a property of the graph, and Keras is the slow one.
    rows = edge_sample(y)
    keras_probs = predict_probabilities(load_model(run_dir, train_manifest), x[rows])
    probs, failed = _scored(out, manifest, x)
    variants = _variants(manifest, probs, y, rows, keras_probs)
    device = {}
    edge_report = _check_on_device_runtime(out, manifest, x, probs, variants, failed, edge, rows, device)
    for variant in failed:  # the report lists as run only what ran under every runtime
        variants.pop(variant, None)
    keras_metrics = {**metrics(y[rows], keras_probs, labels, None), "count": int(len(rows))}
    parity = _parity(variants["float32"]["vs_keras"]) if "float32" in variants else None
    report = {
        "split": split, "count": int(len(y)), "labels": labels,
        "source_sha256": manifest.source["sha256"],
        "files_sha256": {v: manifest.models[v].sha256 for v in variants if v in manifest.models},
        "keras": keras_metrics, "parity": parity,
        "runtimes": {RUNTIME: package_version("ai-edge-litert"),
                     EDGE_RUNTIME: edge_report.get("version") if edge_report else None},
        "edge_python": edge_report.get("python_path") if edge_report else None,
        # The photos tflite-runtime scored: a sample of `count` (EDGE_SAMPLE).
        "edge_count": edge_report.get("photos") if edge_report else 0,
        "variants": variants, "failed": failed,
    }
    write_json(run.validation, report)
    save_scores(run, decoded.files, y, {v: probs[v] for v in variants}, device, report)
    if ((train_manifest.data or {}).get("shared_bursts") or {}).get(split):  # memory, not accuracy
        log.info(f"accuracy not reported: the {split} split shares bursts with training (train.groups)")
        return report
    for variant, v in variants.items():
        log.info(f"{variant:<8} accuracy {v['accuracy']:.2%}"
                 + (f"  delta {v['accuracy_delta'] * 100:+.2f} pp  agreement {v['agreement']:.2%}"
                    f"  max |dp| {v['max_prob_diff']:.2g}" if "agreement" in v else ""))
    return report


def _export_of(run: RunDir) -> ExportManifest:
    """RUN/export's manifest, checked to be of RUN's model.keras and to list a file."""
    manifest = load_export(run.export)
    if manifest.source.get("sha256") != sha256_file(run.model):
        raise ExportError(f"{run.export}: exported from another model.keras (retrained since?); "
                          f"run `noodle export {run.root}` again")
    if not manifest.models:
        raise ExportFailed(f"{run.export}: no variant was written ("
                           + "; ".join(f"{v}: {m}" for v, m in (manifest.failed or {}).items()) + ")")
    return manifest


def _parity(k: dict) -> dict:
    """float32 against Keras on the sample: agreement, largest probability shift, and whether both pass."""
    return {"agreement": k["agreement"], "max_prob_diff": k["max_prob_diff"],
            "required": {"agreement": PARITY_AGREEMENT, "max_prob_diff": PARITY_MAX_DIFF},
            "ok": k["agreement"] >= PARITY_AGREEMENT and k["max_prob_diff"] <= PARITY_MAX_DIFF}


def save_scores(run: RunDir, files: list[Path], y: np.ndarray, probs: dict, device: dict,
                report: dict) -> None:
    """validation.npz: the photos, and each variant's probabilities under both runtimes.

    `noodle compare` scores the same photos with the same files; it reads
    these instead of running every file again (export.compare.score).
    """
    import io

    arrays = {"files": np.array([str(f) for f in files]), "y": y,
              "files_sha256": np.array(json.dumps(report["files_sha256"], sort_keys=True))}
    arrays.update({f"litert/{v}": p for v, p in probs.items()})
    arrays.update({f"device/{v}": p for v, p in device.items() if v in probs or v == "rows"})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(run.validation_scores, buffer.getvalue())


def load_scores(run: RunDir, files: list[Path], files_sha256: dict) -> dict | None:
    """validation.npz's arrays when they are of these photos and these files, else None."""
    try:
        with np.load(run.validation_scores, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    same_files = json.loads(str(arrays["files_sha256"])) == files_sha256
    same_photos = arrays["files"].tolist() == [str(f) for f in files]
    return arrays if same_files and same_photos else None


def raise_for(report: dict) -> None:
    """ParityError when float32 is not the Keras model; ExportFailed when a file failed."""
    parity = report["parity"]
    if parity is not None and not parity["ok"]:
        raise ParityError(
            f"float32.tflite: differs from model.keras (labels agree on {parity['agreement']:.2%} of "
            f"{report['count']} photos, need {PARITY_AGREEMENT:.1%}; max |prob diff| "
            f"{parity['max_prob_diff']:.2g}, need <= {PARITY_MAX_DIFF:g}); "
            "the converter changed the model: re-export, and report it if it persists")
    if report["failed"]:
        raise ExportFailed("; ".join(f"{v}: {m}" for v, m in report["failed"].items()))


# How an interpreter names an op it does not know, in both runtimes' words.
UNKNOWN_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")


def explain_load_error(path: Path, runtime: str, error: str) -> str:
    """A runtime's load error as one line naming the layers and a fix that works.

    The interpreter's own advice (re-export, upgrade the runtime) cannot help
    a user whose Pi runs Bookworm, so an op version it lacks is traced back to
    the layers that use it, read from the file itself.
    """
    match = UNKNOWN_OP.search(error)
    if not match:
        return f"{runtime} cannot load {path.name}: {error}"
    op, version = match.group(1), int(match.group(2))
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    layers = []
    for graph in model.subgraphs:
        for operator in graph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            builtin = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if builtin == op and code.version == version and len(operator.outputs):
                layers.append(graph.tensors[operator.outputs[0]].name.decode(errors="replace").split(";")[0])
    where = f" (layers: {', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''})" if layers else ""
    return (f"{runtime} cannot run {path.name}: op {op} version {version}{where} is newer than it "
            f"knows; leave this variant out (--variants), or run ai-edge-litert on the device "
            "(Python 3.12+, Raspberry Pi OS trixie)")


def _check_on_device_runtime(out: Path, manifest: ExportManifest, x: np.ndarray, probs: dict, variants: dict,
                             failed: dict, edge, rows: np.ndarray, device: dict) -> dict | None:
    """Load and run every file under tflite-runtime 2.14 in the device environment, on a sample.

    Fills `device` with the sample's rows and each variant's probabilities on them.
    """
    python = edge_python(edge)
    missing = None if python is None else runtime_missing(python)
    if python is None or missing:
        why = missing or "no device environment"
        log.warning(f"{why} ({edge or DEFAULT_EDGE_PYTHON.parent.parent.name}); files NOT checked under "
                    f"{EDGE_RUNTIME} 2.14: " + ("put a python3.11 on PATH and rebuild it (rm -rf .venv-edge, "
                                                "make edge-env), or make pi-check" if missing
                                                else "run `make edge-env`"))
        for v in variants.values():
            v["runtimes"][EDGE_RUNTIME] = {"ok": None, "error": f"not checked: {why}"}
        return None
    models = [out / manifest.models[v].file for v in variants]
    device["rows"] = rows
    log.info(f"checking under {EDGE_RUNTIME} on {len(rows)} of the {len(x)} photos "
             "(export.validate.EDGE_SAMPLE)")
    with tempfile.TemporaryDirectory(prefix="noodle-check-") as tmp:
        report = run_edge_check(python, models, x[rows], Path(tmp), threads=str(CORES))
        for variant, path in zip(list(variants), models, strict=True):
            result = report["models"][str(path)]
            if not result["ok"]:
                failed[variant] = explain_load_error(path, f"{EDGE_RUNTIME} {report['version']}",
                                                     result["error"])
                continue
            edge_probs = device[variant] = np.load(result["probabilities"]).astype(np.float64)
            agree = float((predicted_index(edge_probs) == predicted_index(probs[variant][rows])).mean())
            variants[variant]["runtimes"][EDGE_RUNTIME] = {
                "ok": True, "photos": int(len(rows)), "agreement_with_litert": agree,
                "max_prob_diff_vs_litert": float(np.abs(edge_probs - probs[variant][rows]).max())}
    report["python_path"] = str(python)
    report["photos"] = int(len(rows))
    return report


