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
