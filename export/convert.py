"""`noodle export`: one trained Keras model to four TFLite files, a SavedModel and a manifest.

Reads top to bottom: defaults, the run folder, calibration pixels, the four
converter set-ups, then `export_run`, which writes RUN/export/. Every file goes
through `atomic_output`, the manifest last, so a killed export never leaves a
half-written file under a final name. TensorFlow is imported inside functions.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edge.atomic import OutputError, atomic_output, write_json
from edge.errors import NoodleError, first_line
from edge.manifest import (
    MANIFEST_NAME,
    ExportManifest,
    InputSpec,
    ModelEntry,
    Preprocessing,
    RunManifest,
    load_export,
    load_run,
    sha256_file,
)
from export import embed
from export.config import CALIBRATION_SPLITS, DEFAULTS, IO_TYPES, VARIANTS
from export.gate import validation_record
from export.runtime_check import describe
from train.quiet import quiet_tensorflow
from train.rundir import RunDir
from train.splits import Recorded, read_splits, unchanged

quiet_tensorflow()
log = logging.getLogger(__name__)

# tflite-runtime 2.14, the Pi's runtime on Bookworm, knows FULLY_CONNECTED up
# to version 11. Per-channel int8 weights in a dense layer make version 12,
# which it cannot load: every classic model and every multi-class model failed.
# Per-tensor weights for dense layers only (convolutions stay per-channel)
# give version 11 and, measured on the shared photos, the same accuracy.
# Recorded in each model's manifest entry.
COMPATIBILITY = {
    "dense_weights": "per-tensor",
    "why": "per-channel dense weights need FULLY_CONNECTED v12, which tflite-runtime 2.14 cannot load",
}


class ExportError(NoodleError):
    """A run folder that cannot be exported as given; the message names the fix."""


class ExportFailed(NoodleError):
    """Some variant could not be written or validated; the others were."""

    exit_code = 1


# ---------------------------------------------------------------- the run folder

def read_run(run_dir: str | os.PathLike) -> RunManifest:
    """The training manifest of RUN_DIR, checked to be one `noodle train` wrote."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder; train one with "
                          f"`noodle train DATA --out {run_dir}` (or `make export`)")
    manifest = load_run(run_dir)
    if not RunDir(run_dir).model.is_file():
        raise ExportError(f"{RunDir(run_dir).model}: no model in the run folder; "
                          f"re-run `noodle train DATA --out {run_dir}`")
    return manifest


_LOADED: dict[tuple, object] = {}


def load_model(run_dir: Path, manifest: RunManifest):
    """The Keras model, checked to take (batch, height, width, 3) images as the manifest says.

    Loaded once per process and file (export, then validation: loading
    EfficientNet-Lite0 takes seconds); callers only read it.
    """
    import keras

    path = RunDir(run_dir).model
    try:
        key = (str(path.resolve()), sha256_file(path))
        if key not in _LOADED:
            _LOADED.clear()  # one model at a time: a process exports one run
            _LOADED[key] = keras.models.load_model(path, compile=False)
        model = _LOADED[key]
    except Exception as exc:  # Keras raises many types for a bad file
        raise ExportError(f"{path}: cannot load the model ({first_line(exc)}); "
                          f"re-run `noodle train DATA --out {run_dir}`") from None
    shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    expected = (*manifest.input.size, 3)
    if shape is None or len(shape) != 4 or tuple(shape[1:]) != expected:
        raise ExportError(f"{path}: input {shape if shape else len(model.inputs)} is not the "
                          f"image (batch, {', '.join(map(str, expected))}) its manifest describes; "
                          "noodle exports image classifiers made by `noodle train`")
    return model


# ------------------------------------------------------------- calibration pixels

def evaluation_data(run_dir: str | os.PathLike, manifest: RunManifest,
                    data: str | os.PathLike | None = None) -> Recorded:
    """The photos of each split as training recorded them (RUN/splits.csv), under `data` when given."""
    recorded = read_splits(run_dir, manifest, data)
    if not recorded.splits["train"]:
        raise ExportError(f"{RunDir(run_dir).splits}: no training photos listed; train again")
    return recorded


