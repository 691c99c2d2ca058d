"""Hostile labels, hostile files, bad numbers: no injection, no path escape, no
traceback, no silent wrong answer.

Each test failed on the code before its fix. Models are tiny Keras nets converted here
(a second each), with manifests written by hand; bundles are made from a hand-made export
whose model file is a few bytes (`noodle bundle` never parses it), so nothing trains.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.atomic import OutputError, atomic_output, write_json
from edge.cli import app as edge_app
from edge.escape import LABEL_MAX, csv_cell, csv_value, label_problem, markdown, shown
from edge.manifest import ManifestError, load_export, sha256_file
from edge.preprocess import PREPROCESSING
from export.bundle import BundleError, unpack, write_bundle

ROOT = Path(__file__).resolve().parent.parent
SIZE = 8
runner = CliRunner()

# -- the fuzz labels ---------------------------------------------------------------

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


# -- tiny models, hand-made exports ---------------------------------------------------

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


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """.tflite bytes: softmax over every fuzz label, 3 logits, and two outputs that are no row of scores."""
    from export.convert import convert

    return {"fuzz": convert(keras_model("softmax", len(HOSTILE)), "float32"),
            "softmax": convert(keras_model("softmax"), "float32"),
            "logits": convert(keras_model("logits"), "float32"),
            "scalar": convert(keras_model("scalar"), "float32"),
            "map": convert(keras_model("map"), "float32")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        Image.new("RGB", (24, 20), colour).save(folder / f"p{i}.png")
    return folder


# -- the label fuzz: training's rule, then every output --------------------------------

def test_label_rule_refuses_unprintable_and_long_names_and_keeps_the_rest():
    for label in HOSTILE:
        problem = label_problem(label)
        hostile = not label.isprintable() or len(label) > LABEL_MAX
        assert (problem is not None) == hostile, label
        assert problem is None or clean(problem) and len(problem) < 400
    assert label_problem("cat") is None and label_problem("=cmd|' /C calc'!A0") is None


def test_training_refuses_hostile_class_folders_naming_the_folder(tmp_path):
    from train.data import DataError, find_dataset

    for i, label in enumerate(HOSTILE):
        if "/" in label or "\0" in label or len(label.encode()) > 255:
            continue  # no folder can have that name
        root = tmp_path / f"d{i}"
        for k, name in enumerate((label, "other")):
            (root / name).mkdir(parents=True)
            for j in range(4):  # other pixels per class: the same bytes under two labels is an error
                Image.new("RGB", (8, 8), (j * 60, k * 100, 0)).save(root / name / f"{j}.png")
        if label_problem(label) is None:
            assert label in find_dataset(root).labels
            continue
        with pytest.raises(DataError) as caught:
            find_dataset(root)
        message = str(caught.value)
        assert clean(message) and "\n" not in message, repr(message)
        assert message.startswith(str(root)) and "class name" in message


def test_training_refuses_hostile_csv_labels_naming_the_line(tmp_path):
    from train.data import DataError, find_dataset

    for j in range(3):
        Image.new("RGB", (8, 8), (0, j * 80, 0)).save(tmp_path / f"{j}.png")
    for label in HOSTILE:
        path = tmp_path / "labels.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["file", "label"], ["0.png", "other"], ["1.png", "other"],
                                     ["2.png", label]])
        if label_problem(label.strip()) is None:  # cells are stripped ("\tx" is x)
            continue  # accepted by the rule; too few photos to split, which is not the point here
        with pytest.raises(DataError) as caught:
            find_dataset(path)
        message = str(caught.value)
        assert clean(message) and "\n" not in message, repr(message)
        assert message.startswith(f"{path}:4: class name"), message


def test_train_cli_refuses_a_hostile_folder_in_one_line(tmp_path):
    from noodle import app

    for name in ("cat\x1b[2J", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (8, 8), (j * 60, 9, 9)).save(tmp_path / "data" / name / f"{j}.png")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    line = error_line(result)
    assert "cat\\033[2J: class name" in line and clean(line)


@pytest.fixture(scope="module")
def fuzz_model(blobs, tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("fuzz") / "export", HOSTILE, blobs["fuzz"])


def test_classify_table_csv_and_json_escape_every_label(fuzz_model, photos):
    k = str(len(HOSTILE))
    table = runner.invoke(edge_app, ["classify", str(fuzz_model), str(photos), "--top-k", k])
    assert table.exit_code == 0, table.stderr
    text = table.stdout_bytes.decode()
    assert clean(text) and clean(table.stderr)
    assert len(text.splitlines()) == 1 + 3  # a newline in a label splits no row
    assert "L" * 100 not in text  # a 10 KB label is cut
    assert "c\\033x" in text and "e0\\033[2J" in text and "c\\342\\200\\256x" in text  # ESC, RLO

    as_csv = runner.invoke(edge_app, ["classify", str(fuzz_model), str(photos), "--top-k", k, "--csv"])
    assert as_csv.exit_code == 0, as_csv.stderr
    assert clean(as_csv.stdout_bytes.decode())
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))[1:]
    assert len(rows) == 3
    for row in rows:
        cells = row[1::2]
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
        assert sorted(csv_value(c) for c in cells) == sorted(HOSTILE)  # round trip, every label

    as_json = runner.invoke(edge_app, ["classify", str(fuzz_model), str(photos), "--top-k", k, "--json"])
    assert as_json.exit_code == 0, as_json.stderr
    assert clean(as_json.stdout_bytes.decode())
    for line in as_json.stdout.splitlines():
        assert sorted(t["label"] for t in json.loads(line)["top"]) == sorted(HOSTILE)


def test_classify_verbose_escapes_the_labels(fuzz_model, photos):
    result = runner.invoke(edge_app, ["classify", str(fuzz_model), str(photos / "p0.png"), "-v"])
    assert result.exit_code == 0 and clean(result.stderr)
    assert "e0\\033[2J" in result.stderr


def test_csv_cells_round_trip_and_neutralize():
    for text in [*HOSTILE, "", "plain", "'", "''x", "\\", "b\udcff.jpg"]:
        cell = csv_cell(text)
        assert clean(cell) and csv_value(cell) == text, text
        assert not cell.startswith(("=", "+", "-", "@"))
    assert csv_cell("=1+2") == "'=1+2" and csv_cell("'x") == "''x" and csv_cell("cat") == "cat"


def test_markdown_and_table_forms():
    assert markdown("a|b<script>") == "a\\|b&lt;script&gt;"
    assert markdown("x\ny\x1b[2J") == "x\\ny\\033\\[2J"
    assert shown("L" * 500) == "L" * 37 + "..." and shown("cat") == "cat"


def table_cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_report_md_escapes_labels_and_keeps_its_table():
    from export.report_md import to_markdown

    per_class = {label: {"accuracy": 0.5, "correct": 1, "count": 2} for label in HOSTILE}
    row = {"variant": "float32", "bytes": 1000, "size_vs_float32": 1.0, "accuracy": 0.5,
           "per_class": per_class, "latency_ms": {}, "peak_rss_mb": None, "fully_integer": False,
           "verdict": "float32: the reference"}
    hostile_row = {**row, "variant": "x|<b>\x1b[2J", "verdict": "x|<b>\x1b[2J: worse"}
    report = {"test": {"count": 2, "source": "photos|\n<i>", "split": "test", "skipped": []},
              "validation": {"count": 2, "split": "val"}, "keras_accuracy": 0.5, "calibration": {},
              "rows": [row, hostile_row], "parity": None, "runtimes": {"ai-edge-litert": True},
              "statistics": {"reference": "float32", "ci95": "x", "test": "y", "alpha": 0.05},
              "benchmark": {"threads": [1], "runs": 1, "budget_s": 1.5, "runtime": "r", "version": "v",
                            "cpus": 1,
                            "machine": "m", "loadavg": None, "baseline_rss_mb": 1.0},
              "failed": {"int8": "<script>alert(1)</script>\x1b[2J"},
              "data_warnings": ["photos|<i>: too few photos for a trustworthy figure"],
              "disagreements": {"file": None, "summary": "none"}, "figures": {"confusion": None}}
    md = to_markdown(report)
    assert clean(md) and "<script>" not in md and "<b>" not in md and "<i>" not in md
    tables = [[line for line in t.splitlines() if line.startswith("|")] for t in md.split("\n\n")]
    tables = [t for t in tables if t]
    assert len(tables) == 2  # accuracy, then speed
    for table in tables:
        assert len(table) == 4 and len({table_cells(line) for line in table}) == 1  # no row broken
        assert max(map(len, table)) <= 120  # a terminal's width
    assert "\\|" in md and "&lt;script&gt;" in md
    # Training's warning about its data is in report.md too, and the report says what really tells.
    assert "WARNING: photos\\|&lt;i&gt;: too few photos for a trustworthy figure" in md
    assert "make export TEST=folder" in md


def test_figures_draw_hostile_labels(tmp_path):
    from export.figures import confusion_figure

    labels = ["$x^$", "$\\frac$", "c\x1b[2Jx", LONG]
    rows = [{"variant": "float32", "accuracy": 0.5, "confusion": {"counts": np.eye(4, dtype=int).tolist()}}]
    assert confusion_figure(rows, labels, tmp_path / "confusion.png") == "confusion.png"
    assert (tmp_path / "confusion.png").stat().st_size > 0


# -- README-PI.md and the bundle ----------------------------------------------------------

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


def test_readme_pi_escapes_the_labels(tmp_path):
    from export.bundle import readme_labels

    labels = [label for label in HOSTILE if len(label) < 200] + [LONG]
    run = fake_run(tmp_path / "run", labels=labels[:20] + [LONG])
    files = members(write_bundle(run, "int8", tmp_path / "dist"))
    readme = next(v for k, v in files.items() if k.endswith("README-PI.md")).decode()
    assert clean(readme) and "L" * 100 not in readme
    everything = readme_labels(labels)
    assert clean(everything) and "\n" not in everything and "<script>" not in everything
    assert "&lt;script&gt;" in readme_labels(["<script>alert(1)</script>", "a|b"])
    assert "a\\|b" in readme_labels(["a|b", "c"])


def test_bundle_refuses_a_model_file_outside_the_export(tmp_path):
    from noodle import app

    (tmp_path / "secret.txt").write_text("the host's secret")
    run = fake_run(tmp_path / "run")
    manifest = json.loads((run / "export/manifest.json").read_text())
    for bad in ("../../secret.txt", str(tmp_path / "secret.txt"), "..", "a/b.tflite"):
        manifest["models"]["int8"].update(file=bad, sha256=sha256_file(tmp_path / "secret.txt"))
        write_json(run / "export/manifest.json", manifest)
        with pytest.raises(ManifestError, match=r"models\.int8\.file: expected a plain file name"):
            load_export(run / "export")
        result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
        assert "models.int8.file" in error_line(result)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_bundle_refuses_a_symlinked_or_shell_unsafe_model(tmp_path):
    (tmp_path / "secret.txt").write_text("the host's secret")
    run = fake_run(tmp_path / "run")
    model = run / "export/int8.tflite"
    model.unlink()
    model.symlink_to(tmp_path / "secret.txt")
    manifest = json.loads((run / "export/manifest.json").read_text())
    manifest["models"]["int8"]["sha256"] = sha256_file(model)
    write_json(run / "export/manifest.json", manifest)
    with pytest.raises(BundleError, match=r"models\.int8\.file: .* is a link"):
        write_bundle(run, "int8", tmp_path / "dist")
    unsafe = fake_run(tmp_path / "unsafe", name="$(reboot).tflite")
    with pytest.raises(BundleError, match="letters, digits"):
        write_bundle(unsafe, "int8", tmp_path / "dist")


def test_bundle_members_are_plain_files_under_one_folder_and_its_sha256_is_printed(tmp_path):
    from noodle import app

    run = fake_run(tmp_path / "run")
    result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.splitlines()[-1])
    assert f"sha256 {sha256_file(path)}  {path.name}" in result.stdout
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            assert member.isfile() and parts[0] == path.name.removesuffix(".tar.gz") and ".." not in parts
    readme = next(v for k, v in members(path).items() if k.endswith("README-PI.md")).decode()
    assert "sha256sum" in readme


def test_bundle_out_that_is_a_file_is_one_line(tmp_path):
    from noodle import app

    run = fake_run(tmp_path / "run")
    (tmp_path / "dist").write_text("in the way")
    result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
    assert "a file is where a folder should be" in error_line(result)


def test_wheel_cache_is_checked_against_the_hashes_recorded_at_download(tmp_path):
    from export.wheelhouse import WheelhouseError

    def download(specs, target, dest):
        for spec in specs:
            name = re.split(r"[=<>!~;]", spec)[0].replace("-", "_")
            # As on an index: one file name, one content, whichever release asks.
            (dest / f"{name}-1.0-py3-none-any.whl").write_bytes(f"{name} 1.0".encode())
        made.append(target.release)

    made, cache, run = [], tmp_path / "cache", fake_run(tmp_path / "run")
    write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache, download=download)
    # The runner's lock (the camera's, beside it, pins OpenCV against the same numpy).
    lock = next(p for p in sorted(cache.glob("bookworm-*.lock")) if "tflite_runtime" in p.read_text())
    name, digest = lock.read_text().splitlines()[0].split()
    assert digest == hashlib.sha256((cache / name).read_bytes()).hexdigest()
    (cache / name).write_bytes(b"a modified wheel")
    with pytest.raises(WheelhouseError, match=f"{name}: sha256 .* differs .* the cache was altered"):
        write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache,
                     download=download)
    # A lock that records no sha256 (an older noodle's) is downloaded again, not trusted.
    made.clear()
    lock.write_text("\n".join(line.split()[0] for line in lock.read_text().splitlines()) + "\n")
    write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache, download=download)
    assert made == ["bookworm"] and (cache / name).read_bytes() != b"a modified wheel"


def test_rerun_removes_stale_temporary_files_but_not_a_writers(tmp_path):
    import fcntl

    dest = tmp_path / "out.tar.gz"
    stale = tmp_path / ".out.tar.gz.abc123.tmp.tar.gz"
    held = tmp_path / ".out.tar.gz.def456.tmp.tar.gz"
    stale.write_bytes(b"left by a killed run")
    held.write_bytes(b"being written")
    with open(held, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # what a live writer holds
        with atomic_output(dest, suffix=".tar.gz") as tmp:
            tmp.write_bytes(b"new")
        assert not stale.exists() and held.exists() and dest.read_bytes() == b"new"


SIGTERMED = """
import os, signal, sys, time
from pathlib import Path
from edge.errors import one_line_errors
from edge.atomic import atomic_output

