"""The edge runner: no TensorFlow on board, classify's formats and exit codes, bad input, parity.

Models come from the session's `exported_run` (the trained sample model, all
four variants); CLI tests go through typer's CliRunner, in this process's
interpreter (ai-edge-litert here), and one test runs `python -m edge` in the
device environment .venv-edge (tflite-runtime 2.14, no TensorFlow).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.atomic import write_json
from edge.cli import app
from edge.escape import csv_value
from edge.files import expand
from edge.manifest import read_manifest
from edge.runtime import Classifier
from tests.device_env import device_env
from tests.hostile import (
    HOSTILE,
    clean,
    error_line,
)

ROOT = Path(__file__).resolve().parent.parent
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"
runner = CliRunner()


@pytest.fixture(scope="module")
def export(exported_run) -> Path:
    return exported_run / "export"


@pytest.fixture(scope="module")
def photos(sample_data) -> list[Path]:
    return sorted((sample_data / "test").rglob("*.jpg"))


def classify(*args: str):
    return runner.invoke(app, ["classify", *map(str, args)])


def no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- no TensorFlow ---------------------------------------------------------

def test_importing_every_edge_module_never_imports_tensorflow():
    # A fresh interpreter (this venv has TensorFlow installed, so the check can fail).
    code = (
        "import pkgutil, sys, importlib, edge\n"
        "names = [m.name for m in pkgutil.walk_packages(edge.__path__, 'edge.')\n"
        "         if m.name != 'edge.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        "import edge.cli; edge.cli.app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print(len(names), heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) >= 8 and heavy.strip() == "[]", done.stdout


def test_classify_runs_in_the_device_venv_without_tensorflow(export, photos):
    env = device_env()  # tflite-runtime 2.14 (a python3.11 made it), else ai-edge-litert (3.12+)
    probe = subprocess.run([str(EDGE_PYTHON), "-c", "import tensorflow"], capture_output=True)
    assert probe.returncode != 0, ".venv-edge must hold only the edge requirements"
    done = subprocess.run([str(EDGE_PYTHON), "-m", "edge", "classify", str(export / "int8.tflite"),
                           str(photos[0].parent.parent), "--json", "-v"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == len(photos)
    assert f"runtime {env.runtime} {env.version}" in done.stderr
    assert "INFO:" not in done.stderr  # the interpreter's chatter is filtered


# -- output formats and exit codes -----------------------------------------

def test_table_json_and_csv(export, photos):
    model = export / "float32.tflite"
    labels = read_manifest(export)["labels"]
    table = classify(model, *photos[:3])
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["file", "label", "score"] and len(lines) == 4
    assert all(line.split()[1] in labels for line in lines[1:])

    as_json = classify(model, *photos[:3], "--json", "--top-k", "2")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in photos[:3]]
    for r in rows:
        assert [t["label"] for t in r["top"]] != [] and len(r["top"]) == 2
        assert r["top"][0]["score"] >= r["top"][1]["score"] and r["label"] == r["top"][0]["label"]
        assert abs(sum(t["score"] for t in r["top"]) - 1) < 1e-4

    as_csv = classify(model, *photos[:3], "--csv", "-k", "2")
    table_rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table_rows[0] == ["file", "label", "score", "label_2", "score_2"]
    assert [r[0] for r in table_rows[1:]] == [str(p) for p in photos[:3]]
    assert [r[1] for r in table_rows[1:]] == [r["label"] for r in rows]

    both = classify(model, photos[0], "--json", "--csv")
    assert both.exit_code == 2 and "choose one" in both.stderr


def test_folders_globs_and_batches_give_the_same_answers(export, photos):
    model = export / "int8.tflite"
    folder = photos[0].parent.parent
    one_by_one = classify(model, folder, "--json", "--batch", "1", "--workers", "1")
    batched = classify(model, f"{folder}/*/*.jpg", "--json", "--batch", "7")
    assert one_by_one.exit_code == batched.exit_code == 0
    assert one_by_one.stdout == batched.stdout
    assert len(one_by_one.stdout.splitlines()) == len(photos)


def test_expand(tmp_path, photos):
    (tmp_path / "sub").mkdir()
    shutil.copy(photos[0], tmp_path / "sub" / "a.JPG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    files, problems = expand([tmp_path, tmp_path / "sub" / "a.JPG", tmp_path / "empty",
                              tmp_path / "nope*.png", tmp_path / "missing.jpg"])
    assert files == [str(tmp_path / "sub" / "a.JPG")]  # once, and not notes.txt
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "folder has no images", "no file matches this pattern", "no such file or folder"]


# -- bad input -------------------------------------------------------------

def huge_png(path: Path, side: int = 40_000) -> None:
    """A tiny PNG whose header claims side x side pixels: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))


