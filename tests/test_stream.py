"""The default trains on features streamed from the photos (train.stream), never on a split's pixels.

The streamed run must be the run the pixels made: the same head, the same
accuracy, the same manifest figures, memory-mapped features or not.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from tests.ports import free_ports
from train import stream
from train.data import decode, find_dataset


@pytest.fixture(scope="module")
def streamed(sample_data, tmp_path_factory):
    """A default (lite0) run on the sample data, its features spilled to the cache (limit set low)."""
    from train.fit import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "streamed"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "FEATURES_IN_MEMORY_LIMIT", 1)  # every split past it: the spill path
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("train")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            manifest = train(TrainConfig(data=sample_data, out=out, verbose=0))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return out, manifest, [r.getMessage() for r in records]


def test_the_spilled_features_are_said_and_cleaned_up(streamed):
    out, manifest, log = streamed
    assert manifest["arch"] == "lite0"
    assert any("memory-mapped from the run's cache" in line and "train" in line for line in log), log
    assert not (out / ".cache").exists()  # the run folder keeps no features once written


def test_the_streamed_head_is_the_one_the_pixels_make(streamed, sample_data):
    """The head solved on features of pixels held in memory, as before streaming, to 1e-5."""
    import keras

    from train import head
    from train.config import HEAD_ITERATIONS, HEAD_L2
    from train.pretrained import outputs
    from train.results import classification_metrics, predict_probabilities

    out, manifest, _ = streamed
    dataset = find_dataset(sample_data)
    side = manifest["input"]["height"]
    train_items = dataset.splits["train"] + (dataset.splits["val"] if manifest["training"]["train_on_val"]
                                             else [])
    pixels = decode(train_items, (side, side))
    model = keras.saving.load_model(out / "model.keras")
    backbone = model.layers[1]
    solution = head.solve(outputs(backbone, pixels.x), pixels.y, len(dataset.labels), HEAD_L2,
                          HEAD_ITERATIONS)
    kernel, bias = model.layers[-1].layers[-1].get_weights()
    assert np.abs(kernel - solution.kernel).max() < 1e-5
    assert np.abs(bias - solution.bias).max() < 1e-5
    assert manifest["metrics"]["head"]["iterations"] == solution.iterations
    test = decode(dataset.splits["test"], (side, side))
    scored = classification_metrics(test.y, predict_probabilities(model, test.x), dataset.labels)
    assert manifest["metrics"]["test"]["accuracy"] == scored["accuracy"]
    assert manifest["metrics"]["test"]["confusion_matrix"] == scored["confusion_matrix"]
    assert manifest["metrics"]["train_images"] == len(pixels.y)


def test_embed_skips_unreadable_photos_and_keeps_full_batches(sample_data, tmp_path):
    """A bad file is skipped by name; the rest are embedded in order, as the pixels held would be."""
    import keras

    items = find_dataset(sample_data).splits["test"][:10]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    copied = tmp_path / "copy.png"
    shutil.copy(items[0][0], copied)
    items = [items[0], (bad, 1), *items[1:], (copied, items[0][1])]
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    got = stream.embed(items, (16, 16), model, batch=4, workers=2, cache_dir=tmp_path / "c", limit=1)
    assert isinstance(got.x, np.memmap) and got.x.shape == (11, 3)
    assert [s["file"] for s in got.skipped] == [str(bad)] or [s["file"] for s in got.skipped] == [bad]
    assert got.files == [f for f, _ in items if f != bad]
    want = decode([i for i in items if i[0] != bad], (16, 16))
    assert np.allclose(got.x, want.x.astype(np.float32).mean((1, 2)), atol=1e-4)
    assert got.y.tolist() == want.y.tolist() and json.dumps(got.y.tolist())


class _Logged:
    """The train loggers' messages while inside."""

    def __enter__(self):
        self.lines, self.handler = [], logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())
        self.logger = logging.getLogger("train")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self.lines

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_a_rerun_reads_the_features_back_from_the_cache(tmp_path, monkeypatch):
    """A run stopped after embedding leaves its features: the rerun embeds 0 photos, solves the same head."""
    import keras

    from train import pretrained
    from train.fit import TrainConfig, train
    from train.sample import write_sample

    data = tmp_path / "data"
    write_sample(data, seed=4, train_per_class=20, test_per_class=5)
    embedded = []
    caller = stream._caller

    def counting(model, strategy):
        call = caller(model, strategy)
        return lambda pixels: embedded.append(len(pixels)) or call(pixels)

    monkeypatch.setattr(stream, "_caller", counting)
    solve = pretrained.solve_head

    def stopped(*args):
        raise RuntimeError("the machine went down")

    monkeypatch.setattr(pretrained, "solve_head", stopped)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="went down"):
        train(TrainConfig(data=data, out=out, verbose=0))
    assert sum(embedded) == 50
    assert sorted(p.name for p in (out / ".cache").iterdir()) == ["test.json", "test.npy", "train.json",
                                                                  "train.npy"]
    monkeypatch.setattr(pretrained, "solve_head", solve)
    embedded.clear()
    with _Logged() as log:
        manifest = train(TrainConfig(data=data, out=out, verbose=0))
    assert sum(embedded) == 0
    assert any(line.startswith("train: features of 40 photos read back from the run's cache") for line in log)
    assert not (out / ".cache").exists()  # written: the cache goes
    fresh = train(TrainConfig(data=data, out=tmp_path / "fresh", verbose=0))
    assert sum(embedded) == 50
    assert manifest["metrics"]["test"] == fresh["metrics"]["test"]
    for a, b in zip(*(keras.saving.load_model(run / "model.keras").layers[-1].layers[-1].get_weights()
                      for run in (out, tmp_path / "fresh")), strict=True):
        assert np.abs(a - b).max() < 1e-6