@one_line_errors
def command():
    with atomic_output(Path(sys.argv[1])) as tmp:
        tmp.write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(60)

command()
"""


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED, str(tmp_path / "out.bin")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and err.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []  # no temporary file, no half file


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        with atomic_output(tmp_path / "x.json") as tmp:
            tmp.write_bytes(b"half")
            full()
    assert list(tmp_path.iterdir()) == []


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


def test_data_sample_onto_a_file_is_one_line(tmp_path):
    from noodle import app

    (tmp_path / "file").write_text("in the way")
    for out in (tmp_path / "file", tmp_path / "file" / "sample"):
        result = runner.invoke(app, ["data", "sample", str(out), "--train-per-class", "1",
                                     "--test-per-class", "1"])
        assert "a file is where" in error_line(result)


# -- unpacking: every path refuses links, absolute and `..` members ------------------------

def evil_tarball(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes = b"x", **fields):
            info = tarfile.TarInfo(name)
            info.size = len(data) if fields.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        add("top/install.sh")
        if kind == "dotdot":
            add("top/../../escaped.txt")
        elif kind == "absolute":
            add(str(path.parent / "outside" / "absolute.txt"))
        elif kind == "symlink":
            add("top/link", type=tarfile.SYMTYPE, linkname=str(path.parent / "outside"))
            add("top/link/through.txt")
        elif kind == "hardlink":
            add("top/hard", type=tarfile.LNKTYPE, linkname=str(path.parent / "outside" / "secret.txt"))
    return path


def unpackers():
    import test_bundle  # tests/ is on sys.path, as pytest puts it there

    from bench import pi_check

    return {"export.bundle.unpack": unpack, "bench.pi_check.unpack": pi_check.unpack,
            "tests.test_bundle.unpack": test_bundle.unpack}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
@pytest.mark.parametrize("where", ["export.bundle.unpack", "bench.pi_check.unpack",
                                   "tests.test_bundle.unpack"])
def test_every_unpacking_path_refuses_hostile_members(tmp_path, kind, where):
    from bench.pi_check import CheckFailed

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    tarball = evil_tarball(tmp_path / "evil.tar.gz", kind)
    into = tmp_path / "a" / "b" / "into"
    with pytest.raises((BundleError, CheckFailed), match="member"):
        unpackers()[where](tarball, into)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not list(tmp_path.rglob("escaped.txt")) and not list(tmp_path.rglob("through.txt"))
    assert not into.exists() or not list(into.rglob("*"))  # refused whole: nothing written


# -- bad numbers ----------------------------------------------------------------------------

def test_export_max_drop_must_be_a_number_of_points(tmp_path):
    from noodle import app

    for value in ("nan", "-1", "inf"):
        result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--max-drop", value])
        assert "--max-drop" in error_line(result) and "0 or more" in result.stderr


@pytest.mark.parametrize("args", [["--workers", "-1"], ["--workers", "0"], ["--threads", "-1"],
                                  ["--threads", "0"], ["--threads", "32768"]])
def test_classify_threads_and_workers_out_of_range_are_one_line(args, tmp_path):
    # The model does not exist: the option is refused before anything is loaded.
    result = runner.invoke(edge_app, ["classify", str(tmp_path / "m.tflite"), str(tmp_path), *args])
    line = error_line(result)
    assert line.startswith(f"error: {args[0]} {args[1]}: out of range; use 1 to ")
    assert "re-export" not in line


def test_threads_are_bounded_in_the_classifier_too(fuzz_model):
    from edge.errors import NoodleError
    from edge.runtime import Classifier

    with pytest.raises(NoodleError, match="--threads 32768: out of range"):
        Classifier(fuzz_model, threads=32768)


@pytest.mark.parametrize("source", ["2147483648", "9" * 20, "\u00b2", "\u0663"])
def test_camera_source_that_is_no_index_is_one_line(source, tmp_path):
    result = runner.invoke(edge_app, ["camera", str(tmp_path / "m.tflite"), "--source", source])
    assert "not a camera index" in error_line(result)


def test_camera_indexes_and_files(tmp_path, monkeypatch):
    from edge.camera import device_index

    assert device_index("0") == 0 and device_index("200") == 200 and device_index("video.mp4") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2147483648").write_bytes(b"")
    assert device_index("2147483648") is None  # a file of that name


# -- foreign and unfinished models --------------------------------------------------------

@pytest.mark.parametrize("kind", ["scalar", "map"])
def test_outputs_that_are_no_row_of_scores_are_refused(blobs, kind, tmp_path, photos):
    model = write_export(tmp_path / "export", ["a", "b"], blobs[kind])
    line = error_line(runner.invoke(edge_app, ["classify", str(model), str(photos)]))
    assert "not one row of class scores" in line


def test_logits_are_told_from_probabilities_and_softmax_applied(blobs, tmp_path, photos):
    from edge.runtime import Classifier

    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["logits"])
    result = runner.invoke(edge_app, ["classify", str(model), str(photos), "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "read as logits, softmax applied" in warnings[0]
    for line in result.stdout.splitlines():
        scores = [t["score"] for t in json.loads(line)["top"]]
        assert all(0 <= s <= 1 for s in scores) and sum(scores) == pytest.approx(1, abs=1e-4)
    # The probabilities are the softmax of the raw outputs.
    clf = Classifier(model)
    pixels = np.stack([clf.preprocess(p) for p in sorted(photos.iterdir())])
    raw = clf.invoke(pixels)
    expected = np.exp(raw - raw.max(1, keepdims=True))
    np.testing.assert_allclose(clf.probabilities(pixels), expected / expected.sum(1, keepdims=True),
                               atol=1e-5)
    # A softmax model is left alone, and says nothing.
    ok = write_export(tmp_path / "softmax", ["a", "b", "c"], blobs["softmax"])
    quiet = runner.invoke(edge_app, ["classify", str(ok), str(photos), "--json"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_one_unit_logits_get_a_sigmoid():
    from edge.runtime import Classifier

    clf = Classifier.__new__(Classifier)
    clf.path, clf.scores = Path("m.tflite"), "probabilities"
    out = clf._as_probabilities(np.array([[-2.0], [3.0]], np.float32))
    assert clf.scores == "logits"
    np.testing.assert_allclose(out[:, 0], 1 / (1 + np.exp([2.0, -3.0])), rtol=1e-6)


@pytest.mark.parametrize("validation", [None, {"passed": False}])
def test_an_unvalidated_export_warns_once_and_strict_refuses_it(blobs, tmp_path, photos, validation):
    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["softmax"], validation=validation)
    said = "never finished" if validation is None else "did not pass"
    result = runner.invoke(edge_app, ["classify", str(model), str(photos)])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and said in warnings[0] and "--strict" in warnings[0]
    line = error_line(runner.invoke(edge_app, ["classify", str(model), str(photos), "--strict"]))
    assert said in line and "--strict runs only validated models" in line


def test_a_validated_export_runs_strict_without_a_word(blobs, tmp_path, photos):
    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["softmax"])
    result = runner.invoke(edge_app, ["classify", str(model), str(photos), "--strict"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_a_lone_model_file_warns_that_no_validation_is_recorded(blobs, tmp_path, photos):
    from export.metadata import embed

    info = {"variant": "float32", "labels": ["a", "b", "c"], "output": "softmax",
            "input": {"height": SIZE, "width": SIZE, "channels": 3}, "preprocessing": PREPROCESSING}
    model = tmp_path / "alone.tflite"
    model.write_bytes(embed(blobs["softmax"], info))
    result = runner.invoke(edge_app, ["classify", str(model), str(photos)])
    assert result.exit_code == 0 and "no manifest.json beside it records" in result.stderr
    assert "validation" in error_line(runner.invoke(edge_app, ["classify", str(model), str(photos),
                                                               "--strict"]))


# -- install.sh -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    run = fake_run(root / "run")
    return unpack(write_bundle(run, "int8", root / "dist"), root / "unpacked")


@pytest.fixture
def pi(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "pi" / bundle_dir.name))


def install(folder: Path, *args: str, uname: str = "x86_64", **env: str) -> subprocess.CompletedProcess:
    fake = folder.parent / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "uname").write_text(f"#!/bin/sh\necho {uname}\n")
    (fake / "uname").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env = {**base, "PATH": f"{fake}:{base['PATH']}", "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PYTHON": sys._base_executable, **env}
    return subprocess.run(["./install.sh", *args], cwd=folder, capture_output=True, text=True,
                          timeout=600, env=env)


def one_install_error(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: install.sh: "), done
    return lines[0]


def test_service_unit_runs_strict(pi):
    done = install(pi, "--print-service", "camera model/int8.tflite --picamera")
    assert done.returncode == 0, done.stderr
    assert f'ExecStart="{pi}/noodle-edge" camera model/int8.tflite --picamera --strict' in done.stdout


@pytest.mark.parametrize("args", ["camera model/int8.tflite\n--picamera", "camera\tmodel/int8.tflite",
                                  "camera model/int8.tflite\r"])
def test_service_arguments_with_a_newline_are_one_error_line(pi, args):
    for option in ("--print-service", "--service"):
        error = one_install_error(install(pi, option, args))
        assert "control character" in error and "on one line" in error


def test_a_deleted_hash_line_says_the_bundle_was_altered(pi):
    from export.wheelhouse import Target, Wheel, pinned_requirements

    (pi / "wheels").mkdir()
    wheel = pi / "wheels" / "numpy-1.26.4-py3-none-any.whl"
    wheel.write_bytes(b"numpy 1.26.4")
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    pins = pinned_requirements({target: [Wheel.read(wheel)]})
    (pi / "requirements-pi.txt").write_text(pins.replace(" \\\n    --hash=sha256:", "\n# ").rstrip() + "\n")
    error = one_install_error(install(pi, uname="aarch64"))
    assert "no --hash=sha256 line" in error and "the bundle was altered" in error
    assert sorted(p.name for p in pi.glob(".venv*")) == []
