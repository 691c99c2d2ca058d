"""The bundle's integrity: SHA256SUMS, hashed online pins, honest errors.

Was: README-PI said "an altered bundle is refused", but the -online bundle
installed requirements-pi.in from the index (an appended `./evilpkg` ran its
setup.py), and an edited edge/runtime.py, install.sh or unit template went
unseen. Now `noodle bundle` ships SHA256SUMS, install.sh checks every file
against it before anything runs, the runner checks its own files at start, and
the online bundle installs by sha256 pins as the offline one does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bundle import AARCH64, REPACK, install, one_error, resign, venvs

from edge.integrity import SUMS, IntegrityError, read_sums, verify
from export import bundle, wheelhouse
from export.bundle import write_bundle
from export.wheelhouse import TARGETS, Target
from tests.device_env import device_env

ROOT = Path(__file__).resolve().parent.parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
ONE_BYTE = ("edge/runtime.py", "install.sh", "requirements-pi.in")


@pytest.fixture(scope="module")
def shippable(exported_run) -> Path:
    from export.convert import record_validation
    from export.validate import validate_export

    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    if not (manifest.get("validation") or {}).get("passed"):  # as tests/test_bundle.py's shippable_run
        record_validation(exported_run, validate_export(exported_run))
    return exported_run


@pytest.fixture(scope="module")
def made(shippable, tmp_path_factory) -> dict[str, Path]:
    """Both kinds of bundle as `noodle bundle` makes them (tests stand in for PyPI: tests/conftest.py)."""
    dist, out = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("unpacked")
    return {kind: bundle.unpack(write_bundle(shippable, "int8", dist, wheels=kind == "offline"), out / kind)
            for kind in ("offline", "online")}


@pytest.fixture
def fresh(made, tmp_path):
    def copy(kind: str) -> Path:
        return Path(shutil.copytree(made[kind], tmp_path / kind / made[kind].name))
    return copy


def change_one_byte(path: Path) -> None:
    """One byte of PATH's last comment (else its docstring) changed, so the file still runs as before."""
    data = path.read_bytes()
    at = (data.rindex(b"#") if b"#" in data else data.index(b'"""') + 2) + 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])