def test_fine_tuning_streams_the_maps_again_when_they_do_not_fit(tmp_path, monkeypatch):
    """--fine-tune past MAPS_LIMIT: the frozen blocks run on the photos each epoch; the tuned model scores."""
    import keras

    from train import pretrained
    from train.fit import TrainConfig, train
    from train.results import classification_metrics, predict_probabilities
    from train.sample import write_sample

    data = tmp_path / "data"
    write_sample(data, seed=6, train_per_class=16, test_per_class=6)
    monkeypatch.setattr(pretrained, "MAPS_LIMIT", 1)
    embedded = []
    caller = stream._caller

    def counting(model, strategy):
        call = caller(model, strategy)
        return lambda pixels: embedded.append(model.output_shape) or call(pixels)

    monkeypatch.setattr(stream, "_caller", counting)
    with _Logged() as log:
        manifest = train(TrainConfig(data=data, out=tmp_path / "run", fine_tune=1, epochs=2, verbose=0))
    assert any("each epoch streams them again from the photos" in line for line in log), log
    assert any(line.startswith("fine-tuned the top 1 blocks") and "streamed" in line for line in log), log
    # Only the whole backbone's features were computed (never the maps): before tuning, then again after.
    assert {shape[1:] for shape in embedded} == {(1280,)}
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    dataset = find_dataset(data)
    test = decode(dataset.splits["test"], (manifest["input"]["height"],) * 2)
    scored = classification_metrics(test.y, predict_probabilities(model, test.x), dataset.labels)
    assert manifest["metrics"]["test"]["confusion_matrix"] == scored["confusion_matrix"]
    monkeypatch.setattr(pretrained, "MAPS_LIMIT", 1 << 40)
    embedded.clear()
    with _Logged() as log:
        train(TrainConfig(data=data, out=tmp_path / "kept", fine_tune=1, epochs=1, verbose=0))
    assert not any("streams them again" in line for line in log)
    assert {shape[1:] for shape in embedded} != {(1280,)}  # the maps were computed and kept


def test_a_changed_photo_is_embedded_again(tmp_path):
    """The cache is keyed by the photos' sha256s: one photo rewritten, the split is embedded afresh."""
    import keras

    from train.sample import write_sample

    data = tmp_path / "data"
    write_sample(data, seed=5, train_per_class=4, test_per_class=2)
    items = find_dataset(data).splits["train"]
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    cache = tmp_path / "cache"
    first = stream.embed(items, (16, 16), model, cache_dir=cache, name="train", key="k")
    with _Logged() as log:
        again = stream.embed(items, (16, 16), model, cache_dir=cache, name="train", key="k")
    assert any("read back" in line for line in log) and np.array_equal(first.x, again.x)
    shutil.copy(items[1][0], items[0][0])  # other pixels under the first photo's name
    with _Logged() as log:
        changed = stream.embed(items, (16, 16), model, cache_dir=cache, name="train", key="k")
    assert not any("read back" in line for line in log)
    assert any("other photos or another model" in line for line in log)
    assert np.array_equal(changed.x[0], first.x[1])
    with _Logged() as log:
        stream.embed(items, (16, 16), model, cache_dir=cache, name="train", key="another backbone")
    assert any("other photos or another model" in line for line in log)


def test_the_feature_batch_is_sized_to_the_device():
    gpus = ["/job:localhost/replica:0/task:0/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1"]
    assert stream.feature_batch(gpus) == stream.GPU_FEATURE_BATCH == 256
    cpu = ["/job:localhost/replica:0/task:0/device:CPU:0"]
    assert stream.feature_batch(cpu) == stream.FEATURE_BATCH == 64
    assert stream.feature_batch(["CPU"]) == 64 and stream.feature_batch([]) == 64


