"""The train stage end to end: run folder contents, bad files, replicas and workers,
resuming, mixed precision, data over the memory limit."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
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

from tests.hostile import (
    clean,
    error_line,
)
from tests.ports import free_ports
from tests.test_data import bad_files

RUN_FILES = ("model.keras", "manifest.json", "splits.csv", "history.csv", "curves.png", "metrics.json")


def test_run_folder_holds_model_manifest_history_curves_metrics(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).stat().st_size > 0, name
    assert any((trained_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (trained_run / ".backup").exists()  # removed once the run completed
    assert not list(trained_run.glob(".*.tmp*"))

    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["labels"] == ["discs", "stripes"]
    # noodle's own input side (train.config.ARCHITECTURES): no --image-size given.
    assert manifest["input"] == {"height": 56, "width": 56, "channels": 3, "dtype": "float32",
                                 "range": [0, 255]}
    assert manifest["preprocessing"]["name"] == "noodle-rgb-squash"
    assert manifest["seed"] == 0 and manifest["arch"] == "allconv"
    assert manifest["data"]["counts"]["train"] == {"discs": 48, "stripes": 48}
    # Every photo's split as training drew it, which export reads instead of splitting again.
    with open(trained_run / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "label", "split", "sha256"]
    assert len(rows) == sum(n for counts in manifest["data"]["counts"].values() for n in counts.values())
    assert {(r["split"], r["label"]) for r in rows} == {(s, c) for s in ("train", "val", "test")
                                                         for c in ("discs", "stripes")}
    photo = Path(manifest["data"]["root"]) / rows[-1]["file"]
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == rows[-1]["sha256"]

    with open(trained_run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == manifest["metrics"]["epochs_run"] == 4
    assert {"loss", "accuracy"} <= set(history[0])
    # noodle trains on the validation photos too: no validation score, every
    # epoch run, and the test split (40 photos) still held out.
    assert manifest["training"]["train_on_val"] is True
    assert (manifest["training"]["image_size"], manifest["training"]["epochs"]) == (56, 4)  # as resolved
    assert manifest["metrics"]["train_images"] == 96 + 24 and manifest["metrics"]["best_epoch"] == 4
    assert manifest["metrics"]["batch_norm_photos"] == 96 + 24  # all of them: under BATCH_NORM_PHOTOS
    assert "val" not in manifest["metrics"] and {row.get("val_loss", "NA") for row in history} == {"NA"}

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
    p = model.predict(np.zeros((1, 56, 56, 3), np.float32), verbose=0)
    assert p.shape == (1, 1) and 0.0 <= p[0, 0] <= 1.0


@pytest.mark.parametrize("arch", ["allconv", "seed"])
def test_batch_norm_takes_the_exact_statistics_of_un_augmented_training_photos(arch):
    import keras

    from train.models import build
    from train.scratch import exact_batch_norm

    keras.utils.set_random_seed(3)
    model = build(arch, (32, 32, 3), 3)
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    before = [w.copy() for w in model.get_weights()]
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if arch == "seed":  # no batch norm: nothing to set, nothing changed
        assert exact_batch_norm(model, x) == 0
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
        return
    # Batches of 16 over 40 photos: the sums run across a ragged last batch.
    assert exact_batch_norm(model, x, batch=16) == 40 and len(layers) == 6
    for layer in layers:
        # What each layer meets at inference, with every layer before it as now set.
        f = keras.Model(model.inputs, layer.input).predict_on_batch(x.astype(np.float32))
        f = f.reshape(-1, f.shape[-1]).astype(np.float64)
        np.testing.assert_allclose(layer.moving_mean.numpy(), f.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), f.var(0), rtol=1e-3, atol=1e-5)
    # Only the statistics moved: the learned weights are as they were.
    trained = {id(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)}
    for v, old in zip(model.weights, before, strict=True):
        if id(v) not in trained:
            assert np.array_equal(v.numpy(), old), v.path
    # Over the limit: a seeded sample of that many photos.
    assert exact_batch_norm(model, x, limit=10) == 10


@pytest.mark.slow
def test_cli_trains_on_two_replicas_and_skips_bad_files(sample_data, tmp_path):
    """Two logical CPU devices under MirroredStrategy, on a folder with bad files."""
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    bad = bad_files(data / "train" / "discs")
    Image.new("CMYK", (50, 50), (0, 120, 200, 0)).save(data / "train" / "stripes" / "cmyk.jpg")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(data), "--out", str(out), "--epochs", "1",
         "--cpu-replicas", "2", "--batch-size", "16", "--hold-out-val", "--arch", "allconv"],
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
    # --hold-out-val: trained on train alone, scored on validation (trimmed to whole batches) and test.
    assert manifest["training"]["train_on_val"] is False
    # The 122 readable photos of train and validation (bad files may land in either).
    assert manifest["metrics"]["train_images"] + manifest["metrics"]["val"]["count"] == 122
    assert re.search(r"^validation +\d+\.\d% of \d+", result.stdout, re.M)
    assert "validation photos too" not in result.stdout and "test" in result.stdout
    # Without a GPU, one line of ours says so, with the cores used instead.
    on_cpu = "CPU replica(s)" in result.stdout
    assert bool(re.search(r"^no GPU found: training on \d+ CPU cores$", result.stdout, re.M)) == on_cpu


def test_validation_photos_are_trained_on_only_when_a_test_split_scores_the_model(sample_data):
    from train.config import TrainConfig, trains_on_val
    from train.data import find_dataset
    from train.runs import identity

    ds = find_dataset(sample_data)
    noodle, seed = (TrainConfig(data=sample_data, out=sample_data, arch=a) for a in ("allconv", "seed"))
    assert trains_on_val(noodle, ds) and not trains_on_val(seed, ds)
    # Saying what the architecture does anyway is the same model, the same run folder.
    assert identity(ds, noodle) == identity(ds, TrainConfig(data=sample_data, out=sample_data,
                                                             arch="allconv", train_on_val=True))
    assert identity(ds, noodle) != identity(ds, TrainConfig(data=sample_data, out=sample_data,
                                                             arch="allconv", train_on_val=False))
    ds.splits["test"] = []  # nothing else would score the model: validation stays out
    assert not trains_on_val(TrainConfig(data=sample_data, out=sample_data, train_on_val=True), ds)


def test_each_architecture_has_its_own_input_side_and_epochs(sample_data):
    from train.config import ARCHITECTURES, DEFAULT_ARCH, TrainConfig
    from train.data import find_dataset
    from train.runs import identity

    ds = find_dataset(sample_data)

    def settings(**kw):
        return identity(ds, TrainConfig(data=sample_data, out=sample_data, **kw))["settings"]

    assert (settings(arch="allconv")["image_size"], settings(arch="allconv")["epochs"]) == (56, 50)
    assert (settings(arch="seed")["image_size"], settings(arch="seed")["epochs"]) == (64, 25)
    assert settings(arch="lite0")["image_size"] == 192 and "epochs" not in settings(arch="lite0")
    assert settings(arch="lite0", fine_tune=2)["epochs"] == 3  # what trains by gradient has epochs
    # Passing the default is the same model; another side is another.
    assert settings(arch="seed") == settings(arch="seed", image_size=64, epochs=25)
    side = ARCHITECTURES[DEFAULT_ARCH].image_size
    assert settings() == settings(image_size=side) != settings(image_size=side + 32)
    assert settings(arch="allconv") == settings(arch="allconv", image_size=56) != settings(arch="allconv",
                                                                                          image_size=64)


def test_a_solved_head_ignores_gradient_settings_in_its_identity_and_says_so(sample_data, tmp_path):
    """Was: --epochs 5 on lite0 named a new run folder holding the same model, and nothing said so."""
    from train.config import GRADIENT_SETTINGS, TrainConfig, unused_settings
    from train.data import find_dataset
    from train.runs import identity

    ds = find_dataset(sample_data)

    def run(**kw):
        return identity(ds, TrainConfig(data=sample_data, out=sample_data, arch="lite0", **kw))["run"]

    others = {"epochs": 5, "batch_size": 8, "learning_rate": 0.01, "patience": 2, "seed": 3,
              "mixed_precision": True}
    assert set(others) == set(GRADIENT_SETTINGS)
    assert all(run(**{name: value}) == run() for name, value in others.items())
    assert run(image_size=160) != run() != run(fine_tune=2) != run(fine_tune=2, epochs=5)
    assert run(weights="none") != run(weights="none", epochs=5)  # random weights: the whole net trains
    given = TrainConfig(data=sample_data, out=sample_data, arch="lite0", epochs=5, seed=3)
    assert unused_settings(given) == ["--epochs", "--seed"]
    assert unused_settings(TrainConfig(data=sample_data, out=sample_data, arch="lite0", epochs=5,
                                       fine_tune=1)) == []
    assert unused_settings(TrainConfig(data=sample_data, out=sample_data, arch="allconv", epochs=5)) == []
    # The CLI names the same folder as without them, and says why before any work.
    from typer.testing import CliRunner

    from noodle import app

    args = ["train", str(sample_data), "--runs", str(tmp_path)]
    plain = CliRunner().invoke(app, [*args, "--print-run-dir"])
    told = CliRunner().invoke(app, [*args, "--print-run-dir", "--epochs", "5", "--seed", "3"])
    assert plain.exit_code == told.exit_code == 0 and plain.stdout == told.stdout
    (tmp_path / "file").write_text("")  # a file where the run folder goes stops it right after the warning
    warned = CliRunner().invoke(app, [*args, "--epochs", "5", "--out", str(tmp_path / "file")])
    assert warned.exit_code == 2
    assert warned.stdout.startswith("warning: --epochs: ignored, and not part of the run's identity")
    assert warned.stdout.count("warning:") == 1


def test_a_model_of_an_older_training_recipe_is_another_run(sample_data, monkeypatch):
    """`make export` passes --reuse: a model older code trained must not pass for this code's."""
    from train import config, runs
    from train.data import find_dataset
    from train.runs import identity

    ds = find_dataset(sample_data)
    cfg = config.TrainConfig(data=sample_data, out=sample_data)
    before = identity(ds, cfg)
    assert before["settings"]["recipe"] == config.RECIPE
    monkeypatch.setattr(runs, "RECIPE", config.RECIPE - 1)
    assert identity(ds, cfg)["run"] != before["run"]


