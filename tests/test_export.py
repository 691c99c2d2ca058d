"""The export stage: convert, validate, compare, and what an interrupted export leaves.

Most tests share the session's `exported_run` (the trained sample model, all
four variants). Tests that need a model whose accuracy is known in advance use
`brightness_run`: a hand-weighted net that tells bright photos from dark ones
perfectly, so a calibration mistake shows as a drop from 100 % to chance.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.atomic import write_json
from edge.manifest import (
    SCHEMA,
    ExportManifest,
    InputSpec,
    ModelEntry,
    Preprocessing,
    TensorSpec,
    load_run,
    read_manifest,
    sha256_file,
)
from edge.preprocess import PREPROCESSING
from edge.runtime import Classifier
from export.convert import VARIANTS, calibration_pixels, export_run
from export.validate import ParityError, raise_for, validate_export
from tests.device_env import device_env, tflite_runtime_python
from tests.hostile import (
    SIZE,
    error_line,
    keras_model,
)
from tests.test_compare import brightness_model, run_manifest, write_run

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["bright", "dark"]


def loads(path: Path) -> bool:
    """Whether an interpreter can load and allocate the file (no manifest needed)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(path)).allocate_tensors()
    except (ValueError, RuntimeError):
        return False
    return True


def copy_run(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("model.keras", "splits.csv", "manifest.json"):
        shutil.copy2(src / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def brightness_run(tmp_path_factory) -> Path:
    """A run folder whose model is right on every photo: P(dark) = sigmoid(6 - 12 * brightness)."""

    data = tmp_path_factory.mktemp("brightness") / "photos"
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        for label, (low, high) in (("bright", (160, 230)), ("dark", (25, 95))):
            folder = data / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                level = rng.integers(low, high)
                pixels = np.clip(level + rng.integers(-20, 21, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)

    return write_run(data.parent / "run", brightness_model(size=64), data, size=64)


@pytest.fixture(scope="module")
def validation(exported_run) -> dict:
    return validate_export(exported_run)


# ---------------------------------------------------------------- convert

def test_all_variants_written_and_listed_with_sha256(exported_run):
    out = exported_run / "export"
    manifest = read_manifest(out)
    assert manifest["kind"] == "export" and manifest["failed"] == {}
    assert list(manifest["models"]) == list(VARIANTS)
    assert manifest["source"]["sha256"] == sha256_file(exported_run / "model.keras")
    assert manifest["labels"] == read_manifest(exported_run)["labels"]
    for variant, entry in manifest["models"].items():
        path = out / f"{variant}.tflite"
        assert entry["file"] == path.name
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
        assert entry["fully_integer"] is (variant == "int8")
    sizes = {v: e["bytes"] for v, e in manifest["models"].items()}
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8"] < 0.35 * sizes["float32"]
    int8 = manifest["models"]["int8"]
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dtype"] == "uint8"
    assert int8["input"]["scale"] == pytest.approx(1.0, rel=0.05)  # raw 0-255 pixels, unchanged
    assert int8["calibration"]["from"] == "train split"
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert not list(out.glob(".*tmp*"))


def test_every_file_runs_through_the_edge_runner(exported_run):
    size = load_run(exported_run).input.size
    pixels = np.random.default_rng(0).integers(0, 256, (3, *size, 3), np.uint8)
    outputs = {}
    for variant in VARIANTS:
        probs = Classifier(exported_run / "export" / f"{variant}.tflite").probabilities(pixels)
        assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
        outputs[variant] = probs
    assert np.abs(outputs["float16"] - outputs["float32"]).max() < 1e-2


def test_int8_io_option_and_an_export_lists_exactly_what_it_wrote(brightness_run, tmp_path):
    run = copy_run(brightness_run, tmp_path / "run")
    export_run(run, variants=["float32", "float16"])
    manifest = export_run(run, variants=["int8"], io="int8")
    entry = manifest.models["int8"]
    assert entry.input.dtype == "int8" and entry.input.zero_point == -128
    # One rule: what this export wrote, nothing left from the earlier one.
    assert list(manifest.models) == ["int8"]
    assert sorted(p.name for p in (run / "export").glob("*.tflite")) == ["int8.tflite"]


def test_a_failing_variant_is_reported_and_the_others_written(brightness_run, tmp_path):
    run = copy_run(brightness_run, tmp_path / "run")
    wrong_shape = np.zeros((4, 32, 32, 3), np.float32)  # the calibrator cannot feed these
    manifest = export_run(run, variants=["float32", "int8"], calibration=wrong_shape)
    assert list(manifest.models) == ["float32"] and set(manifest.failed) == {"int8"}
    assert (run / "export" / "float32.tflite").is_file()
    assert not (run / "export" / "int8.tflite").exists()


# ---------------------------------------------------------------- validate

def test_float32_matches_keras(exported_run):
    import keras

    from train.data import decode, find_dataset

    manifest = load_run(exported_run)
    test_items = find_dataset(manifest.data["root"]).splits["test"]
    x = decode(test_items, manifest.input.size).x
    expected = keras.models.load_model(exported_run / "model.keras").predict(x.astype(np.float32),
                                                                             verbose=0)[:, 0]
    got = Classifier(exported_run / "export" / "float32.tflite").probabilities(x)[:, 1]
    assert np.abs(got - expected).max() <= 1e-4


def test_validation_report(exported_run, validation):
    assert validation["split"] == "test" and validation["count"] == 40
    assert validation["parity"]["ok"] and validation["parity"]["agreement"] >= 0.999
    assert validation["parity"]["max_prob_diff"] <= 1e-4
    for variant in VARIANTS:
        v = validation["variants"][variant]
        for key in ("accuracy", "accuracy_delta", "agreement", "mean_prob_diff", "max_prob_diff"):
            assert isinstance(v[key], float), (variant, key)
        assert set(v["per_class_accuracy"]) == set(validation["labels"])
        assert v["runtimes"]["ai-edge-litert"]["ok"]
    assert validation["variants"]["float32"]["accuracy_delta"] == 0.0
    on_disk = json.loads((exported_run / "export" / "validation.json").read_text())
    assert on_disk["files_sha256"] == {v: e["sha256"]
                                       for v, e in read_manifest(exported_run / "export")["models"].items()}


def test_every_file_runs_under_tflite_runtime_2_14(validation):
    tflite_runtime_python()  # skips, saying why, on a 3.12+ host
    assert validation["runtimes"]["tflite-runtime"] == "2.14.0"
    for variant in VARIANTS:
        check = validation["variants"][variant]["runtimes"]["tflite-runtime"]
        assert check["ok"] and check["agreement_with_litert"] == 1.0, variant


def test_edge_check_reports_a_model_the_runtime_cannot_load(tmp_path):
    env = device_env()  # its runtime: tflite-runtime 2.14, or ai-edge-litert on a 3.12+ host
    bad = tmp_path / "int8.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)  # the identifier, then nothing valid
    entry = ModelEntry(bad.name, sha256_file(bad), bad.stat().st_size,
                       TensorSpec("uint8", [1, 64, 64, 3], 1.0, 0), TensorSpec("uint8", [1, 1], 1 / 256, 0),
                       fully_integer=True)
    write_json(tmp_path / "manifest.json", ExportManifest(
        LABELS, InputSpec(64, 64), "sigmoid", Preprocessing.from_dict(PREPROCESSING), {"sha256": "0" * 64},
        {}, {"int8": entry}, saved_model=None).to_dict())
    done = subprocess.run([str(env.python), "-m", "export.runtime_check", str(bad), "--runtime", env.runtime],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and report["version"] == env.version
    entry = report["models"][str(bad)]
    # The structural check refuses it before the interpreter could crash on it.
    assert entry["ok"] is False and "damaged model file" in entry["error"]


def test_parity_failure_is_a_typed_error(exported_run, tmp_path):
    import keras

    run = copy_run(exported_run, tmp_path / "run")
    shutil.copytree(exported_run / "export", run / "export")
    # A model with other weights, as if the converter had changed the graph.
    model = keras.models.load_model(run / "model.keras")
    other = keras.models.clone_model(model)
    other.set_weights([w + np.random.default_rng(1).normal(0, 0.5, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    other.save(run / "model.keras")
    manifest = read_manifest(run / "export")
    manifest["source"]["sha256"] = sha256_file(run / "model.keras")
    write_json(run / "export" / "manifest.json", manifest)
    with pytest.raises(ParityError) as err:
        raise_for(validate_export(run, edge=tmp_path / "no-edge-env"))
    assert err.value.exit_code != 0 and "float32.tflite" in str(err.value)
    assert not json.loads((run / "export" / "validation.json").read_text())["parity"]["ok"]


def test_wrong_calibration_scale_collapses_int8_in_the_report(brightness_run, tmp_path):
    from export.compare import compare_run

    reports = {}
    for name, scale in (("right", 1.0), ("wrong", 1 / 255)):
        run = copy_run(brightness_run, tmp_path / name)
        pixels = calibration_pixels(run) * scale  # 0-255, or the classic 0-1 mistake
        export_run(run, variants=["float32", "int8"], calibration=pixels)
        validate_export(run)
        reports[name] = compare_run(run, latency_runs=5)
    rows = {name: {r["variant"]: r for r in report["rows"]} for name, report in reports.items()}
    assert rows["right"]["float32"]["accuracy"] == 1.0 and rows["wrong"]["float32"]["accuracy"] == 1.0
    assert rows["right"]["int8"]["accuracy"] == 1.0
    # Every pixel above 1 saturates the int8 input: every photo looks white.
    assert rows["wrong"]["int8"]["accuracy"] == 0.5
    assert rows["wrong"]["int8"]["accuracy_delta"] == -0.5
    assert rows["wrong"]["int8"]["input"]["scale"] == pytest.approx(1 / 255, rel=0.05)
    table = (tmp_path / "wrong" / "export" / "report.md").read_text()
    assert "| int8 |" in table and "50.00 %" in table and "| -50.00 (" in table
    assert (tmp_path / "wrong" / "export" / "report.png").stat().st_size > 0


# ---------------------------------------------------------------- interruptions

class Stop(Exception):
    pass


def test_interrupted_between_variants_leaves_only_loadable_files(brightness_run, tmp_path):
    run = copy_run(brightness_run, tmp_path / "run")
    export_run(run, variants=["float32", "float16"])  # a previous export

    class StopAfterFloat16(logging.Handler):
        def emit(self, record):
            if "float16.tflite" in record.getMessage():
                raise Stop

    logger, handler = logging.getLogger("export.convert"), StopAfterFloat16()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the progress lines, as a command shows them
    try:
        with pytest.raises(Stop):
            export_run(run)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    out = run / "export"
    assert not (out / "manifest.json").exists()  # no manifest vouching for a partial export
    assert {p.name for p in out.glob("*.tflite")} >= {"float32.tflite", "float16.tflite"}
    assert all(loads(p) for p in out.glob("*.tflite"))
    assert not list(out.glob(".*tmp*"))


def test_killed_export_leaves_no_broken_tflite(brightness_run, tmp_path):
    run = copy_run(brightness_run, tmp_path / "run")
    out = run / "export"
    proc = subprocess.Popen([sys.executable, "-m", "noodle", "export", str(run), "--edge", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 300
    try:
        # Kill as soon as the first file is being written.
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(out.iterdir()):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert all(loads(p) for p in out.glob("*.tflite"))
    # The next export cleans up after the killed one and completes.
    manifest = export_run(run, variants=["float32"])
    assert list(manifest.models) == ["float32"] and not list(out.glob(".*tmp*"))


# ---------------------------------------------------------------- bad input

def one_line_error(*args: str) -> str:
    from noodle import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_is_one_line_exit_2(brightness_run, tmp_path):
    import keras

    assert "no such run folder" in one_line_error("export", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no manifest" in one_line_error("export", str(empty))

    no_model = tmp_path / "no-model"
    no_model.mkdir()
    shutil.copy2(brightness_run / "manifest.json", no_model)
    assert "no model" in one_line_error("export", str(no_model))

    old = copy_run(brightness_run, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    write_json(old / "manifest.json", {**manifest, "schema": SCHEMA + 1})
    assert "another version" in one_line_error("export", str(old))

    not_image = tmp_path / "not-image"
    not_image.mkdir()
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.save(not_image / "model.keras")
    write_json(not_image / "manifest.json", run_manifest(model, None, 64))
    assert "not the image" in one_line_error("export", str(not_image))

    run = copy_run(brightness_run, tmp_path / "run")
    # A choice outside an Enum is typer's usage error: exit 2, the option and its choices, no traceback.
    from noodle import app

    bad_choice = CliRunner().invoke(app, ["export", str(run), "--io", "int16"])
    assert bad_choice.exit_code == 2 and "Traceback" not in bad_choice.output
    assert "'--io'" in bad_choice.output and "'uint8', 'int8'" in bad_choice.output
    assert "--variants int4" in one_line_error("export", str(run), "--variants", "int8,int4")
    assert "no export yet" in one_line_error("compare", str(run))


def test_a_device_environment_without_tflite_runtime_is_named_not_failed():
    """A 3.12+ host's device environment holds ai-edge-litert: validation says what it did not check."""
    import sys

    from export.validate import edge_python, runtime_missing

    # This environment has ai-edge-litert and no tflite-runtime, as a Debian 13 host's .venv-edge would.
    missing = runtime_missing(Path(sys.executable))
    assert missing.startswith("the device environment is Python 3.") and "without tflite-runtime" in missing
    python = edge_python()
    if python is not None:  # `make edge-env` with a python3.11: tflite-runtime 2.14 is there
        version = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2] < (3, 12))"],
                                 capture_output=True, text=True).stdout.strip()
        assert (runtime_missing(python) is None) == (version == "True")

runner = CliRunner()


def test_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from noodle import app

    run = tmp_path / "run"
    run.mkdir()
    model = keras_model("softmax", 2)
    model.save(run / "model.keras")
    write_json(run / "manifest.json", {
        "format": "noodle", "schema": 1, "kind": "model", "labels": ["a", "b"],
        "input": {"height": SIZE, "width": SIZE, "channels": 3}, "output": "softmax",
        "preprocessing": PREPROCESSING, "arch": "tiny", "params": int(model.count_params())})
    real = Path.write_bytes

    def full(self, data):
        if "export" in self.parts:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    result = runner.invoke(app, ["export", str(run), "--variants", "float32"])
    assert "No space left on device" in error_line(result)
    assert not (run / "export" / "manifest.json").exists()
    assert not [p for p in (run / "export").iterdir() if p.name.startswith(".") or p.suffix == ".tflite"]


def test_export_max_drop_must_be_a_number_of_points(tmp_path):
    from noodle import app

    for value in ("nan", "-1", "inf"):
        result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--max-drop", value])
        assert "--max-drop" in error_line(result) and "0 or more" in result.stderr
