"""Every architecture, two and five classes: train -> export -> validate, both runtimes.

v1 passed on the shared two-class photos and failed on everything else: the
seed CNN and every multi-class model wrote a dynamic-range file that
tflite-runtime 2.14 (the Pi's runtime on Bookworm) cannot load. This matrix
runs each combination end to end on tiny generated photos, so that a
converter set-up one runtime cannot load fails here, not on a user's Pi.
Every row of the architecture table is in it; the pretrained one with its
ImageNet weights, at a small input side (the backbone is fully convolutional).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from export.convert import VARIANTS, export_run, record_validation
from export.validate import EDGE_RUNTIME, RUNTIME, edge_python, raise_for, validate_export
from tests.device_env import skip_the_tflite_runtime_half, tflite_runtime_missing
from train.config import ARCHITECTURES, TrainConfig
from train.fit import train

# Tints far apart, so two epochs learn something and labels are not all one class.
TINTS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (128, 128, 128)]
PER_CLASS = 16


def tinted_photos(root, classes: int, seed: int = 0):
    """root/<class>/*.jpg: noisy photos of one tint per class, in plain class folders."""
    rng = random.Random(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 40, (40, 48, 3))
            pixels = np.clip(np.array(TINTS[c]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_variant_loads_and_agrees_on_both_runtimes(arch, classes, tmp_path):
    if edge_python() is None:
        pytest.fail("no device environment (.venv-edge): run `make edge-env`")
    data = tinted_photos(tmp_path / "photos", classes)
    run = tmp_path / "run"
    manifest = train(TrainConfig(data=data, out=run, arch=arch, image_size=32, epochs=2, verbose=0))
    assert len(manifest["labels"]) == classes

    export_run(run)
    report = validate_export(run)
    exported = record_validation(run, report)
    raise_for(report)  # parity with Keras, and no file failed under either runtime

    assert report["failed"] == {} and exported.failed == {}
    assert list(exported.models) == list(VARIANTS)
    assert exported.validation["passed"] is True
    missing = tflite_runtime_missing()
    for variant in VARIANTS:
        runtimes = report["variants"][variant]["runtimes"]
        assert runtimes[RUNTIME]["ok"] is True
        edge = runtimes[EDGE_RUNTIME]
        if missing:  # a 3.12+ device environment: recorded as not checked, never as passed
            assert edge == {"ok": None, "error": f"not checked: {missing}"}, (variant, edge)
            continue
        assert edge["ok"] is True, (variant, edge)
        # Same file, two interpreters: the same labels (int8 kernels may round one
        # photo differently; float variants agree exactly).
        assert edge["agreement_with_litert"] >= (0.9 if variant == "int8" else 1.0), (variant, edge)
    assert exported.models["dynamic"].compatibility["dense_weights"] == "per-tensor"
    skip_the_tflite_runtime_half(f"{RUNTIME}'s half of this cell")
