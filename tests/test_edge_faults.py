"""The device side under bad file names and file-system faults .

Each defect's test failed on the code before its fix (the escape_name tests
check the new helper itself). Names that are not UTF-8, permissions and symlink
loops are real files made in tmp_path; the permission test drops root's power
to ignore permissions (setpriv), so it denies as root too.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from edge import preprocess
from edge.atomic import write_json
from edge.cli import app
from edge.escape import escape_name, unescape_name
from edge.files import expand
from edge.manifest import load_export
from edge.preprocess import ImageError, load_image

ROOT = Path(__file__).resolve().parent.parent
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"
runner = CliRunner()
BAD = b"b\xff.jpg"  # not UTF-8: os.fsdecode gives "b\udcff.jpg"


@pytest.fixture(scope="module")
def model(exported_run) -> Path:
    return exported_run / "export" / "int8.tflite"


def photo(path: str | bytes | Path, colour=(200, 30, 30)) -> None:
    Image.new("RGB", (48, 40), colour).save(os.fsdecode(path) if isinstance(path, bytes) else path, "JPEG")


def edge_cli(*args, env: dict | None = None, prefix: tuple = (),
             python: str | Path = sys.executable) -> subprocess.CompletedProcess:
    """`python -m edge ...` in a fresh interpreter, bytes out (so nothing is decoded for us)."""
    return subprocess.run([*prefix, str(python), "-m", "edge", *map(str, args)], capture_output=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture(params=["ai-edge-litert", "tflite-runtime"])
def python(request) -> Path:
    """This venv's interpreter (ai-edge-litert) and the device venv's (tflite-runtime 2.14)."""
    if request.param == "ai-edge-litert":
        return Path(sys.executable)
    if not EDGE_PYTHON.is_file():
        pytest.skip("no .venv-edge; `make edge-env` makes it")
    return EDGE_PYTHON


# -- D1: file names that are not UTF-8 ----------------------------------------

# en_US.UTF-8 as Python runs under it when the locale is installed: strict UTF-8 on
# stdout, no UTF-8 mode. (Forced here, as a machine without that locale would fall
# back to C, where Python's UTF-8 mode escapes surrogates and hides the bug.)
LOCALES = {
    "en_US.UTF-8": {"LANG": "en_US.UTF-8", "LC_ALL": "", "PYTHONUTF8": "0",
                    "PYTHONIOENCODING": "utf-8:strict"},
    "C.UTF-8": {"LANG": "C.UTF-8", "LC_ALL": ""},
}


@pytest.fixture
def odd_names(tmp_path) -> Path:
    folder = tmp_path / "names"
    folder.mkdir()
    for name in (b"a.jpg", BAD, b"back\\slash.jpg", "café.jpg".encode(), b"z.jpg"):
        photo(os.fsencode(folder) + b"/" + name)
    (folder / "y-broken.jpg").write_bytes(b"\xff\xd8 not really")
    os.rename(folder / "y-broken.jpg", os.fsencode(folder) + b"/y\xfe-broken.jpg")
    return folder


@pytest.mark.parametrize("locale", LOCALES)
def test_names_that_are_not_utf8_print_in_every_format(model, odd_names, locale, python):
    env = LOCALES[locale]
    expected = sorted(os.listdir(os.fsencode(odd_names)))
    expected.remove(b"y\xfe-broken.jpg")
    expected = [os.fsencode(odd_names) + b"/" + n for n in expected]

    table = edge_cli("classify", model, odd_names, env=env, python=python)
    err = table.stderr.decode()
    assert table.returncode == 1 and "Traceback" not in err  # 1: the broken file, reported
    rows = table.stdout.decode().splitlines()[1:]
    assert [unescape_name(r.split("  ")[0]) for r in rows] == expected
    assert f"{escape_name(os.fsdecode(odd_names))}/b\\377.jpg " in table.stdout.decode()
    assert f"error: {escape_name(os.fsdecode(odd_names))}/y\\376-broken.jpg: " in err

    as_csv = edge_cli("classify", model, odd_names, "--csv", env=env, python=python)
    lines = list(csv.reader(io.StringIO(as_csv.stdout.decode())))[1:]
    assert [unescape_name(r[0]) for r in lines] == expected

    as_json = edge_cli("classify", model, odd_names, "--json", env=env, python=python)
    names = [json.loads(line)["file"] for line in as_json.stdout.decode().splitlines()]
    assert [os.fsencode(n) for n in names] == expected
    assert as_csv.returncode == as_json.returncode == 1


@pytest.mark.parametrize("name", [BAD, b"a\\b", b"tab\there\nnewline", b"\x01\x7f", "日本 é".encode(),
                                  b"\\377", b"trailing\\"])
def test_escape_name_round_trips_to_the_exact_bytes(name):
    for encoding in ("utf-8", "ascii"):
        shown = escape_name(os.fsdecode(name), encoding)
        shown.encode(encoding)  # printable in that encoding
        assert shown.isprintable() and unescape_name(shown) == name


def test_ordinary_names_are_shown_as_they_are():
    assert escape_name("photos/cat 1.jpg") == "photos/cat 1.jpg"
    assert escape_name("café.jpg", "utf-8") == "café.jpg"


# -- permissions, symlink loops -------------------------------------------------

def denied_as_root() -> tuple:
    """A command prefix under which permissions deny, also for root; skip when none."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores permissions and setpriv is not installed to drop that")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_permission_denied_is_said_for_a_photo_a_folder_and_the_model(model, tmp_path):
    prefix = denied_as_root()
    photo(tmp_path / "ok.jpg")
    photo(tmp_path / "locked.jpg")
    (tmp_path / "locked.jpg").chmod(0)
    (tmp_path / "shut").mkdir()
    photo(tmp_path / "shut" / "inside.jpg")
    (tmp_path / "shut").chmod(0)
    try:
        done = edge_cli("classify", model, tmp_path, prefix=prefix)
        err = done.stderr.decode()
        assert done.returncode == 1 and "Traceback" not in err
        assert f"error: {tmp_path / 'locked.jpg'}: permission denied" in err
        assert f"error: {tmp_path / 'shut'}: permission denied" in err
        assert "corrupt" not in err and done.stdout.decode().count("ok.jpg") == 1

        locked_model = tmp_path / "m" / model.name
        shutil.copytree(model.parent, locked_model.parent)
        locked_model.chmod(0)
        done = edge_cli("classify", locked_model, tmp_path / "ok.jpg", prefix=prefix)
        err = done.stderr.decode()
        assert done.returncode == 2 and err.startswith(f"error: {locked_model}: ")
        assert "ermission denied" in err and len(err.splitlines()) == 1
        assert "Invalid value" not in err and "╭" not in err  # not typer's boxed usage error
    finally:
        (tmp_path / "shut").chmod(0o755)