def logging_python(bin_dir: Path, calls: Path) -> str:
    """A python3 that logs each start, then runs this machine's: so a test sees whether anything ran."""
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python3"
    python.write_text(f'#!/bin/sh\necho "$*" >>{calls}\nexec {sys._base_executable} "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_bundle_lists_every_file_by_sha256_in_order(made):
    for kind, folder in made.items():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sums = read_sums(folder / SUMS)
        assert list(sums) == sorted(sums) == [f for f in files if f != SUMS], kind
        assert all(hashlib.sha256((folder / f).read_bytes()).hexdigest() == sums[f] for f in sums)
    assert any(name.startswith("wheels/") for name in read_sums(made["offline"] / SUMS))
    # sha256sum itself agrees, as install.sh runs it.
    done = subprocess.run(["sha256sum", "--check", "--strict", SUMS], cwd=made["online"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.count(": OK\n") == len(read_sums(made["online"] / SUMS))


def test_bundle_prints_the_lists_sha256_beside_the_tarballs(shippable, tmp_path):
    from typer.testing import CliRunner

    from noodle import app

    result = CliRunner().invoke(app, ["bundle", str(shippable), "--no-wheels", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.splitlines()[-1])
    folder = bundle.unpack(path, tmp_path / "unpacked")
    listed = hashlib.sha256((folder / SUMS).read_bytes()).hexdigest()
    assert f"sha256 {listed}  {folder.name}/{SUMS} (./install.sh prints it" in result.stdout


@pytest.mark.parametrize("kind", ["offline", "online"])
@pytest.mark.parametrize("name", ONE_BYTE)
def test_one_changed_byte_is_refused_before_anything_runs(fresh, tmp_path, kind, name):
    folder = fresh(kind)
    change_one_byte(folder / name)
    calls = tmp_path / "python.log"
    error = one_error(install(folder, tools=AARCH64, PYTHON=logging_python(tmp_path / "py", calls)))
    assert error.startswith(f"error: install.sh: {name}: differs from its sha256 in {SUMS}"), error
    assert "copy the bundle again from the tarball, checking its sha256" in error
    assert not calls.exists() and venvs(folder) == [] and not (folder / ".install.log").exists()


def test_a_change_at_the_top_of_install_sh_and_a_missing_or_broken_list_are_refused(fresh):
    folder = fresh("online")
    script = (folder / "install.sh").read_bytes()
    (folder / "install.sh").write_bytes(script.replace(b"# Install the noodle", b"# Install the Noodle", 1))
    assert "install.sh: differs from its sha256" in one_error(install(folder, tools=AARCH64))
    (folder / "install.sh").write_bytes(script)
    assert install(folder, "--print-service", "camera model/int8.tflite").returncode == 0
    # The list itself: a damaged line, or no list at all (as `rm SHA256SUMS` would make it).
    sums = (folder / SUMS).read_text()
    (folder / SUMS).write_text(sums.replace("  ", " ", 1))
    assert "a line is not '<sha256>  <file>'" in one_error(install(folder, tools=AARCH64))
    (folder / SUMS).unlink()
    error = one_error(install(folder, "--print-service", "camera model/int8.tflite"))
    assert f"{SUMS}: missing, so this bundle cannot be checked" in error
    # A listed file that is gone: named as missing.
    (folder / SUMS).write_text(sums)
    (folder / "noodle-edge.service").unlink()
    assert "noodle-edge.service: missing, though" in one_error(install(folder, tools=AARCH64))


def test_the_launcher_the_unit_template_and_the_model_are_covered(fresh):
    for name in ("noodle-edge", "noodle-edge.service", "README-PI.md", "model/int8.tflite"):
        folder = fresh("online")
        with (folder / name).open("ab") as f:
            f.write(b"\n")
        assert f"{name}: differs from its sha256" in one_error(install(folder, tools=AARCH64)), name
        shutil.rmtree(folder.parent)


def test_online_bundle_installs_by_hashes_and_an_appended_evilpkg_never_runs(fresh, tmp_path):
    """Was: the -online bundle installed requirements-pi.in, and an appended ./evilpkg ran its setup.py."""
    folder = fresh("online")
    ran = tmp_path / "evilpkg-ran"
    evil = folder / "evilpkg"
    evil.mkdir()
    (evil / "setup.py").write_text(f"open({str(ran)!r}, 'w').write('setup.py ran')\n"
                                   "from setuptools import setup\nsetup(name='evilpkg', version='1')\n")
    requirements = (folder / "requirements-pi.in").read_text()
    (folder / "requirements-pi.in").write_text(requirements + "./evilpkg\n")
    # Refused by the list, before pip or python starts.
    assert "requirements-pi.in: differs from its sha256" in one_error(install(folder, tools=AARCH64))
    # With the list rewritten too (only the tarball's sha256 shows that): install.sh installs
    # requirements-pi.txt's pins, never the .in, so the line is not even read.
    resign(folder)
    done = install(folder, tools=AARCH64, PIP_RETRIES="0", PIP_TIMEOUT="2")
    assert done.returncode == 2 and "the package index has no" in done.stderr  # none here: a closed one
    assert "evilpkg" not in (folder / ".install.log").read_text() and not ran.exists()
    # The same line in the pins: pip refuses a requirement it cannot check by sha256.
    (folder / "requirements-pi.in").write_text(requirements)
    with (folder / "requirements-pi.txt").open("a") as f:
        f.write("./evilpkg\n")
    resign(folder)
    error = one_error(install(folder, tools=AARCH64, PIP_RETRIES="0", PIP_TIMEOUT="2"))
    assert "requirements-pi.txt: a requirement is a local folder or file, not a wheel pinned" in error
    assert not ran.exists() and venvs(folder) == []


def test_online_bundle_for_a_python_it_does_not_pin_is_refused_unless_unpinned(fresh, tmp_path):
    folder = fresh("online")
    error = one_error(install(folder, tools={"uname": "echo x86_64"}))
    assert f"pins wheels for Python 3.11 3.13 on aarch64 only, not for Python {PYTHON} on x86_64" in error
    assert "./install.sh --unpinned" in error and venvs(folder) == []
    done = install(folder, "--unpinned", tools={"uname": "echo x86_64"}, PIP_RETRIES="0", PIP_TIMEOUT="2")
    assert done.returncode == 2 and "the package index has no numpy>=" in done.stderr  # the ranges


@pytest.fixture(scope="module")
def device_wheels(tmp_path_factory) -> Path:
    """The device environment's packages as wheels again (tests/test_bundle.py's REPACK)."""
    out = tmp_path_factory.mktemp("device-wheels")
    subprocess.run([str(device_env().python), "-c", REPACK, str(out)], check=True, timeout=300)
    return out


@pytest.mark.slow
def test_online_bundle_installs_its_pins_and_runs(shippable, device_wheels, sample_data, tmp_path):
    """An unaltered online bundle installs as before: the device environment's wheels stand in for PyPI."""
    if PYTHON not in {t.python for t in TARGETS}:
        pytest.skip(f"the bundle pins Python {' and '.join(t.python for t in TARGETS)}; this is {PYTHON}")

    def from_the_index(specs, target, dest):
        for wheel in device_wheels.glob("*.whl"):
            shutil.copy2(wheel, dest)

    path = write_bundle(shippable, "int8", tmp_path / "dist", wheel_cache=tmp_path / "cache",
                        download=from_the_index)
    folder = bundle.unpack(path, tmp_path / "pi")
    assert not (folder / "wheels").exists()
    done = install(folder, tools=AARCH64, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(device_wheels))
    assert done.returncode == 0, done.stderr
    assert "from the package index, pinned by sha256" in done.stdout.splitlines()[1]
    ran = classify(folder, sample_data / "test")
    assert ran.returncode == 0 and len(ran.stdout.splitlines()) == 40, ran.stderr


# The runner's own check at start, from an installed bundle.

@pytest.fixture
def installed(fresh):
    """An online bundle whose .venv is the device environment's (as pi-check's x86 step runs it)."""
    env = device_env()
    folder = fresh("online")
    (folder / ".venv").symlink_to(env.python.parent.parent)
    return folder


def classify(folder: Path, photos: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(["./noodle-edge", "classify", "model/int8.tflite", str(photos), "--json"],
                          cwd=folder, capture_output=True, text=True, timeout=300, env=env)


def test_runner_refuses_an_altered_file_at_start(installed, sample_data):
    photos = sample_data / "test"
    ran = classify(installed, photos)
    assert ran.returncode == 0 and len(ran.stdout.splitlines()) > 0, ran.stderr
    for name in ("edge/runtime.py", "edge/postprocess.py", "model/manifest.json"):
        original = (installed / name).read_bytes()
        if name.endswith(".py"):
            change_one_byte(installed / name)
        else:
            (installed / name).write_bytes(original + b" ")
        refused = classify(installed, photos)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and refused.stdout == "", refused.stderr
        assert lines[0].startswith(f"error: {installed}/{name}: differs from its sha256 in {SUMS}")
        (installed / name).write_bytes(original)
    assert classify(installed, photos).stdout == ran.stdout  # as before, once restored
    # Without the list nothing could be checked: the launcher refuses.
    (installed / SUMS).unlink()
    refused = classify(installed, photos)
    assert refused.returncode == 2 and f"{installed}/{SUMS}: missing" in refused.stderr


def test_runner_checks_what_it_runs_but_not_the_wheels(made, tmp_path):
    folder = Path(shutil.copytree(made["offline"], tmp_path / "b"))
    checked = verify(folder)
    listed = read_sums(folder / SUMS)
    assert checked == len([n for n in listed if not n.startswith("wheels/")]) and checked < len(listed)
    next((folder / "wheels").iterdir()).write_bytes(b"changed")  # install.sh's to check, and pip's
    assert verify(folder) == checked
    (folder / "edge" / "cli.py").write_text("print('hello')\n")
    with pytest.raises(IntegrityError, match=r"edge/cli\.py: differs from its sha256 in SHA256SUMS"):
        verify(folder)
    (folder / SUMS).write_text(f"{'0' * 64}  ../outside\n")
    with pytest.raises(IntegrityError, match="line 1 is not"):
        verify(folder)


def test_a_checkout_has_no_list_and_checks_nothing():
    from edge import integrity

    assert not (ROOT / SUMS).exists() and integrity.installed_root() is None


# Defect 13: a full disk while `noodle bundle` downloads the wheels.

def big_wheel(dest: Path, size: int) -> Path:
    """A real, pip-readable py3 wheel of SIZE bytes (random, so not compressible)."""
    import base64
    import zipfile

    info = "bigpkg-1.0.dist-info"
    members = {"bigpkg/__init__.py": b"", "bigpkg/blob.bin": os.urandom(size),
               f"{info}/METADATA": b"Metadata-Version: 2.1\nName: bigpkg\nVersion: 1.0\n",
               f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n"}
    path = dest / "bigpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        record = []
        for name, data in members.items():
            whl.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        whl.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


DOWNLOAD = """
import sys
from pathlib import Path
from export.wheelhouse import TARGETS, WheelhouseError, wheels_for
try:
    wheels_for(TARGETS[0], ["bigpkg"], Path(sys.argv[1]))
except WheelhouseError as exc:
    print(exc)
"""


def test_a_full_disk_during_the_wheel_download_says_so(tmp_path):
    """A real full disk: pip downloads a 3 MB wheel into a 1 MB tmpfs (a private mount)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs privately")
    links, small = tmp_path / "links", tmp_path / "small"
    links.mkdir(), small.mkdir()
    big_wheel(links, 3 << 20)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links), "PYTHONPATH": str(ROOT)}
    script = f"mount -t tmpfs -o size=1m tmpfs {small} && exec {sys.executable} -c '{DOWNLOAD}' {small}/cache"
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    said = done.stdout.strip()
    assert len(said.splitlines()) == 1, done
    assert f"{small}/cache/" in said and "no space left on device while pip download for bookworm" in said
    assert "MB free there" in said and "--wheel-cache" in said and "network" not in said


def test_an_unreachable_index_still_says_check_the_network(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DOWNLOAD, str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    said = done.stdout.strip()
    assert "check the network" in said and "no space" not in said, done


def test_download_failure_reads_pips_full_disk_messages(tmp_path):
    target: Target = TARGETS[1]
    for stderr in ("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
                   f"OSError: [Errno 28] No space left on device: '/x/a.whl' -> '{tmp_path}/a.whl'\n"):
        said = wheelhouse.download_failure(stderr, target, tmp_path / "dest")
        assert said.startswith(f"{tmp_path}/"), said
        assert "no space left on device while pip download for trixie" in said
