"""bench/levers.py: the lever experiments of issue 13 record what they measured, correctly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import levers


@pytest.fixture
def out(tmp_path, monkeypatch):
    """The experiment log under tmp_path instead of runs/levers/."""
    root = tmp_path / "levers"
    monkeypatch.setattr(levers, "OUT", root)
    for name in ("RESULTS", "DEVICE", "INVOKE"):
        monkeypatch.setattr(levers, name, root / getattr(levers, name).name)
    return root


def test_set_parses_each_field_by_its_type_and_refuses_unknown_ones():
    recipe = levers.parse_set(["lr=0.002", "epochs=12", "aug=strong", "label_smoothing=0.1"])
    assert (recipe.lr, recipe.epochs, recipe.aug, recipe.label_smoothing) == (0.002, 12, "strong", 0.1)
    assert isinstance(recipe.epochs, int) and recipe.batch == levers.Recipe().batch
    with pytest.raises(SystemExit, match="no such recipe field"):
        levers.parse_set(["learning_rate=0.1"])


def test_table_averages_each_recipe_over_its_seeds_and_names_what_it_changed(out):
    rows = [("base", {}, 0, 0.75), ("base", {}, 1, 0.80), ("base", {}, 2, 0.70), ("base", {}, 3, 0.10),
            ("wide", {"image_size": 96}, 0, 0.70)]
    for name, changes, seed, acc in rows:
        levers.append(levers.RESULTS, {
            "name": name, "seed": seed, "recipe": {**vars(levers.Recipe()), **changes},
            "test_accuracy": acc, "train_seconds": 60.0, "loadavg_before": [1.0, 1.0, 1.0], "params": 1000})
    lines = levers.table().splitlines()
    base = next(line for line in lines if line.startswith("| base: default |"))
    assert "| 75.00% |" in base and "s0:75.00% s1:80.00% s2:70.00% s3:10.00%" in base  # s3 not in the mean
    assert any(line.startswith("| wide: image_size=96 | (not 3 seeds) |") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("arch, classes", [("noodle", 2), ("pooled", 5), ("res", 2)])
def test_a_lever_run_scores_its_model_on_the_test_photos_then_converts_and_times_it(arch, classes, tmp_path,
                                                                                   out):
    import keras

    from edge.postprocess import predicted_index, widen
    from tests.test_matrix import tinted_photos
    from train.data import decode, find_dataset

    data = tinted_photos(tmp_path / "photos", classes)
    levers.main(["train", "t", "--data", str(data), "--seeds", "0", "--set", f"arch={arch}",
                 "--set", "image_size=32", "--set", "epochs=2", "--set", "label_smoothing=0.1",
                 "--set", "mixup=0.2", "--set", "warmup=1", "--set", "weight_decay=0.05"])
    (row,) = [json.loads(line) for line in levers.RESULTS.read_text().splitlines()]
    assert row["recipe"]["arch"] == arch and row["epochs_run"] == 2

    # The recorded accuracy is the saved model's on the data's test photos, counted again here.
    model = keras.models.load_model(out / "models" / "t-s0.keras", compile=False)
    test = decode(find_dataset(data).splits["test"], (32, 32))
    probs = widen(model.predict(test.x.astype(np.float32), verbose=0))
    assert probs.shape[1] == classes
    assert row["test_accuracy"] == pytest.approx(float((predicted_index(probs) == test.y).mean()))

    levers.main(["device", "t-s0", "--data", str(data)])
    (device,) = [json.loads(line) for line in levers.DEVICE.read_text().splitlines()]
    sizes = {v: (out / "tflite" / f"t-s0.{v}.tflite").stat().st_size for v in ("float32", "int8")}
    assert (device["float32_bytes"], device["int8_bytes"]) == (sizes["float32"], sizes["int8"])
    assert device["keras_test_accuracy"] == pytest.approx(row["test_accuracy"])

    levers.main(["invoke", "t-s0", "--photos", str(data), "--rounds", "1"])
    (timing,) = [json.loads(line) for line in levers.INVOKE.read_text().splitlines()]
    assert timing["models"]["t-s0"]["invoke_ms"] > 0 and timing["models"]["t-s0"]["decode_ms"] > 0
    assert "| t: arch=" in levers.table()