def test_a_permission_error_is_not_called_corrupt(tmp_path, monkeypatch):
    # The same fault without setpriv: whoever runs the tests, open() is refused.
    photo(tmp_path / "p.jpg")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(preprocess.Image, "open", refuse)
    with pytest.raises(ImageError, match="p.jpg: permission denied; make it readable"):
        load_image(tmp_path / "p.jpg", (32, 32))


def test_a_symlink_loop_is_called_one(tmp_path):
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    files, problems = expand([tmp_path / "loop.jpg", tmp_path / "gone.jpg"])
    assert files == []
    assert problems[0] == f"{tmp_path / 'loop.jpg'}: symlink loop; point the link at a real file"
    assert problems[1].startswith(f"{tmp_path / 'gone.jpg'}: broken symlink (to ")
    # Inside a folder it is listed by name, and decoding says what it is.
    with pytest.raises(ImageError, match="symlink loop"):
        load_image(tmp_path / "loop.jpg", (32, 32))


def test_model_input_mismatch_prints_plain_numbers(model, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(model.parent, copy)
    manifest = load_export(copy)
    manifest.input.height = manifest.input.width = 32
    write_json(copy / "manifest.json", manifest.to_dict())
    photo(tmp_path / "a.jpg")
    result = runner.invoke(app, ["classify", str(copy / model.name), str(tmp_path / "a.jpg")])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "np." not in result.stderr and "int32" not in result.stderr


# -- HEIC/HEIF photos -------------------------------------------------------------

@pytest.fixture
def heic_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(preprocess, "_heif_ready", None)
    photo(tmp_path / "a.jpg")
    for name in ("IMG_0001.HEIC", "IMG_0002.heif"):
        (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    return tmp_path


def test_heic_without_pillow_heif_is_named_once_with_the_fix(heic_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    files, problems = expand([heic_folder])
    assert files == [str(heic_folder / "a.jpg")] and problems == []
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [f"warning: {heic_folder}: skipped 2 HEIC/HEIF photo(s); pip install pillow-heif "
                        "to classify them too"]
    with pytest.raises(ImageError, match="pillow-heif is not installed; pip install pillow-heif"):
        load_image(heic_folder / "IMG_0001.HEIC", (32, 32))


def test_heic_with_pillow_heif_is_classified(heic_folder, monkeypatch, capsys):
    registered = []
    fake = types.SimpleNamespace(register_heif_opener=lambda: registered.append(True))
    monkeypatch.setitem(sys.modules, "pillow_heif", fake)
    files, problems = expand([heic_folder])
    assert [Path(f).name for f in files] == ["IMG_0001.HEIC", "IMG_0002.heif", "a.jpg"]
    assert problems == [] and registered == [True] and capsys.readouterr().err == ""
    expand([heic_folder])
    assert registered == [True]  # registered once per process


# -- D6: the benchmark's memory line -------------------------------------------

def test_bench_reports_peak_memory_and_the_decode_budget(model, tmp_path):
    for name in ("a.jpg", "b.png"):
        photo(tmp_path / name)
    as_json = runner.invoke(app, ["bench", str(model), str(tmp_path), "--repeat", "1", "--json"])
    assert as_json.exit_code == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert figures["decode_budget_mb"] == preprocess.DECODE_BUDGET_BYTES / 2**20
    assert 10 < figures["peak_rss_mb"] < 10_000
    table = runner.invoke(app, ["bench", str(model), str(tmp_path), "--repeat", "1"])
    assert "memory        peak RSS " in table.stdout and "MiB budget" in table.stdout