def test_bad_images_are_reported_and_the_rest_run(export, photos, tmp_path):
    bad = tmp_path / "photos"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(photos[0].read_bytes()[:2000])
    (bad / "text.jpg").write_text("not a picture")
    (bad / "noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    huge_png(bad / "bomb.png")
    shutil.copy(photos[0], bad / "good.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = classify(export / "int8.tflite", bad, empty, "--json")
    no_traceback(result)
    assert result.exit_code == 1
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(bad / "good.jpg")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name, reason in [("zero.jpg", "empty file"), ("truncated.jpg", "truncated"),
                         ("text.jpg", "not an image"), ("noise.png", "not an image"),
                         ("bomb.png", "too large")]:
        assert any(str(bad / name) in e and reason in e for e in errors), (name, errors)
    assert any(str(empty) in e and "no images" in e for e in errors)


def test_nothing_to_classify_is_exit_2(export, tmp_path):
    result = classify(export / "int8.tflite", tmp_path)
    no_traceback(result)
    assert result.exit_code == 2 and "nothing to classify" in result.stderr


# A model alone (no manifest) is tests/test_model_file.py's: it runs from its embedded metadata.
@pytest.mark.parametrize("case", ["not_tflite", "other_model", "wrong_size", "not_listed", "missing"])
def test_bad_model_is_one_line_exit_2(export, photos, tmp_path, case):
    model = tmp_path / "int8.tflite"
    shutil.copy(export / "int8.tflite", model)
    manifest = read_manifest(export)
    if case == "not_tflite":
        model.write_bytes(photos[0].read_bytes())
    elif case == "other_model":
        shutil.copy(export / "float32.tflite", model)
    elif case == "wrong_size":
        manifest["input"] = {"height": 32, "width": 32, "channels": 3}
    elif case == "not_listed":  # neither its name nor its sha256 (a renamed copy is found by sha256)
        del manifest["models"]["int8"]
    elif case == "missing":
        model = tmp_path / "absent.tflite"
    write_json(tmp_path / "manifest.json", manifest)
    result = classify(model, photos[0])
    no_traceback(result)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(model) in lines[0]
    expected = {"not_tflite": "not a TFLite model", "other_model": "sha256 differs",
                "wrong_size": "manifest says (32, 32, 3)",
                "not_listed": "not listed in its manifest", "missing": "no such model file"}[case]
    assert expected in lines[0]


def test_no_runtime_says_what_to_install(monkeypatch):
    import importlib

    from edge import runtime

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(runtime.RuntimeMissing, match=r"pip install (tflite-runtime|ai-edge-litert)"):
        runtime.find_runtime()


def test_fixed_batch_model_runs_one_at_a_time(export, photos):
    clf = Classifier(export / "int8.tflite")
    pixels = np.stack([clf.preprocess(p) for p in photos[:5]])
    batched = clf.probabilities(pixels)
    clf.batchable = False  # what a model saved with batch 1 reports
    clf._resize(1)
    assert np.array_equal(clf.probabilities(pixels), batched)


# -- parity ----------------------------------------------------------------

def test_float32_probabilities_equal_keras_within_1e4(exported_run, shared_photos_or_sample):
    import keras

    clf = Classifier(exported_run / "export" / "float32.tflite")
    files = sorted(shared_photos_or_sample.rglob("*.jpg"))
    pixels = np.stack([clf.preprocess(f) for f in files])
    model = keras.models.load_model(exported_run / "model.keras", compile=False)
    expected = model.predict(pixels.astype(np.float32), batch_size=64, verbose=0)
    got = np.concatenate([clf.invoke(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4


@pytest.fixture(scope="module")
def shared_photos_or_sample(request, sample_data) -> Path:
    """The 400 shared test photos when they are beside the checkout, else the sample's."""
    try:
        return request.getfixturevalue("shared_photos") / "test"
    except pytest.skip.Exception:
        return sample_data / "test"


def test_runtime_env_var_pins_the_interpreter(export, monkeypatch):
    monkeypatch.setenv("NOODLE_RUNTIME", "nonesuch")
    result = classify(export / "int8.tflite", "x.jpg")
    no_traceback(result)
    assert result.exit_code == 2 and "unknown runtime" in result.stderr


def test_classify_table_csv_and_json_escape_every_label(fuzz_model, three_photos):
    k = str(len(HOSTILE))
    table = runner.invoke(app, ["classify", str(fuzz_model), str(three_photos), "--top-k", k])
    assert table.exit_code == 0, table.stderr
    text = table.stdout_bytes.decode()
    assert clean(text) and clean(table.stderr)
    assert len(text.splitlines()) == 1 + 3  # a newline in a label splits no row
    assert "L" * 100 not in text  # a 10 KB label is cut
    assert "c\\033x" in text and "e0\\033[2J" in text and "c\\342\\200\\256x" in text  # ESC, RLO

    as_csv = runner.invoke(app, ["classify", str(fuzz_model), str(three_photos), "--top-k", k, "--csv"])
    assert as_csv.exit_code == 0, as_csv.stderr
    assert clean(as_csv.stdout_bytes.decode())
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))[1:]
    assert len(rows) == 3
    for row in rows:
        cells = row[1::2]
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
        assert sorted(csv_value(c) for c in cells) == sorted(HOSTILE)  # round trip, every label

    as_json = runner.invoke(app, ["classify", str(fuzz_model), str(three_photos), "--top-k", k, "--json"])
    assert as_json.exit_code == 0, as_json.stderr
    assert clean(as_json.stdout_bytes.decode())
    for line in as_json.stdout.splitlines():
        assert sorted(t["label"] for t in json.loads(line)["top"]) == sorted(HOSTILE)


def test_classify_verbose_escapes_the_labels(fuzz_model, three_photos):
    result = runner.invoke(app, ["classify", str(fuzz_model), str(three_photos / "p0.png"), "-v"])
    assert result.exit_code == 0 and clean(result.stderr)
    assert "e0\\033[2J" in result.stderr


@pytest.mark.parametrize("args", [["--workers", "-1"], ["--workers", "0"], ["--threads", "-1"],
                                  ["--threads", "0"], ["--threads", "32768"]])
def test_classify_threads_and_workers_out_of_range_are_one_line(args, tmp_path):
    # The model does not exist: the option is refused before anything is loaded.
    result = runner.invoke(app, ["classify", str(tmp_path / "m.tflite"), str(tmp_path), *args])
    line = error_line(result)
    assert line.startswith(f"error: {args[0]} {args[1]}: out of range; use 1 to ")
    assert "re-export" not in line
