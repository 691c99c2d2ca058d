"""The Makefile's choice of Python: which one makes .venv and .venv-edge, and what it says otherwise."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.test_bundle import make

ROOT = Path(__file__).resolve().parent.parent


def pythons(tmp_path: Path, **versions: str | None) -> dict[str, str]:
    """An environment whose PATH starts with stand-ins: python3.12="3.12" runs and says it, None fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python3", "python3.13", "python3.12", "python3.11", "python3.10"):
        version = versions.get(name.replace(".", "_"))
        body = f"echo {version}" if version else "exit 127"
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def dry_run(tmp_path: Path, target: str, env: dict[str, str]) -> str:
    done = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), target, f"VENV={tmp_path}/venv",
                           f"EDGE_VENV={tmp_path}/edge"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_first_python_tensorflow_has_wheels_for_makes_the_venv(tmp_path):
    # python3 is 3.14 (no TensorFlow wheels), python3.13 does not run: python3.12 is picked.
    env = pythons(tmp_path, python3="3.14", python3_12="3.12", python3_11="3.11")
    assert f"python3.12 -m venv {tmp_path}/venv\n" in dry_run(tmp_path, "setup", env)
    # The device environment prefers a python3.11, for tflite-runtime 2.14 (Bookworm's runtime).
    assert f"python3.11 -m venv {tmp_path}/edge\n" in dry_run(tmp_path, "edge-env", env)
    env = pythons(tmp_path, python3="3.14", python3_13="3.13")
    assert f"python3.13 -m venv {tmp_path}/venv\n" in dry_run(tmp_path, "setup", env)
    assert f"python3.13 -m venv {tmp_path}/edge\n" in dry_run(tmp_path, "edge-env", env)
    env = pythons(tmp_path, python3="3.11", python3_13="3.13")  # python3 first, when it can
    assert f"python3 -m venv {tmp_path}/venv\n" in dry_run(tmp_path, "setup", env)


def test_no_python_with_tensorflow_wheels_is_one_line_before_any_install(tmp_path):
    env = pythons(tmp_path, python3="3.14")
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "setup", f"VENV={tmp_path}/venv"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.splitlines()[0] == (
        "error: python3 is Python 3.14, and TensorFlow 2.21 has wheels for Python 3.10 3.11 3.12 3.13 only: "
        "install one of those (a python3.13 on PATH is picked), or make PYTHON=python3.12")
    assert not (tmp_path / "venv").exists()


def test_export_says_once_when_bookworms_runtime_was_not_checked(tmp_path):
    (tmp_path / "photos").mkdir()
    edge = tmp_path / "venv-edge" / "bin"
    edge.mkdir(parents=True)
    (edge / "python").write_text("#!/bin/sh\necho 3.13\n")
    (edge / "python").chmod(0o755)
    done = make(tmp_path, "export", f"DATA={tmp_path}/photos")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
    edge_venv = tmp_path / "venv-edge"
    assert notes == [f"note: Bookworm's runtime (tflite-runtime 2.14) was NOT checked: {edge_venv} is Python "
                     "3.13, which it has no wheels for; to check it, put a python3.11 on PATH and run rm -rf "
                     f"{edge_venv} && make export, or make pi-check (Bookworm under qemu)"]
    (edge / "python").write_text("#!/bin/sh\necho 3.11\n")
    assert "note:" not in make(tmp_path, "export", f"DATA={tmp_path}/photos").stdout


def test_make_help_prints_the_header_whole_and_each_target_it_names_exists():
    """Was: `make help` began mid-sentence, at the Makefile's second line."""
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    header = (ROOT / "Makefile").read_text().split("\n\n")[0].splitlines()
    assert done.returncode == 0 and lines == header and lines[0].startswith("# noodle:")
    named = {line.split()[2] for line in lines if line.startswith("#   make ")}
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "host-check" in named and named <= set(phony.split()[1:])


def test_make_passes_min_photos_and_force(tmp_path):
    """The small-class error says --min-photos: `make ... MIN_PHOTOS=N` passes it; FORCE=1 reaches bundle."""
    env = pythons(tmp_path, python3="3.11")
    args = ["train", "bundle", "MIN_PHOTOS=3", "FORCE=1", "DATA=photos", "RUN=runs/x",
            f"VENV={tmp_path}/venv", f"EDGE_VENV={tmp_path}/edge"]
    done = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert " ".join("train photos --min-photos 3 --runs runs".split()) in " ".join(done.stdout.split())
    bundle = next(line for line in done.stdout.splitlines() if "bundle runs/x --model int8" in line)
    assert "--force" in bundle.split()
    # An export left undecided or failed by its gate is not exported again without the gate (export.gate's 4).
    assert "-m export.gate runs/x" in done.stdout


def test_every_folder_of_package_data_is_a_listed_package():
    """setuptools printed a 45-line warning per install for export/pi reached as `pi/*` from export."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        assert package in setuptools["packages"] and not any("/" in p for p in patterns), package
        assert (ROOT / package.replace(".", "/")).is_dir()