@pytest.mark.slow
def test_two_workers_embed_a_shard_each_and_the_chief_solves_the_same_head(streamed, sample_data, tmp_path):
    """A chief and a worker on the loopback: half the photos each, gathered by collectives, one head."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import keras

    ports = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    # gRPC would send even loopback traffic through a proxy named in the environment.
    proxies = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
    plain = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    procs, logs, outs = {}, {}, {t: tmp_path / f"{t}-run" for t in ("chief", "worker")}
    try:
        for task in ("chief", "worker"):
            env = {**plain, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})}
            logs[task] = tmp_path / f"{task}.log"
            with open(logs[task], "w") as log:
                procs[task] = subprocess.Popen(
                    [sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(outs[task]),
                     "--cluster", "tf-config"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    chief_log, worker_log = logs["chief"].read_text(), logs["worker"].read_text()
    # Each embedded its own half of each split (train, with validation folded in: 120; test: 40).
    assert "train: 60 of 120 photos embedded by worker 0 of 2" in chief_log, chief_log[-3000:]
    assert "train: 60 of 120 photos embedded by worker 1 of 2" in worker_log, worker_log[-3000:]
    assert "test: 20 of 40 photos embedded by worker 1 of 2" in worker_log
    assert "the chief solves the head and writes the run folder" in worker_log
    assert not outs["worker"].exists()
    one, _, _ = streamed
    alone = keras.saving.load_model(one / "model.keras").layers[-1].layers[-1].get_weights()
    together = keras.saving.load_model(outs["chief"] / "model.keras").layers[-1].layers[-1].get_weights()
    for a, b in zip(alone, together, strict=True):
        assert np.abs(a - b).max() < 1e-5
    metrics = [json.loads((run / "manifest.json").read_text())["metrics"] for run in (one, outs["chief"])]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["train_images"] == metrics[1]["train_images"]


@pytest.mark.slow
def test_a_mirrored_strategy_splits_each_batch_over_its_replicas(streamed, sample_data, tmp_path):
    """What several GPUs run, on two logical CPUs (--cpu-replicas 2): the one-device head to 1e-5."""
    import subprocess
    import sys

    import keras

    out = tmp_path / "mirrored"
    result = subprocess.run([sys.executable, "-m", "noodle", "train", str(sample_data), "--out", str(out),
                             "--cpu-replicas", "2", "-q"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # A CPU replica's batch (64) on each of the two: what two GPUs would run with 256 each.
    assert "train: embedding 120 photos in batches of 128 on 2 CPU device(s)" in result.stdout, \
        result.stdout[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["replicas"] == 2
    one, alone, _ = streamed
    for a, b in zip(*(keras.saving.load_model(run / "model.keras").layers[-1].layers[-1].get_weights()
                      for run in (one, out)), strict=True):
        assert np.abs(a - b).max() < 1e-5
    assert manifest["metrics"]["test"] == alone["metrics"]["test"]


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_run_in_one_line_naming_it(tmp_path):
    """The worker killed as its training shard is embedded: the chief stops, naming it, and writes nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from train.sample import write_sample

    data = tmp_path / "data"
    # Many test photos: the worker is still embedding them when it is killed, so the gather waits for it.
    write_sample(data, seed=2, train_per_class=30, test_per_class=150)
    ports = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    proxies = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
    plain = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    procs, logs = {}, {}
    try:
        for task in ("chief", "worker"):
            env = {**plain, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})}
            logs[task] = tmp_path / f"{task}.log"
            with open(logs[task], "w") as log:
                procs[task] = subprocess.Popen(
                    [sys.executable, "-m", "noodle", "train", str(data), "--out", str(tmp_path / task),
                     "--cluster", "tf-config"], stdout=log, stderr=subprocess.PIPE, text=True, env=env,
                    start_new_session=True)
        deadline = time.monotonic() + 300
        while "train: 30 of 60 photos embedded by worker 1" not in logs["worker"].read_text():
            assert time.monotonic() < deadline and procs["worker"].poll() is None, logs["worker"].read_text()
            time.sleep(0.05)
        os.killpg(procs["worker"].pid, signal.SIGKILL)
        _, stderr = procs["chief"].communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert procs["chief"].returncode == 2  # a NoodleError, as every one-line error
    said = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert said == ["error: worker-0 stopped answering while the features were gathered; start every worker "
                    "again"], stderr[-3000:]
    assert not (tmp_path / "chief" / "manifest.json").exists()
