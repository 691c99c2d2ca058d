"""export/pi/install.sh: the bundle's installer refuses what it cannot do safely, in one line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.bundle import unpack, write_bundle
from tests.hostile import (
    fake_run,
)


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