def test_unknown_arch_is_a_usage_error_naming_the_choices(sample_data, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(sample_data), "--arch", "resnet9000",
         "--out", str(tmp_path / "r")], capture_output=True, text=True)
    # --arch is an Enum: typer refuses the value before anything runs, naming the architectures.
    assert result.returncode == 2
    assert "'resnet9000' is not one of" in result.stderr and "'noodle'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(sample_data, tmp_path):
    """BackupAndRestore: kill mid-run, start again, the epochs continue."""
    out = tmp_path / "run"
    # noodle: a from-scratch net's epochs take seconds. A pretrained head's take
    # milliseconds: the kill lands once fit has ended and dropped its resume state,
    # and the rerun trains the head again, in seconds.
    cmd = [sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(out), "--arch", "allconv",
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
        history = list(csv.DictReader(f))
    # Resumed after the last finished epoch, not from scratch: five epochs in all.
    assert [int(row["epoch"]) for row in history] == list(range(5))
    # The kill may land between an epoch's history row and its saved state:
    # then that epoch runs again, and its first row is dropped.
    resumed = re.search(r"^resuming from epoch (\d+): (\d+) epoch\(s\) done before", second.stdout, re.M)
    assert resumed, second.stdout[-2000:]
    assert int(resumed[1]) - 1 == int(resumed[2]) in (epochs_before - 1, epochs_before)
    # The time reported is the whole training, both processes' epochs, not only the second's.
    manifest = json.loads((out / "manifest.json").read_text())
    all_epochs = sum(float(row["epoch_seconds"]) for row in history)
    later_epochs = sum(float(row["epoch_seconds"]) for row in history[int(resumed[2]):])
    assert manifest["metrics"]["train_seconds"] >= round(all_epochs, 1) - 0.1 > later_epochs


# ------------------------------------------------------------------ several machines

@pytest.mark.slow
def test_two_workers_on_the_loopback_train_one_model_that_only_the_chief_writes(sample_data, tmp_path):
    """MultiWorkerMirroredStrategy for real: a chief and a worker, two processes, TF_CONFIG."""
    import keras

    from train.data import decode, find_dataset
    from train.results import classification_metrics, predict_probabilities

    chief_port, worker_port = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{chief_port}"], "worker": [f"127.0.0.1:{worker_port}"]}
    outs = {"chief": tmp_path / "chief-run", "worker": tmp_path / "worker-run"}
    scratch = tmp_path / "worker-tmp"  # the worker's TMPDIR: its logs and backups go there
    scratch.mkdir()
    procs, logs = {}, {}
    try:
        # gRPC would send even loopback traffic through a proxy named in the environment.
        plain = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy",
                                                                          "grpc_proxy", "all_proxy")}
        for task in ("chief", "worker"):
            env = {**plain, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})}
            if task == "worker":
                env["TMPDIR"] = str(scratch)
            logs[task] = tmp_path / f"{task}.log"
            with open(logs[task], "w") as log:
                procs[task] = subprocess.Popen(
                    [sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(outs[task]),
                     "--cluster", "tf-config", "--epochs", "2", "--image-size", "32", "--batch-size", "16",
                     "--arch", "allconv", "-q"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # A worker waiting for a peer that died waits for ever: a hang fails the test instead.
        deadline = time.monotonic() + 300
        for task, proc in procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{task} still running after 300 s:\n{logs[task].read_text()[-3000:]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for task, proc in procs.items():
        assert proc.returncode == 0, f"{task}:\n{logs[task].read_text()[-3000:]}"

    chief = outs["chief"]
    for name in RUN_FILES:
        assert (chief / name).stat().st_size > 0, name
    assert any((chief / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (chief / ".backup").exists() and not (chief / ".cache").exists()
    # The worker trained (same epochs, same synchronised loss) but wrote nothing, anywhere. Only
    # TensorFlow's own leftovers may stay: on Python 3.13 importing the code autograph generates into
    # TMPDIR leaves its bytecode in __pycache__ (TensorFlow deletes the .py, not that).
    left = [p for p in scratch.rglob("*") if p.is_file()
            and not (p.parent.name == "__pycache__" and p.name.startswith("__autograph_generated_file"))]
    assert not outs["worker"].exists() and left == []
    worker_log = logs["worker"].read_text()
    assert "worker-0 done; the chief writes the run folder" in worker_log
    assert not re.search(r"^run folder ", worker_log, re.M)  # no summary of a run it did not write

    manifest = json.loads((chief / "manifest.json").read_text())
    assert manifest["training"]["replicas"] == 2 and manifest["training"]["global_batch"] == 32
    assert manifest["metrics"]["epochs_run"] == 2

    # The saved model is whole: it loads alone, gives probabilities, and scores
    # the test photos exactly as the chief reported.
    model = keras.models.load_model(chief / "model.keras")
    test = decode(find_dataset(sample_data).splits["test"], (32, 32))
    probs = predict_probabilities(model, test.x)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    metrics = classification_metrics(test.y, probs, manifest["labels"])
    assert metrics["confusion_matrix"] == manifest["metrics"]["test"]["confusion_matrix"]


SLURM_TWO_NODES = {"SLURM_JOB_ID": "41", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "node[07-08]",
                   "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
TF_CONFIG = json.dumps({"cluster": {"chief": ["host-a:2222"], "worker": ["host-b:2222", "host-c:2222"]},
                        "task": {"type": "worker", "index": 1}})


@pytest.mark.parametrize("mode, env, expected", [
    ("auto", {}, "none"),
    ("auto", {"TF_CONFIG": TF_CONFIG}, "tf-config"),
    ("auto", {**SLURM_TWO_NODES, "SLURM_PROCID": "0"}, "slurm"),
    # A batch job of one task is one machine, not a cluster.
    ("auto", {"SLURM_JOB_ID": "41", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, "none"),
    ("auto", {"TF_CONFIG": TF_CONFIG, **SLURM_TWO_NODES, "SLURM_PROCID": "0"}, "tf-config"),
    ("none", {"TF_CONFIG": TF_CONFIG}, "none"),
    ("slurm", {**SLURM_TWO_NODES, "SLURM_PROCID": "1"}, "slurm"),
])
def test_the_cluster_comes_from_the_environment(mode, env, expected):
    from train.cluster import choose

    assert choose(mode, env).value == expected


@pytest.mark.parametrize("mode, message", [
    ("tf-config", "--cluster tf-config: TF_CONFIG is not set"),
    ("slurm", "--cluster slurm: no Slurm task environment"),
])
def test_a_cluster_asked_for_but_absent_is_one_line_error(sample_data, tmp_path, mode, message):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(tmp_path / "r"),
         "--cluster", mode], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


def test_tf_config_names_this_task_and_its_chief(monkeypatch):
    from train.cluster import Cluster, is_chief, resolver, task_name

    monkeypatch.setenv("TF_CONFIG", TF_CONFIG)
    worker = resolver(Cluster.tf_config)
    assert task_name(worker) == "worker-1" and not is_chief(worker)
    monkeypatch.setenv("TF_CONFIG", TF_CONFIG.replace('"worker", "index": 1', '"chief", "index": 0'))
    assert is_chief(resolver(Cluster.tf_config))


@pytest.mark.parametrize("gpus", [False, True])
def test_slurm_tasks_resolve_to_workers_and_worker_0_is_chief(monkeypatch, tmp_path, gpus):
    """SlurmClusterResolver from srun's variables, on CPU-only nodes and on GPU nodes."""
    from train.cluster import SLURM_PORT_BASE, Cluster, is_chief, resolver, task_name

    for name, value in SLURM_TWO_NODES.items():
        monkeypatch.setenv(name, value)
    # The GPU resolver sets this task's CUDA_VISIBLE_DEVICES; monkeypatch puts it back.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    if not gpus:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        monkeypatch.setenv("PATH", str(tmp_path))  # and no nvidia-smi
    for rank in (0, 1):
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        task = resolver(Cluster.slurm)
        hosts = [f"node{n}:{SLURM_PORT_BASE}" for n in ("07", "08")]
        assert task.cluster_spec().as_dict() == {"worker": hosts}
        assert task_name(task) == f"worker-{rank}" and is_chief(task) == (rank == 0)
        # One task a node: each gets both of its node's GPUs, or no GPU setting at all.
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == ("0,1" if gpus else None)


# ---------------------------------------------------------------- precision, memory

@pytest.mark.slow
@pytest.mark.parametrize("arch, classes", [("allconv", 2), ("seed", 5)])
def test_mixed_precision_trains_on_cpu_and_exports_a_float32_model(arch, classes, tmp_path, monkeypatch):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from edge.preprocess import load_image
    from export.convert import convert, load_model, read_run
    from tests.test_matrix import tinted_photos
    from train import fit, scratch

    trained_under = {}
    copy, wrap = scratch.float32_copy, scratch.for_training

    def spy_wrap(model, augment):  # the training graph: its optimizer is the one fit steps
        trainer = trained_under["trainer"] = wrap(model, augment)
        return trainer

    def spy(model, *args):  # the model fit trained, just before its float32 copy is made
        trained_under.update(body={layer.dtype_policy.name for layer in model.layers[:-1]},
                             head=model.layers[-1].dtype_policy.name,
                             optimizer=type(trained_under.pop("trainer").optimizer).__name__)
        return copy(model, *args)

    monkeypatch.setattr(scratch, "for_training", spy_wrap)
    monkeypatch.setattr(scratch, "float32_copy", spy)
    data = tinted_photos(tmp_path / "photos", classes)
    run = tmp_path / "run"
    manifest = fit.train(fit.TrainConfig(data=data, out=run, arch=arch, image_size=32, epochs=1,
                                         mixed_precision=True, verbose=0))
    assert trained_under == {"body": {"mixed_float16"}, "head": "float32",
                             "optimizer": "LossScaleOptimizer"}
    assert manifest["training"]["mixed_precision"] is True
    # The policy is global: later models in this process must not inherit it.
    assert keras.mixed_precision.global_policy().name == "float32"

    model = load_model(run, read_run(run))
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    interpreter = Interpreter(model_content=convert(model, "float32"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    for photo in sorted(data.rglob("*.jpg"))[::7]:  # a few of every class
        pixels = load_image(photo, (32, 32))[None].astype(np.float32)
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
        p = interpreter.get_tensor(out["index"])[0]
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        if classes > 2:
            assert abs(p.sum() - 1) < 1e-5
        np.testing.assert_allclose(p, model.predict_on_batch(pixels)[0], atol=1e-5)


def test_mixed_precision_is_undone_when_training_fails(tmp_path, monkeypatch):
    import keras

    from tests.test_matrix import tinted_photos
    from train import fit, scratch

    def fail(*args):  # called after the policy is set, before any training
        raise RuntimeError("stopped on purpose")

    monkeypatch.setattr(scratch, "augmentation", fail)
    data = tinted_photos(tmp_path / "photos", 2)
    with pytest.raises(RuntimeError, match="on purpose"):
        fit.train(fit.TrainConfig(data=data, out=tmp_path / "run", arch="allconv", image_size=32, epochs=1,
                                  mixed_precision=True, verbose=0))
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lite0", "allconv"])
def test_a_set_over_the_memory_limit_trains_from_a_memory_mapped_cache(sample_data, tmp_path, arch):
    """The limit below the size of what is kept: every split streams from disk.

    The default keeps features (NOODLE_FEATURES_IN_MEMORY_LIMIT), the nets from scratch pixels
    (NOODLE_IN_MEMORY_LIMIT).
    """
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    bad = bad_files(data / "train" / "stripes")  # dropped from the mapped file in place
    limit = 100_000  # bytes; the smallest split kept (40 test photos at 56x56, or features) holds 200 kB
    out = tmp_path / "run"
    pretrained = arch == "lite0"
    setting = "NOODLE_FEATURES_IN_MEMORY_LIMIT" if pretrained else "NOODLE_IN_MEMORY_LIMIT"
    result = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(data), "--out", str(out), "--arch", arch,
         "--epochs", "2", "-q"],
        capture_output=True, text=True, timeout=600, env={**os.environ, setting: str(limit)})
    assert result.returncode == 0, result.stderr[-3000:]
    said = (rf"; train, test memory-mapped from the run's cache, over {limit:,} bytes \({setting}\)$"
            if pretrained else rf"^pixels of train, test memory-mapped from .*, being over {limit:,} bytes")
    assert re.search(said, result.stdout, re.M), result.stdout[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["file"] for s in manifest["skipped"]) == sorted(str(p) for p in bad)
    assert manifest["metrics"]["test"]["count"] == 40
    # Every readable photo decoded (120 and bad_files' good one); the bad ones are
    # listed, and cut out of the mapped file. noodle trains on its validation photos too.
    assert re.search(r"train 121, test 40, skipped 3 unreadable", result.stdout), result.stdout[-2000:]
    assert re.search(r"^training on the \d+ validation photos too", result.stdout, re.M)
    assert manifest["metrics"]["train_images"] == 121
    if pretrained:
        # The pretrained default's head: solved, one history row per iteration.
        assert manifest["metrics"]["epochs_run"] == manifest["metrics"]["head"]["iterations"] > 0
    assert not (out / ".cache").exists()  # the mapped files go when the run is complete


def test_memory_mapped_pixels_equal_in_memory_ones_with_bad_files_cut(sample_data, tmp_path, monkeypatch):
    from train import data as datasets

    good = sorted((sample_data / "train" / "discs").glob("*.jpg"))[:9]
    corrupt, zero, text = bad_files(tmp_path / "bad")
    files = [corrupt, *good[:4], zero, *good[4:], text]
    items = [(f, i % 2) for i, f in enumerate(files)]
    in_memory = datasets.decode(items, (32, 32), cache_dir=tmp_path / "cache")
    monkeypatch.setattr(datasets, "IN_MEMORY_LIMIT", 0)
    mapped = datasets.decode(items, (32, 32), cache_dir=tmp_path / "cache")
    assert isinstance(mapped.x, np.memmap) and not isinstance(in_memory.x, np.memmap)
    assert len(mapped.x) == 9 and mapped.files == in_memory.files == good
    np.testing.assert_array_equal(mapped.x, in_memory.x)
    np.testing.assert_array_equal(mapped.y, in_memory.y)


def test_the_readmes_architecture_table_is_the_table():
    """README's table is train.config.ARCHITECTURES, row for row: one source, and the docs follow it."""
    from train.config import ARCHITECTURES, DEFAULT_ARCH

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- architectures: from train.config.ARCHITECTURES -->")[1].split("<!--")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    expected = [[f"`{a.name}`" + (" (default)" if a.name == DEFAULT_ARCH else ""), a.summary,
                 str(a.image_size), str(a.epochs), a.schedule, a.weights, str(a.fine_tune)]
                for a in ARCHITECTURES.values()]
    assert rows == expected


@pytest.mark.parametrize("old, new", [("noodle", "allconv")])
def test_a_former_architecture_name_trains_the_renamed_one_with_a_one_line_notice(sample_data, tmp_path,
                                                                                 old, new):
    from typer.testing import CliRunner

    from noodle import app
    from train.config import TrainConfig

    def run_dir(arch):
        result = CliRunner().invoke(app, ["train", str(sample_data), "--arch", arch, "--runs",
                                          str(tmp_path), "--print-run-dir"])
        assert result.exit_code == 0, result.output
        return result

    renamed, current = run_dir(old), run_dir(new)
    assert renamed.stdout == current.stdout and f"-{new}-" in current.stdout  # the same run folder
    assert renamed.stderr == f"note: --arch {old} is now called {new}; training {new}\n"
    assert current.stderr == ""
    assert TrainConfig(data=sample_data, out=tmp_path, arch=old).arch == new


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs 0: out of range; give 1 to"),
    (["--epochs", "-1"], "--epochs -1: out of range"),
    (["--image-size", "0"], "--image-size 0: out of range; give 32 to 1,024"),
    (["--image-size", "8"], "--image-size 8: out of range"),
    (["--batch-size", "0"], "--batch-size 0: out of range; give 1 to"),
    (["--learning-rate", "nan"], "--learning-rate nan: out of range"),
    (["--learning-rate", "-1"], "--learning-rate -1.0: out of range; give 1e-09 to 1"),
])
def test_numbers_out_of_range_are_one_line_before_any_work(sample_data, tmp_path, args, message):
    """Was: 0 trained the defaults, -1 and 8 were tracebacks, batch 0 a ZeroDivisionError after 33 s."""
    from typer.testing import CliRunner

    from noodle import app

    result = CliRunner().invoke(app, ["train", str(sample_data), "--arch", "allconv", *args,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not (tmp_path / "run").exists()


def test_a_loss_that_turns_non_finite_stops_training_and_writes_no_manifest(tmp_path, monkeypatch):
    """Was: --learning-rate nan exited 0 with loss nan and a complete manifest."""
    from edge.errors import NoodleError
    from tests.test_matrix import tinted_photos
    from train import fit, scratch

    data = tinted_photos(tmp_path / "photos", 2)
    run = tmp_path / "run"
    real = scratch._rate
    monkeypatch.setattr(scratch, "_rate", lambda cfg, *a: 1e30 if cfg.arch == "allconv" else real(cfg, *a))
    with pytest.raises(NoodleError, match=r"training loss became (nan|inf).*lower --learning-rate"):
        fit.train(fit.TrainConfig(data=data, out=run, arch="allconv", image_size=32, epochs=2, verbose=0))
    assert not (run / "manifest.json").exists() and not (run / ".backup").exists()


def test_a_training_process_killed_by_a_signal_says_so_in_one_line(tmp_path):
    """Was: `make: *** [trained] Aborted` and nothing else."""
    root = Path(__file__).resolve().parent.parent
    fake = tmp_path / "noodle"
    fake.write_text('#!/bin/sh\necho "epoch 3/15"\nkill -ABRT $$\n')
    fake.chmod(0o755)
    done = subprocess.run(["make", "-s", "-C", str(root), "trained", f"NOODLE={fake}", f"DATA={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: noodle train died of signal SIGABRT (exit 134); its last lines are above; "
                    "run the same command again: training resumes from its last finished epoch"], done.stderr


def test_a_file_where_the_run_folder_should_be_is_one_line(sample_data, tmp_path):
    """Was: a traceback from the resume state's mkdir once training started."""
    from typer.testing import CliRunner

    from noodle import app

    (tmp_path / "run").write_text("not a folder")
    result = CliRunner().invoke(app, ["train", str(sample_data), "--arch", "allconv", "--epochs", "1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'run'}: a file is where a folder should be; move it away, or write somewhere "
        "else (--out)"]

runner = CliRunner()


def test_train_cli_refuses_a_hostile_folder_in_one_line(tmp_path):
    from noodle import app

    for name in ("cat\x1b[2J", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (8, 8), (j * 60, 9, 9)).save(tmp_path / "data" / name / f"{j}.png")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    line = error_line(result)
    assert "cat\\033[2J: class name" in line and clean(line)
