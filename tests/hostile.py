"""Hostile inputs shared by the tests of several modules: fuzz labels, tiny models, hand-made exports.

Models are tiny Keras nets converted here (a second each), with manifests
written by hand; bundles are made from a hand-made export whose model file is
a few bytes (`noodle bundle` never parses it), so nothing trains. The fixtures
(`blobs`, `three_photos`, `fuzz_model`) reach every test through tests/conftest.py.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.atomic import write_json
from edge.manifest import sha256_file
from edge.preprocess import PREPROCESSING

ROOT = Path(__file__).resolve().parent.parent


SIZE = 8




C0 = [chr(c) for c in range(0x20)] + ["\x7f"]


C1 = [chr(c) for c in range(0x80, 0xA0)]


BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
        "\u200e", "\u200f", "\u061c"]


ESCAPES = ["\x1b[2J", "\x1b]0;owned\x07", "\x1b[31mred\x1b[0m", "\x9b2J"]


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'quoted"]


PRINTABLE = ["a|b", "<script>alert(1)</script>", "back\\slash", "`code`", "*bold*_x_", "[link](x)"]


LONG = "L" * 10_240


# Each distinct, each holding its hostile part between ordinary letters.
HOSTILE = ([f"c{ch}x" for ch in C0 + C1 + BIDI] + [f"e{i}{s}" for i, s in enumerate(ESCAPES)]
           + FORMULAS + PRINTABLE + ["multi\nline", LONG])


def clean(text: str) -> bool:
    """No raw control, format or bidi character: only printable text and line ends."""
    return all(ch.isprintable() or ch == "\n" for ch in text)


def error_line(result) -> str:
    """The one `error:` line of a CLI result (and no traceback)."""
    out = result.stderr if hasattr(result, "stderr") else ""
    assert "Traceback" not in (result.stdout or "") + out
    lines = out.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def keras_model(kind: str, units: int = 3):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    if kind == "map":  # (1, 7, 7, 2): a segmentation-like output
        return keras.Model(inputs, keras.layers.Conv2D(2, 2)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    if kind == "scalar":  # (1,): one number per image, no class axis
        return keras.Model(inputs, keras.layers.Reshape(())(keras.layers.Dense(1)(x)))
    dense = keras.layers.Dense(units, activation="softmax" if kind == "softmax" else None)
    model = keras.Model(inputs, dense(x))
    rng = np.random.default_rng(0)
    dense.set_weights([rng.normal(0, 3, (3, units)).astype(np.float32),
                       rng.normal(0, 2, units).astype(np.float32)])
    return model


PASSED = "passed"  # the default below: validation recorded as passed


def export_manifest(labels: list[str], models: dict, validation: dict | str | None = PASSED) -> dict:
    validation = {"passed": True} if validation == PASSED else validation
    return {"format": "noodle", "schema": 1, "kind": "export", "labels": labels,
            "input": {"height": SIZE, "width": SIZE, "channels": 3}, "output": "softmax",
            "preprocessing": PREPROCESSING, "source": {"model": "model.keras", "sha256": "0" * 64},
            "converter": {}, "models": models, "saved_model": None, "validation": validation}


def entry(path: Path, units: int) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "input": {"dtype": "float32", "shape": [1, SIZE, SIZE, 3], "scale": 0.0, "zero_point": 0},
            "output": {"dtype": "float32", "shape": [1, units], "scale": 0.0, "zero_point": 0},
            "fully_integer": False}


def write_export(folder: Path, labels: list[str], blob: bytes, name: str = "float32.tflite",
                 validation: dict | str | None = PASSED) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / name
    model.write_bytes(blob)
    write_json(folder / "manifest.json",
               export_manifest(labels, {"float32": entry(model, len(labels))}, validation))
    return model


@pytest.fixture(scope="session")
def blobs() -> dict[str, bytes]:
    """.tflite bytes: softmax over every fuzz label, 3 logits, and two outputs that are no row of scores."""
    from export.convert import convert

    return {"fuzz": convert(keras_model("softmax", len(HOSTILE)), "float32"),
            "softmax": convert(keras_model("softmax"), "float32"),
            "logits": convert(keras_model("logits"), "float32"),
            "scalar": convert(keras_model("scalar"), "float32"),
            "map": convert(keras_model("map"), "float32")}


@pytest.fixture(scope="session")
def three_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        Image.new("RGB", (24, 20), colour).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="session")
def fuzz_model(blobs, tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("fuzz") / "export", HOSTILE, blobs["fuzz"])


def fake_run(root: Path, labels=("cat", "dog"), name: str = "int8.tflite", blob: bytes = b"model bytes",
             validation: dict | str | None = PASSED) -> Path:
    """A run folder whose export lists one model file (bundle never parses it)."""
    export = root / "export"
    export.mkdir(parents=True)
    model = export / name
    model.write_bytes(blob)
    write_json(export / "manifest.json",
               export_manifest(list(labels), {"int8": entry(model, len(labels))}, validation))
    return root


def members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
