"""The train stage end to end: run folder contents, bad files, two replicas."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.test_data import bad_files

RUN_FILES = ("model.keras", "manifest.json", "history.csv", "curves.png", "metrics.json")


def test_run_folder_holds_model_manifest_history_curves_metrics(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).stat().st_size > 0, name
    assert any((trained_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (trained_run / ".backup").exists()  # removed once the run completed
    assert not list(trained_run.glob(".*.tmp*"))

    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["labels"] == ["discs", "stripes"]
    assert manifest["input"] == {"height": 64, "width": 64, "channels": 3, "dtype": "float32",
                                 "range": [0, 255]}
    assert manifest["preprocessing"]["name"] == "noodle-rgb-squash"
    assert manifest["seed"] == 0 and manifest["arch"] == "noodle"
    assert manifest["data"]["counts"]["train"] == {"discs": 48, "stripes": 48}

    with open(trained_run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == manifest["metrics"]["epochs_run"] == 4
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])

    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["count"] == 40
    counts = np.array(test["confusion_matrix"]["counts"])
    assert counts.sum() == 40 and counts.sum(1).tolist() == [20, 20]
    assert abs(test["accuracy"] - np.trace(counts) / 40) < 1e-9
    assert set(test["per_class_accuracy"]) == {"discs", "stripes"}


def test_saved_model_takes_raw_pixels_and_rescales_itself(trained_run):
    import keras

    model = keras.models.load_model(trained_run / "model.keras")
    assert model.layers[1].__class__.__name__ == "Rescaling"
    assert not any("Random" in layer.__class__.__name__ for layer in model.layers)
    p = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert p.shape == (1, 1) and 0.0 <= p[0, 0] <= 1.0


def test_cli_trains_on_two_replicas_and_skips_bad_files(sample_data, tmp_path):
    """Two logical CPU devices under MirroredStrategy, on a folder with bad files."""
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    bad = bad_files(data / "train" / "discs")
    Image.new("CMYK", (50, 50), (0, 120, 200, 0)).save(data / "train" / "stripes" / "cmyk.jpg")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(data), "--out", str(out), "--epochs", "1",
         "--cpu-replicas", "2", "--batch-size", "16"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["replicas"] == 2 and manifest["training"]["global_batch"] == 32
    assert sorted(s["file"] for s in manifest["skipped"]) == sorted(str(p) for p in bad)
    # 60 + good.jpg readable in discs, 60 + the CMYK JPEG in stripes; 20 % carved for validation.
    counts = manifest["data"]["counts"]
    assert counts["train"]["stripes"] + counts["val"]["stripes"] == 61
    assert "skipped      3 unreadable" in result.stdout
    assert "validation" in result.stdout and "test" in result.stdout


def test_unknown_arch_is_one_line_error(sample_data, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(sample_data), "--arch", "resnet9000",
         "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert result.returncode == 2
    # TensorFlow's C++ start-up lines may precede it; ours is one line, no traceback.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown architecture" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


def test_a_killed_run_resumes_where_it_stopped(sample_data, tmp_path):
    """BackupAndRestore: kill mid-run, start again, the epochs continue."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(out),
           "--epochs", "5", "--patience", "50", "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    progress = out / ".backup" / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "manifest.json").exists(), "the first run finished before it was killed"
    epochs_before = len(progress.read_text().splitlines()) - 1
    assert epochs_before >= 2

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    with open(out / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    # Resumed after the last finished epoch, not from scratch: five epochs in all.
    assert epochs == list(range(5))