def calibration_pixels(run_dir: str | os.PathLike, samples: int = DEFAULTS.calibration_samples,
                       seed: int = DEFAULTS.calibration_seed, data: str | os.PathLike | None = None,
                       split: str = DEFAULTS.calibration_split) -> np.ndarray:
    """`samples` photos of `split`, shuffled, decoded exactly as training decoded them.

    Raw 0-255 pixels as float32, no augmentation: the model rescales itself.
    Shuffled because the split is sorted by class, and the first few hundred
    photos of one class calibrate ranges the other class overflows.
    """
    from train.data import decode

    if split not in CALIBRATION_SPLITS:
        raise ExportError(f"--calibration-split {split}: choose {' or '.join(CALIBRATION_SPLITS)}")
    manifest = read_run(run_dir)
    recorded = evaluation_data(run_dir, manifest, data)
    rows = list(recorded.splits.get(split, []))
    random.Random(seed).shuffle(rows)
    decoded = decode(unchanged(recorded, split, rows[:samples]), manifest.input.size)
    if not len(decoded.x):
        raise ExportError(f"no readable {split} photos to calibrate int8 on; check --data")
    return decoded.x.astype(np.float32)


# ---------------------------------------------------------------- the converters

def convert(model, variant: str, calibration: np.ndarray | None = None, io: str = "uint8") -> bytes:
    """One variant's .tflite bytes."""
    converter = make_converter(model, variant, calibration, io)
    with quiet_stdout(), warnings.catch_warnings():
        # Raised whenever the input is uint8/int8: its range comes from the
        # representative data, which is what we want, so the warning says nothing.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def make_converter(model, variant: str, calibration: np.ndarray | None = None, io: str = "uint8"):
    """The TFLiteConverter set up for one variant (the int8 diagnosis reuses int8's).

    `model`: a Keras model, or the folder of its SavedModel. From the folder
    the graph is traced once for every variant: from a Keras model each
    conversion traces and saves it again (seconds a variant for EfficientNet-Lite0).
    """
    import tensorflow as tf

    if isinstance(model, (str, os.PathLike)):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(model))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "float16":
        # float16 weights, dequantized at load: half the size, float32 accuracy.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        # int8 weights, float activations: a quarter of the size, no calibration.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    elif variant == "int8":
        if calibration is None or not len(calibration):
            raise ExportError("int8 needs calibration pixels")

        def representative():
            for i in range(len(calibration)):
                yield [calibration[i : i + 1].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # Integer kernels only, so it runs on integer-only accelerators (Edge TPU, NPUs).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    elif variant != "float32":
        raise ExportError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return converter


def convert_all(graph, variants: list[str], calibration: np.ndarray | None, io: str) -> dict:
    """Each variant's .tflite bytes, or the exception its converter raised.

    The converter runs on one core, and int8 (its calibration included) takes
    as long as the three others together, so with a SavedModel to read and a
    second core the float variants convert in a second process meanwhile.
    """
    floats = [v for v in variants if v != "int8"]
    if "int8" not in variants or not floats or not isinstance(graph, Path) or (os.cpu_count() or 1) < 2:
        return {v: _attempt(graph, v, calibration, io) for v in variants}
    import concurrent.futures
    import multiprocessing

    # spawn: TensorFlow's threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        others = pool.submit(_convert_each, str(graph), floats, io)
        blobs = {"int8": _attempt(graph, "int8", calibration, io)}
        try:
            blobs.update(others.result())
        except Exception as exc:  # the second process died: its variants failed with it
            blobs.update({v: RuntimeError(f"the converter's process failed ({_first_line(exc)})")
                          for v in floats})
    return blobs


def _attempt(graph, variant: str, calibration: np.ndarray | None, io: str):
    try:
        return convert(graph, variant, calibration, io)
    except Exception as exc:  # reported per variant by export_run
        return exc


def _convert_each(graph: str, variants: list[str], io: str) -> dict:
    """In the second process: the float variants, which need no calibration."""
    return {v: _attempt(Path(graph), v, None, io) for v in variants}


@contextlib.contextmanager
def quiet_stdout():
    """Silence stdout, Python's and the C++ one: the converter saves the Keras
    model with every variable printed, and the quantizer prints its settings."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def inspect(path: Path) -> dict:
    """Input/output quantization and integer-ness, read back from the written file."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the exporter's environment always has TensorFlow's
        from tensorflow.lite import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    info = describe(interpreter)
    info.pop("tensor_dtypes")
    return info


def write_model(run: RunDir, variant: str, blob: bytes, described: RunManifest | ExportManifest) -> dict:
    """Write RUN/export/<variant>.tflite with its description embedded; return its manifest entry.

    Labels, input, output kind and preprocessing go inside the file (its
    flatbuffer metadata), so a copy that lost its manifest still classifies.
    The sha256 is of the final file, metadata included.
    """
    from export import tflite_metadata
    from export.metadata import embed

    blob = embed(blob, {"variant": variant, "labels": described.labels, "input": described.input.to_dict(),
                        "output": described.output, "preprocessing": described.preprocessing.to_dict()})
    # And the standard TFLite Metadata, which MediaPipe, the Task Library and phone apps read.
    blob = tflite_metadata.write(blob, variant, described)
    dest = run.tflite(variant)
    with atomic_output(dest) as tmp:
        tmp.write_bytes(blob)
    return {"file": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size, **inspect(dest)}


def write_saved_model(model, dest: Path) -> None:
    """model.export into a temporary folder, then swapped in whole."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with quiet_stdout():
            model.export(str(tmp / "model"), format="tf_saved_model", verbose=False)
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp / "model", dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the export

def parse_variants(variants) -> list[str]:
    """A list, or comma-separated names, in the canonical order; None means all four."""
    if not variants:
        return list(VARIANTS)
    names = [v.strip() for item in variants for v in str(item).split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ExportError(f"--variants {','.join(unknown)}: unknown; choose from {','.join(VARIANTS)}")
    return [v for v in VARIANTS if v in names]


def export_run(run_dir: str | os.PathLike, variants: list[str] | None = None,
               calibration_samples: int = DEFAULTS.calibration_samples, io: str = DEFAULTS.io,
               calibration: np.ndarray | None = None, data: str | os.PathLike | None = None,
               calibration_split: str = DEFAULTS.calibration_split) -> ExportManifest:
    """Write RUN_DIR/export/ and return its manifest.

    calibration: float32 pixels (n, h, w, 3) to calibrate int8 on instead of
        `calibration_samples` shuffled training photos, for experiments (the
        tests feed 0-1 pixels here to show that a wrong scale is caught).
    data: the training data, when it has moved since `noodle train`.
    Progress goes to this module's logger, a line a file; an exception one of
    its handlers raises stops the export between two files, as a kill would.
    A variant that fails to convert is listed under "failed"; the rest are written.
    """
    run_dir = Path(run_dir)
    variants = parse_variants(variants)
    if io not in IO_TYPES:
        raise ExportError(f"--io {io}: choose uint8 (raw camera pixels) or int8")
    if calibration_samples < 1:
        raise ExportError(f"--calibration-samples {calibration_samples}: must be at least 1")
    trained, model = _trained_model(run_dir)
    import keras
    import tensorflow as tf

    run = RunDir(run_dir)
    run.export.mkdir(parents=True, exist_ok=True)
    source = {"model": run.model.name, "sha256": sha256_file(run.model),
              "arch": trained.arch, "params": trained.params}
    # One rule: the export lists exactly what it writes and validates now; a variant of an
    # earlier export that is not asked for again is removed (below), never listed as if made now.
    models: dict[str, ModelEntry] = {}
    _clear(run.export)
    pixels, calibration_info = None, None
    if "int8" in variants:
        pixels, calibration_info = _calibration(run_dir, calibration, calibration_samples, calibration_split,
                                                data)
    failed: dict[str, str] = {}
    graph = _saved_model(model, run, failed)
    _write_variants(run, trained, convert_all(graph, variants, pixels, io), calibration_info, models, failed)
    embed.write(run, model, trained, pixels, io, data)  # embed.tflite and features.npz, for teaching
    _remove_stale(run, models, variants)
    manifest = ExportManifest(
        labels=trained.labels,
        # The .tflite files take pixels as the device gives them, whatever Keras saw.
        input=InputSpec(height=trained.input.height, width=trained.input.width),
        output=trained.output,
        preprocessing=trained.preprocessing,
        source=source,
        converter={"tensorflow": tf.__version__, "keras": keras.__version__},
        models={v: models[v] for v in VARIANTS if v in models},
        saved_model=None if "saved_model" in failed else "saved_model/",
        failed=failed,
        # Filled in by record_validation; until then the export is not fit to ship.
        validation=None,
    )
    write_json(run.export_manifest, manifest.to_dict())
    return manifest


def _trained_model(run_dir: Path):
    """The run's manifest and Keras model; the normalization recorded as the model computes it."""
    from train.models import preprocessing

    trained = read_run(run_dir)
    model = load_model(run_dir, trained)
    # Read from the model: a run trained before noodle read it says otherwise.
    trained.preprocessing = Preprocessing.from_dict(preprocessing(model, trained.preprocessing.to_dict()))
    return trained, model


def _remove_stale(run: RunDir, models: dict, variants: list[str]) -> None:
    """The .tflite files this export did not write: an earlier export's, never listed as if made now."""
    for stale in VARIANTS:
        if stale not in models and run.tflite(stale).is_file():
            run.tflite(stale).unlink()
            if stale not in variants:
                log.info(f"removed  {run.tflite(stale)} (not asked for this time)")


def _clear(out: Path) -> None:
    """No manifest until the new one is written, so a killed export is never taken for a
    complete one with stale checksums; and no temporary file or folder of a killed one."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for leftover in out.glob(".*.tmp*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def calibration_set(run_dir: str | os.PathLike, samples: int, split: str,
                    data: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """`samples` shuffled photos of `split` to calibrate int8 on, and how the manifest records them."""
    pixels = calibration_pixels(run_dir, samples, data=data, split=split)
    return pixels, {"samples": len(pixels), "requested": samples, "split": split, "from": f"{split} split",
                    "shuffle_seed": DEFAULTS.calibration_seed, "pixels": "raw 0-255 float32"}


def _calibration(run_dir: Path, given: np.ndarray | None, samples: int, split: str,
                 data) -> tuple[np.ndarray, dict]:
    """int8's calibration pixels (the caller's, else the split's) and their record; a warning when few."""
    if given is None:
        pixels, info = calibration_set(run_dir, samples, split, data)
    else:
        pixels = np.asarray(given, np.float32)
        info = {"samples": len(pixels), "from": "given by the caller",
                "pixel_range": [float(pixels.min()), float(pixels.max())]}
    if len(pixels) < DEFAULTS.calibration_warn_below:
        log.warning(f"int8 calibrated on only {len(pixels)} photos (fewer than "
                    f"{DEFAULTS.calibration_warn_below}); activation ranges may miss their tails: "
                    "raise --calibration-samples or add photos")
    return pixels, info


def _saved_model(model, run: RunDir, failed: dict[str, str]):
    """The SavedModel first: every variant converts from it, tracing the graph once.

    Its failure is reported in `failed` and the variants convert from the Keras model.
    """
    try:
        write_saved_model(model, run.saved_model)
    except Exception as exc:  # the SavedModel is a by-product; its failure is reported
        failed["saved_model"] = _first_line(exc)
        log.info(f"failed   saved_model: {failed['saved_model']}; converting from the Keras model")
        return model
    log.info(f"wrote    {run.saved_model}/")
    return run.saved_model


def _write_variants(run: RunDir, trained: RunManifest, blobs: dict, calibration_info: dict | None,
                    models: dict[str, ModelEntry], failed: dict[str, str]) -> None:
    """Each converted variant written with its entry into `models`; a failure into `failed` instead."""
    for variant in [v for v in VARIANTS if v in blobs]:  # in order, float32 first, whatever converted first
        blob, dest = blobs[variant], run.tflite(variant)
        try:
            if isinstance(blob, BaseException):
                raise blob
            entry = write_model(run, variant, blob, trained)
            if variant == "int8":
                entry["calibration"] = calibration_info
            if variant == "dynamic":
                entry["compatibility"] = COMPATIBILITY
            models[variant] = ModelEntry.from_dict(entry, f"models.{variant}")
        except OutputError:  # a full disk fails every variant after it too: stop, in one line
            raise
        except Exception as exc:  # one variant's converter error must not lose the others
            failed[variant] = _first_line(exc)
            models.pop(variant, None)
            dest.unlink(missing_ok=True)
            log.info(f"failed   {dest.name}: {failed[variant]}")
            continue
        log.info(f"wrote    {dest}  ({models[variant].bytes:,} bytes)")


def record_validation(run_dir: str | os.PathLike, report: dict,
                      max_drop: float | None = None) -> ExportManifest:
    """Export's verdict on its own files, from validation's report; returns the new manifest.

    A file some runtime could not load or run leaves the manifest and the
    disk (it would fail on a device), and is named with the reason. The
    manifest then records that validation finished and whether it passed;
    `noodle bundle` ships only an export whose validation passed. With `max_drop`
    it has not passed until the gate says so (export.gate.record_gate).
    """
    run = RunDir(run_dir)
    out = run.export
    manifest = load_export(out)
    for variant, reason in report["failed"].items():
        entry = manifest.models.pop(variant, None)
        manifest.failed[variant] = reason
        if entry:
            (out / entry.file).unlink(missing_ok=True)
            log.info(f"removed  {out / entry.file}: {reason}")
    parity_ok = report["parity"] is None or report["parity"]["ok"]
    manifest.validation = {
        **validation_record(bool(manifest.models) and parity_ok and not report["failed"], max_drop),
        "report": run.validation.name, "report_sha256": sha256_file(run.validation),
        "split": report["split"], "count": report["count"],
        "runtimes": report["runtimes"],
    }
    write_json(out / MANIFEST_NAME, manifest.to_dict())
    return manifest


def _first_line(exc: BaseException) -> str:
    # The type too: a converter's bare message ("Failed to ...") hides which stage failed.
    return f"{type(exc).__name__}: {first_line(exc)}"
