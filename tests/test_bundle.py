"""`noodle bundle`: the tarball's contents, its requirements, atomic writing, and running it unpacked.

`make pi-check` runs the bundle on Debian 12 arm64 under qemu; these tests
check what can be checked on this machine in seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app as edge_app
from export import bundle
from export.bundle import BundleError, write_bundle

ROOT = Path(__file__).resolve().parent.parent
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"


@pytest.fixture(scope="module")
def tarball(exported_run, tmp_path_factory) -> Path:
    return write_bundle(exported_run, "int8", tmp_path_factory.mktemp("dist"), log=lambda *_: None)


@pytest.fixture(scope="module")
def unpacked(tarball, tmp_path_factory) -> Path:
    into = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(tarball) as tar:
        tar.extractall(into)
    return into / f"noodle-edge-{bundle.version()}"


def test_contents(tarball, exported_run):
    top = f"noodle-edge-{bundle.version()}"
    assert tarball.name == f"{top}.tar.gz"
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile(f"{top}/model/manifest.json"))
    edge_sources = sorted(p.name for p in (ROOT / "edge").glob("*.py"))
    assert sorted(n.split("/")[-1] for n in members if n.startswith(f"{top}/edge/")) == edge_sources
    for name in ("model/int8.tflite", "requirements-pi.txt", "install.sh", "noodle-edge", "README-PI.md"):
        assert f"{top}/{name}" in members
    assert members[f"{top}/install.sh"].mode & 0o111 and members[f"{top}/noodle-edge"].mode & 0o111
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in members)
    # Only the shipped model is listed, with the sha256 the export wrote.
    exported = json.loads((exported_run / "export" / "manifest.json").read_text())
    assert manifest["models"] == {"int8": exported["models"]["int8"]}
    assert manifest["labels"] == exported["labels"] and "failed" not in manifest
    assert list(tarball.parent.iterdir()) == [tarball]  # no temporary file left beside it


def test_requirements_use_markers_for_bookworm_and_newer(unpacked):
    lines = [line for line in (unpacked / "requirements-pi.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert 'tflite-runtime==2.14.0; python_version < "3.12"' in lines
    assert any(line.startswith("numpy") and "<2" in line and 'python_version < "3.12"' in line
               for line in lines)
    assert any(line.startswith("ai-edge-litert") and 'python_version >= "3.12"' in line for line in lines)
    assert any(line.startswith("pillow") for line in lines)
    assert not any(word in " ".join(lines) for word in ("tensorflow", "keras", "extra =="))


def test_readme_has_the_three_commands_and_says_32_bit_is_unsupported(unpacked):
    readme = (unpacked / "README-PI.md").read_text()
    assert "32-bit Raspberry Pi OS is unsupported" in " ".join(readme.split())
    for command in (f"tar xzf noodle-edge-{bundle.version()}.tar.gz", "./install.sh",
                    "./noodle-edge classify model/int8.tflite"):
        assert command in readme
    assert "@" not in readme.replace("pi@raspberrypi", "")  # every placeholder filled


def test_install_refuses_32_bit_arm(unpacked, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text("#!/bin/sh\necho armv7l\n")
    (fake / "uname").chmod(0o755)
    done = subprocess.run(["sh", str(unpacked / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 2 and "32-bit ARM" in done.stderr and "64-bit Raspberry Pi OS" in done.stderr
    assert not (unpacked / ".venv").exists()


def test_unpacked_bundle_runs_in_the_device_venv(unpacked, sample_data):
    if not EDGE_PYTHON.is_file():
        pytest.skip("no .venv-edge; `make edge-env` makes it")
    photos = sample_data / "test"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(EDGE_PYTHON), "-m", "edge", "classify", "model/int8.tflite", str(photos),
                           "--json"], cwd=unpacked, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    shipped = [json.loads(line) for line in done.stdout.splitlines()]
    here = CliRunner().invoke(edge_app, ["classify", str(unpacked / "model/int8.tflite"), str(photos),
                                         "--json"])
    assert [r["label"] for r in shipped] == [json.loads(line)["label"] for line in here.stdout.splitlines()]
    assert len(shipped) == len(list(photos.rglob("*.jpg")))


def test_missing_variant_and_failed_write(exported_run, tmp_path, monkeypatch):
    with pytest.raises(BundleError, match="no nonesuch model.*exported: float32"):
        write_bundle(exported_run, "nonesuch", tmp_path, log=lambda *_: None)

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "addfile", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(exported_run, "int8", tmp_path, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []  # neither the tarball nor a temporary file


def test_bundle_command(exported_run, tmp_path):
    from noodle import app

    result = CliRunner().invoke(app, ["bundle", str(exported_run), "--model", "int8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / f"noodle-edge-{bundle.version()}.tar.gz").is_file()
    bad = CliRunner().invoke(app, ["bundle", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "no manifest" in bad.stderr
