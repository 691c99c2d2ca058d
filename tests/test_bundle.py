"""`noodle bundle` and the bundle's install.sh, on this machine.

`make pi-check` installs the bundle offline on Raspberry Pi OS Bookworm and
Trixie arm64 under qemu. These tests check what can be checked here: the
tarball's contents and pinned wheelhouse, and install.sh itself on x86 with a
wheelhouse repacked from the device environment (.venv-edge) and a `uname`
that says aarch64, so it takes the same offline, pinned path as on a Pi.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from edge.cli import app as edge_app
from edge.integrity import SUMS
from export import bundle
from export.bundle import BundleError, write_bundle
from export.wheelhouse import Target, Wheel, pinned_requirements
from tests.device_env import device_env

ROOT = Path(__file__).resolve().parent.parent
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"
SERVICE = "camera model/int8.tflite --picamera --json"


@pytest.fixture(scope="module")
def shippable_run(exported_run) -> Path:
    """The exported run as `noodle export` leaves it: validated, which `noodle bundle` insists on."""
    from export.convert import record_validation
    from export.validate import validate_export

    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    if not (manifest.get("validation") or {}).get("passed"):
        record_validation(exported_run, validate_export(exported_run))
    return exported_run


@pytest.fixture(scope="module")
def tarball(shippable_run, tmp_path_factory) -> Path:
    return write_bundle(shippable_run, "int8", tmp_path_factory.mktemp("dist"))


def unpack(tarball: Path, into: Path) -> Path:
    """The bundle's own unpacker: links, absolute paths and `..` are refused (tests/test_hostile.py)."""
    return bundle.unpack(tarball, into)


@pytest.fixture(scope="module")
def unpacked(tarball, tmp_path_factory) -> Path:
    return unpack(tarball, tmp_path_factory.mktemp("unpacked"))


def test_contents(tarball, shippable_run):
    top = f"noodle-edge-{shippable_run.name}-int8-online"  # without wheels: not the offline one's name
    assert tarball == bundle.bundle_path(shippable_run, "int8", tarball.parent, wheels=False)
    assert tarball.name == f"{top}.tar.gz"
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile(f"{top}/model/manifest.json"))
        version = tar.extractfile(f"{top}/edge/VERSION").read().decode().strip()
    edge_sources = sorted(p.name for p in (ROOT / "edge").glob("*.py"))
    # Beside the sources, noodle's version, which the Pi has no package metadata for.
    assert sorted(n.split("/")[-1] for n in members if n.startswith(f"{top}/edge/")) == sorted(
        [*edge_sources, "VERSION"])
    assert version == bundle.version()
    for name in ("model/int8.tflite", "requirements-pi.in", "requirements-camera.in", "install.sh",
                 "noodle-edge", "noodle-edge.service", "README-PI.md", "requirements-pi.txt",
                 "requirements-camera.txt", "SHA256SUMS"):
        assert f"{top}/{name}" in members
    # Without wheels: no wheelhouse, but the pins all the same; the Pi fetches those files from the index.
    assert not any("/wheels/" in n for n in members)
    assert members[f"{top}/install.sh"].mode & 0o111 and members[f"{top}/noodle-edge"].mode & 0o111
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in members)
    # Only the shipped model is listed, with the sha256 the export wrote.
    exported = json.loads((shippable_run / "export" / "manifest.json").read_text())
    assert manifest["models"] == {"int8": exported["models"]["int8"]}
    assert manifest["labels"] == exported["labels"] and "failed" not in manifest
    assert list(tarball.parent.iterdir()) == [tarball]  # no temporary file left beside it


def test_device_sources_refuse_host_only_imports(tmp_path, monkeypatch):
    (tmp_path / "cli.py").write_text("import numpy\n")
    (tmp_path / "check.py").write_text("def f():\n    from export.convert import export_run\n")
    monkeypatch.setattr(bundle, "EDGE", tmp_path)
    with pytest.raises(BundleError, match=r"check.py: imports export.convert, which the device does not"):
        bundle.device_sources()
    (tmp_path / "check.py").unlink()
    assert list(bundle.device_sources()) == ["edge/cli.py"]


def test_requirements_in_use_markers_for_bookworm_and_newer(unpacked):
    lines = [line for line in (unpacked / "requirements-pi.in").read_text().splitlines()
             if line and not line.startswith("#")]
    assert 'tflite-runtime==2.14.0; python_version < "3.12"' in lines
    assert any(line.startswith("numpy") and "<2" in line and 'python_version < "3.12"' in line
               for line in lines)
    assert any(line.startswith("ai-edge-litert") and 'python_version >= "3.12"' in line for line in lines)
    assert any(line.startswith("pillow") for line in lines)
    assert any(line.startswith("paho-mqtt") for line in lines)  # serve --mqtt, offline on the Pi
    assert not any(word in " ".join(lines) for word in ("tensorflow", "keras", "opencv", "extra =="))


def fake_wheel(dest: Path, name: str, version: str) -> Path:
    path = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    path.write_bytes(f"{name} {version}".encode())  # contents matter only for their sha256
    return path


def test_wheelhouse_pins_each_release_and_is_cached(shippable_run, tmp_path):
    asked, made, camera_asked = {}, {}, {}

    def download(specs, target, dest):
        names = {spec.split("=")[0].split("<")[0].split(">")[0] for spec in specs}
        wheels = [fake_wheel(dest, name, "2.14.0" if name == "tflite-runtime" else f"1.{target.python}")
                  for name in sorted(names)]
        if "opencv-python-headless" in names:  # install.sh --camera's, resolved beside the runner's pins
            camera_asked[target.release] = specs
        else:
            asked[target.release], made[target] = specs, wheels

    cache = tmp_path / "cache"
    path = write_bundle(shippable_run, "int8", tmp_path / "dist", wheels=True, wheel_cache=cache,
                        download=download)
    # Each release gets its own runtime: markers evaluated for its Python.
    assert "tflite-runtime==2.14.0" in asked["bookworm"]
    assert any(s.startswith("numpy<2") for s in asked["bookworm"])
    assert not any("litert" in s for s in asked["bookworm"])
    assert any(s.startswith("ai-edge-litert") for s in asked["trixie"])
    assert not any("tflite" in s for s in asked["trixie"])
    # OpenCV for install.sh --camera: resolved against each release's runner wheels as pinned.
    for target in made:
        pins = {f"{w.name.split('-')[0].replace('_', '-')}=={w.name.split('-')[1]}" for w in made[target]}
        assert set(camera_asked[target.release]) == {"opencv-python-headless>=4.9"} | pins
    top = path.name.removesuffix(".tar.gz")
    with tarfile.open(path) as tar:
        wheels = {Path(m.name).name: tar.extractfile(m).read()
                  for m in tar.getmembers() if "/wheels/" in m.name}
        pins = tar.extractfile(f"{top}/requirements-pi.txt").read().decode()
        camera = tar.extractfile(f"{top}/requirements-camera.txt").read().decode()
        camera_in = tar.extractfile(f"{top}/requirements-camera.in").read().decode()
    opencv = {t: f"opencv_python_headless-1.{t.python}-py3-none-any.whl" for t in made}
    runner = [w.name for group in made.values() for w in group]
    assert sorted(wheels) == sorted(runner + list(opencv.values()))
    for target, files in made.items():
        for wheel in files:
            dist, version = wheel.name.split("-")[:2]
            assert (f'{dist.replace("_", "-")}=={version}; python_version == "{target.python}" \\\n'
                    f"    --hash=sha256:{hashlib.sha256(wheels[wheel.name]).hexdigest()}") in pins
        assert (f'opencv-python-headless==1.{target.python}; python_version == "{target.python}" \\\n'
                f"    --hash=sha256:{hashlib.sha256(wheels[opencv[target]]).hexdigest()}") in camera
    assert "opencv" not in pins and camera.count("--hash=sha256:") == len(made)
    assert camera_in.splitlines()[1:] == ["opencv-python-headless>=4.9"]
    # A second bundle reuses the cache without asking pip; a lost file is fetched again.
    asked.clear(), camera_asked.clear()
    write_bundle(shippable_run, "int8", tmp_path / "dist", wheels=True, wheel_cache=cache, download=download)
    assert asked == {} and camera_asked == {}
    next(cache.glob("tflite_runtime-*.whl")).unlink()
    write_bundle(shippable_run, "int8", tmp_path / "dist", wheels=True, wheel_cache=cache, download=download)
    assert list(asked) == ["bookworm"] and camera_asked == {}  # the wheel is back, so OpenCV's lock holds


def test_a_bundle_without_wheels_leaves_the_offline_one(shippable_run, tmp_path):
    """Was: `make bundle WHEELS=0` overwrote the offline bundle, which had the same name."""
    def download(specs, target, dest):
        for spec in specs:
            fake_wheel(dest, spec.split("=")[0].split("<")[0].split(">")[0], "1.0")

    dist = tmp_path / "dist"
    offline = write_bundle(shippable_run, "int8", dist, wheels=True, wheel_cache=tmp_path / "cache",
                           download=download)
    before = offline.read_bytes()
    online = write_bundle(shippable_run, "int8", dist)
    assert offline == bundle.bundle_path(shippable_run, "int8", dist)
    assert online.name == offline.name.replace("-int8.tar.gz", "-int8-online.tar.gz")
    assert sorted(dist.iterdir()) == sorted([offline, online]) and offline.read_bytes() == before
    with tarfile.open(online) as tar:
        assert {PurePosixPath(m.name).parts[0] for m in tar.getmembers()} == {online.name[:-len(".tar.gz")]}


def test_readme_has_the_commands_and_says_32_bit_is_unsupported(unpacked, tarball):
    readme = (unpacked / "README-PI.md").read_text()
    assert "32-bit Raspberry Pi OS is unsupported" in " ".join(readme.split())
    for command in (f"tar xzf {tarball.name}", "./install.sh", "./noodle-edge classify model/int8.tflite",
                    f"./install.sh --service '{SERVICE}'", "journalctl -u noodle-edge -f",
                    "./install.sh --remove-service", "./install.sh --camera",
                    "./noodle-edge camera model/int8.tflite --source clip.mp4"):
        assert command in readme
    # Without wheels/ OpenCV comes from the index, pinned as resolved with the runner's numpy.
    assert ("adds opencv-python-headless 1.0 on Bookworm, opencv-python-headless 1.0 on Trixie, from the "
            "package index") in " ".join(readme.split())
    assert "@" not in readme.replace("<user>@raspberrypi", "")  # every placeholder filled
    # Raspberry Pi OS has had no default `pi` user since 2022, and a fresh Pi has no photos: the first
    # classify reads the photos the same scp copied.
    assert "pi@" not in readme and "~/photos" not in readme
    assert "some-photos/ <user>@raspberrypi.local:" in " ".join(readme.split())
    assert "classify model/int8.tflite ~/some-photos" in readme


# install.sh on this machine. Each test installs into its own copy of the bundle.

def fake_tools(bin_dir: Path, **tools: str) -> Path:
    """Executables that print what a Pi would, or log how they were called."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def install(bundle_dir: Path, *args: str, tools: dict[str, str] | None = None, shell: str | None = None,
            **env: str):
    """Run install.sh with no package index reachable and no pip configuration of this machine.

    `shell`: run it by that shell instead of its #!/bin/sh (this machine's /bin/sh).
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    fake = fake_tools(bundle_dir.parent / "bin", **(tools or {}))
    env = {**base, "PATH": f"{fake}:{base['PATH']}", "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PYTHON": sys._base_executable, **env}
    return subprocess.run([*([shell] if shell else []), "./install.sh", *args], cwd=bundle_dir,
                          capture_output=True, text=True, timeout=600, env=env)


AARCH64 = {"uname": "echo aarch64"}


def one_error(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: install.sh: ")
    return lines[0]


def venvs(bundle_dir: Path) -> list[str]:
    return sorted(p.name for p in bundle_dir.glob(".venv*"))


@pytest.fixture
def copy(unpacked, tmp_path) -> Path:
    dest = tmp_path / "pi" / unpacked.name
    shutil.copytree(unpacked, dest)
    return dest


def test_runner_before_install_says_so(copy):
    done = subprocess.run(["./noodle-edge", "classify", "model/int8.tflite", "x.jpg"], cwd=copy,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {copy}/.venv: not installed; run {copy}/install.sh first"


def test_install_fails_in_words_under_a_shell_with_pipefail(copy):
    """Was: Trixie's /bin/sh (dash 0.5.12) has pipefail, which install.sh sets: hashing the requirements
    with a `cat` of the .txt pins a bundle without wheels/ lacks ended it, exit 1, without a word."""
    bash = shutil.which("bash")
    probe = subprocess.run([bash, "-c", "set -o pipefail"], capture_output=True)
    assert probe.returncode == 0  # the shell sets pipefail, as Trixie's sh does
    assert not (copy / "wheels").exists()  # the bundle this test installs has no wheels/
    error = one_error(install(copy, tools=AARCH64, shell=bash))
    assert "the package index has no" in error and "or cannot be reached; check the network" in error
    assert venvs(copy) == []
    printed = install(copy, "--print-service", SERVICE, shell=bash)
    assert printed.returncode == 0 and "ExecStart=" in printed.stdout, printed.stderr


def test_install_refuses_32_bit_arm(copy):
    error = one_error(install(copy, tools={"uname": "echo armv7l"}))
    assert "32-bit ARM" in error and "install 64-bit Raspberry Pi OS" in error
    # A Pi 4 running 32-bit Raspberry Pi OS: a 64-bit kernel, 32-bit programs.
    error = one_error(install(copy, tools={"uname": "echo aarch64", "getconf": "echo 32"}))
    assert "32-bit ARM" in error
    assert venvs(copy) == []


def test_install_refuses_a_python_without_venv(copy, tmp_path):
    # As on Raspberry Pi OS without python3-venv: no ensurepip to import.
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ensurepip')\n")
    python = fake_tools(tmp_path / "pybin",
                        python3=f'PYTHONPATH={shadow.parent} exec {sys._base_executable} "$@"')
    error = one_error(install(copy, PYTHON=str(python / "python3")))
    assert "cannot make a virtual environment" in error and "sudo apt install python3-venv" in error
    assert venvs(copy) == []


def test_install_refuses_a_full_disk_before_starting(copy):
    error = one_error(install(copy, tools=AARCH64, NOODLE_NEED_MB=str(2**40)))
    assert "no space left" in error and "MB free in" in error
    assert venvs(copy) == []


def test_install_refuses_wheels_for_another_machine(copy, tmp_path):
    # An offline bundle has aarch64 wheels only: on x86 it says so and how to go on.
    (copy / "wheels").mkdir()
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    wheel = Wheel.read(fake_wheel(copy / "wheels", "numpy", "1.26.4"))
    (copy / "requirements-pi.txt").write_text(pinned_requirements({target: [wheel]}))
    resign(copy)
    error = one_error(install(copy, tools={"uname": "echo x86_64"}))
    assert f"not for Python {target.python} on x86_64" in error and "./install.sh --index" in error
    assert venvs(copy) == []


def test_install_camera_needs_the_bundles_opencv_wheels(copy):
    # An offline bundle pinned for this Python, but with no OpenCV (made before --camera, or altered).
    (copy / "wheels").mkdir()
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    wheel = Wheel.read(fake_wheel(copy / "wheels", "numpy", "1.26.4"))
    (copy / "requirements-pi.txt").write_text(pinned_requirements({target: [wheel]}))
    (copy / "requirements-camera.txt").write_text(pinned_requirements({target: []}))
    resign(copy)
    error = one_error(install(copy, "--camera", tools=AARCH64))
    assert f"--camera: this bundle's wheels/ holds no OpenCV for Python {target.python}" in error
    assert "./install.sh --camera --index" in error and venvs(copy) == []


@pytest.fixture(scope="module")
def device_wheels(tmp_path_factory) -> Path:
    """The device environment's packages (its runtime, numpy, Pillow, typer...) as wheels again.

    tflite-runtime 2.14 and numpy < 2 where a python3.11 made it, as on Bookworm; ai-edge-litert
    and numpy 2 on a 3.12+ host, as on Trixie (tests.device_env).
    """
    out = tmp_path_factory.mktemp("device-wheels")
    subprocess.run([str(device_env().python), "-c", REPACK, str(out)], check=True, timeout=300)
    return out


# A wheel per installed distribution (PEP 427): its files below site-packages
# and a fresh RECORD. Scripts and bytecode stay out; pip makes them again.
REPACK = """
import base64, hashlib, importlib.metadata as md, re, sys, zipfile
from pathlib import Path
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    if name in ("noodle_kit", "pip", "setuptools", "wheel"):
        continue
    tags = [l.split(":", 1)[1].strip() for l in dist.read_text("WHEEL").splitlines() if l.startswith("Tag:")]
    files = [f for f in dist.files if not str(f).startswith("..") and "__pycache__" not in f.parts]
    # The compressed tag set (PEP 425), such as py2.py3-none-any
    tag = "-".join(".".join(dict.fromkeys(t.split("-")[i] for t in tags)) for i in range(3))
    record = []
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    with zipfile.ZipFile(Path(sys.argv[1]) / f"{name}-{dist.version}-{tag}.whl", "w") as whl:
        for f in files:
            if f.parts[0] == info and f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = f.locate().read_bytes()
            whl.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        whl.writestr(f"{info}/RECORD", "\\n".join(record + [f"{info}/RECORD,,"]) + "\\n")
"""


def with_wheelhouse(bundle_dir: Path, wheels: Path, ship: bool = True) -> None:
    """Make BUNDLE_DIR a bundle for this machine's Python, pinned and listed as `noodle bundle` does it.

    SHIP: with the wheels in wheels/ (offline); else only their pins (an online bundle).
    """
    files = [Wheel.read(path) for path in sorted(wheels.glob("*.whl"))]
    if ship:
        shutil.copytree(wheels, bundle_dir / "wheels")
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    (bundle_dir / "requirements-pi.txt").write_text(pinned_requirements({target: files}))
    (bundle_dir / "requirements-camera.txt").write_text(pinned_requirements({target: []}))
    resign(bundle_dir)


def resign(bundle_dir: Path) -> None:
    """SHA256SUMS rewritten for the files BUNDLE_DIR has now, as `noodle bundle` writes it.

    For a test that stands in for another bundle `noodle bundle` could make
    (this machine's wheels, a changed requirement): not an altered one.
    """
    files = {path.relative_to(bundle_dir).as_posix(): path for path in sorted(bundle_dir.rglob("*"))
             if path.is_file() and not path.is_symlink() and path.name != SUMS
             and not path.relative_to(bundle_dir).parts[0].startswith(".")
             and "__pycache__" not in path.parts}
    (bundle_dir / SUMS).write_bytes(bundle.checksum_list(files))


@pytest.mark.slow
def test_install_offline_twice_and_again_when_changed(copy, device_wheels, sample_data):
    with_wheelhouse(copy, device_wheels)
    first = install(copy, tools=AARCH64)
    assert first.returncode == 0, first.stderr
    env = device_env()
    assert "installed .venv: Python" in first.stdout and f"{env.runtime} {env.version}" in first.stdout
    assert "from wheels/ (offline)" in first.stdout
    listed = hashlib.sha256((copy / SUMS).read_bytes()).hexdigest()
    assert first.stdout.splitlines()[0] == (f"checked: every file matches {SUMS} (its sha256 {listed}, which "
                                            "`noodle bundle` printed)")
    target = os.readlink(copy / ".venv")
    assert (copy / ".venv").is_symlink() and venvs(copy) == [".venv", target]
    # The installed runner works, with the same labels as the device environment's.
    photos = str(sample_data / "test")
    ran = subprocess.run(["./noodle-edge", "classify", "model/int8.tflite", photos, "--json"], cwd=copy,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    here = CliRunner().invoke(edge_app, ["classify", str(copy / "model/int8.tflite"), photos, "--json"])
    assert ([json.loads(line)["label"] for line in ran.stdout.splitlines()]
            == [json.loads(line)["label"] for line in here.stdout.splitlines()])

    again = install(copy, tools=AARCH64)
    assert again.returncode == 0 and again.stdout.splitlines()[1].startswith("up to date: .venv has Python")
    assert os.readlink(copy / ".venv") == target

    # Changed requirements: a new environment is built beside the old one and switched in.
    with (copy / "requirements-pi.in").open("a") as f:
        f.write("# changed\n")
    resign(copy)  # another bundle, as `noodle bundle` would make it
    third = install(copy, tools=AARCH64)
    assert third.returncode == 0 and "installed .venv" in third.stdout, third.stderr
    assert os.readlink(copy / ".venv") != target and venvs(copy) == [".venv", os.readlink(copy / ".venv")]


def stand_in_opencv(dest: Path) -> Path:
    """A wheel named as Bookworm's OpenCV, holding a cv2 that says its version, needing numpy."""
    import base64

    info = "opencv_python_headless-4.11.0.86.dist-info"
    members = {"cv2/__init__.py": '__version__ = "4.11.0"\n',
               f"{info}/METADATA": "Metadata-Version: 2.1\nName: opencv-python-headless\nVersion: 4.11.0.86\n"
                                   "Requires-Dist: numpy>=1.21.2\n",
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                "Tag: py3-none-any\n"}
    path = dest / "opencv_python_headless-4.11.0.86-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        record = []
        for name, text in members.items():
            whl.writestr(name, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(text.encode())}")
        whl.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


@pytest.mark.slow
def test_install_camera_adds_opencv_offline_and_keeps_it(copy, device_wheels):
    """Was: README-PI said `pip install opencv-python-headless`, which pulls numpy 2: tflite-runtime fails."""
    with_wheelhouse(copy, device_wheels)
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    opencv = Wheel.read(stand_in_opencv(copy / "wheels"))
    (copy / "requirements-camera.txt").write_text(pinned_requirements({target: [opencv]}))
    resign(copy)
    first = install(copy, "--camera", tools=AARCH64)
    assert first.returncode == 0, first.stderr
    described = first.stdout.splitlines()[1]
    env = device_env()
    assert (f"{env.runtime} {env.version}, numpy {env.numpy}, opencv-python-headless 4.11.0.86 from wheels/ "
            "(offline), with OpenCV") in described
    check = [str(copy / ".venv/bin/python"), "-c", f"import cv2, {env.module}; print(cv2.__version__)"]
    assert subprocess.run(check, capture_output=True, text=True).stdout == "4.11.0\n"
    # Installing again (as --service does) keeps OpenCV; --no-camera drops it.
    again = install(copy, tools=AARCH64)
    assert again.stdout.splitlines()[1].startswith("up to date: .venv has")
    assert "opencv-python-headless" in again.stdout
    dropped = install(copy, "--no-camera", tools=AARCH64)
    assert dropped.returncode == 0 and "installed .venv" in dropped.stdout, dropped.stderr
    assert "opencv" not in dropped.stdout.lower() and not (copy / ".venv/.noodle-camera").exists()
    # A damaged OpenCV wheel is refused by its sha256, leaving .venv as it was.
    before = os.readlink(copy / ".venv")
    with zipfile.ZipFile(copy / "wheels" / opencv.path.name, "a") as whl:
        whl.writestr("cv2/extra.py", "")
    error = one_error(install(copy, "--camera", tools=AARCH64))
    assert f"wheels/{opencv.path.name}: differs from its sha256 in {SUMS}" in error
    assert os.readlink(copy / ".venv") == before
    resign(copy)  # and with the list rewritten to match, pip refuses it by its pinned sha256
    error = one_error(install(copy, "--camera", tools=AARCH64))
    assert "differs from its sha256 in requirements-pi.txt" in error and os.readlink(copy / ".venv") == before


@pytest.mark.slow
def test_install_missing_wheel_leaves_the_installed_venv(copy, device_wheels):
    with_wheelhouse(copy, device_wheels)
    assert install(copy, tools=AARCH64).returncode == 0
    before = os.readlink(copy / ".venv")
    env = device_env()
    runtime = next((copy / "wheels").glob(env.wheel_glob))
    runtime.unlink()
    error = one_error(install(copy, tools=AARCH64))  # the list names it first
    assert f"wheels/{runtime.name}: missing, though {SUMS} lists it" in error
    with (copy / "requirements-pi.in").open("a") as f:
        f.write("# changed, so the next install rebuilds\n")
    resign(copy)  # and with the list rewritten to match, pip names it
    error = one_error(install(copy, tools=AARCH64))
    assert f"wheels/ has no wheel of {env.runtime}=={env.version} for Python" in error and "aarch64" in error
    assert os.readlink(copy / ".venv") == before and venvs(copy) == [".venv", before]


@pytest.mark.slow
def test_install_out_of_space_midway_leaves_nothing(copy, tmp_path):
    """A real full disk: a 6 MB tmpfs in a private mount namespace, too small for the venv."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs privately")
    (copy / "wheels").mkdir()
    target = Target("bookworm", 12, f"{sys.version_info.major}.{sys.version_info.minor}", "", 36)
    (copy / "requirements-pi.txt").write_text(
        pinned_requirements({target: [Wheel.read(fake_wheel(copy / "wheels", "numpy", "1.26.4"))]}))
    resign(copy)
    small = tmp_path / "small"
    small.mkdir()
    fake = fake_tools(tmp_path / "bin", **AARCH64)
    script = (f"mount -t tmpfs -o size=6m tmpfs {small} && cp -r {copy} {small}/b && cd {small}/b && "
              f"./install.sh; echo rc=$?; ls -a")
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys._base_executable, "NOODLE_NEED_MB": "1",
           "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done
    assert "no space left on device while making the virtual environment" in lines[0]
    assert "rc=2" in done.stdout and ".venv" not in done.stdout.split("rc=2", 1)[1]


def test_service_unit_passes_systemd_analyze_verify(copy, systemd_analyze, tmp_path):
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    done = install(copy, "--print-service", SERVICE, SUDO_USER=user)
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    for line in (f"User={user}", f"WorkingDirectory={copy}",
                 f'ExecStart="{copy}/noodle-edge" {SERVICE} --strict', "Restart=on-failure",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    (tmp_path / "noodle-edge.service").write_text(unit)
    verify = subprocess.run([systemd_analyze, "verify", str(tmp_path / "noodle-edge.service")],
                            capture_output=True, text=True, timeout=120)
    said = verify.stdout + verify.stderr
    assert verify.returncode == 0 and not any(w in said for w in ("ignoring", "Failed", "Unknown")), said
    assert venvs(copy) == []  # printing installs nothing


def test_service_for_a_missing_model_is_refused(copy):
    error = one_error(install(copy, "--print-service", "camera model/nope.tflite --picamera"))
    assert "model/nope.tflite: no such model" in error and "model/int8.tflite" in error
    error = one_error(install(copy, "--service", "camera --picamera"))
    assert "names no .tflite model" in error
    assert venvs(copy) == []


def test_service_command_is_checked_the_same_before_and_after_install(copy):
    """Was: --print-service 'camra model/int8.tflite' accepted before .venv existed, refused after."""
    if not EDGE_PYTHON.is_file():
        pytest.skip("no .venv-edge; `make edge-env` makes it")
    bad = {"camra model/int8.tflite": "'camra' is not a noodle-edge command (it has bench camera capture "
                                      "classify",
           "camera model/int8.tflite --picamra": "'--picamra' is not an option of noodle-edge camera",
           "classify model/int8.tflite x.jpg -q": "'-q' is not an option of noodle-edge classify",
           "capture model/int8.tflite out/cat": "'capture' cannot run as the service, which adds --strict"}
    good = [SERVICE, "classify model/int8.tflite photos --top-k=2 -k2 -v --json -- --odd-name.jpg"]

    def said():
        for flag in ("--print-service", "--service"):
            for args, error in bad.items():
                line = one_error(install(copy, flag, args))
                assert f"{flag} '{args}': {error}" in line, line
        return [install(copy, "--print-service", args).stdout for args in good]

    before = said()
    assert venvs(copy) == []  # refused before any install
    # An installed .venv (the device environment's python stands in): the same answers.
    (copy / ".venv" / "bin").mkdir(parents=True)
    (copy / ".venv" / "bin" / "python").symlink_to(EDGE_PYTHON)
    assert said() == before and all(f"ExecStart=\"{copy}/noodle-edge\" {args} --strict" in unit
                                    for args, unit in zip(good, before, strict=True))
    # The list install.sh checks against is the runner's, written in by `noodle bundle`.
    script = (copy / "install.sh").read_text()
    assert f"COMMANDS='{bundle.runner_commands()}'\n" in script and "@COMMANDS@" not in script


@pytest.mark.slow
def test_service_install_and_remove(copy, device_wheels, tmp_path):
    with_wheelhouse(copy, device_wheels)
    calls = tmp_path / "systemctl.log"
    tools = {**AARCH64, "systemctl": f'echo "$*" >> {calls}'}
    units = tmp_path / "units"
    # Installed with sudo by a user (any that exists here): the service runs as that user.
    done = install(copy, "--service", SERVICE, tools=tools, NOODLE_UNIT_DIR=str(units), SUDO_USER="nobody")
    assert done.returncode == 0, done.stderr
    assert "journalctl -u noodle-edge -f" in done.stdout and (copy / ".venv").is_symlink()
    unit = (units / "noodle-edge.service").read_text()
    assert "User=nobody" in unit and f'ExecStart="{copy}/noodle-edge" {SERVICE} --strict' in unit
    assert calls.read_text().splitlines() == ["daemon-reload", "enable noodle-edge.service",
                                              "restart noodle-edge.service"]
    error = one_error(install(copy, "--service", "camrea model/int8.tflite", tools=tools,
                              NOODLE_UNIT_DIR=str(units)))
    assert "'camrea' is not a noodle-edge command" in error

    calls.unlink()
    removed = install(copy, "--remove-service", tools=tools, NOODLE_UNIT_DIR=str(units))
    assert removed.returncode == 0 and not (units / "noodle-edge.service").exists()
    assert calls.read_text().splitlines() == ["disable --now noodle-edge.service", "daemon-reload"]
    again = install(copy, "--remove-service", tools=tools, NOODLE_UNIT_DIR=str(units))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # A fresh machine's package lists may be empty: update once, then install.
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "systemd"]):
            subprocess.run(step, capture_output=True, timeout=600, env=env)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is missing and could not be installed "
                    "(`apt-get install systemd` needs root and apt)")
    return found


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


def test_missing_variant_and_failed_write(shippable_run, tmp_path, monkeypatch):
    with pytest.raises(BundleError, match="no nonesuch model.*exported: float32"):
        write_bundle(shippable_run, "nonesuch", tmp_path)

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "addfile", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(shippable_run, "int8", tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the tarball nor a temporary file


def test_bundle_command(shippable_run, tmp_path):
    from noodle import app

    result = CliRunner().invoke(app, ["bundle", str(shippable_run), "--model", "int8", "--out", str(tmp_path),
                                      "--no-wheels"])
    assert result.exit_code == 0, result.stderr
    # The first line says which run and which data, before any work.
    trained = json.loads((shippable_run / "manifest.json").read_text())
    assert result.stdout.splitlines()[0] == (f"bundling {shippable_run}: its int8 model, trained on "
                                             f"{trained['data']['root']} ({len(trained['labels'])} classes)")
    # The last line is the path, for scripts.
    online = bundle.bundle_path(shippable_run, "int8", tmp_path, wheels=False)
    assert Path(result.stdout.splitlines()[-1]) == online and online.is_file()
    bad = CliRunner().invoke(app, ["bundle", str(tmp_path), "--out", str(tmp_path), "--no-wheels"])
    assert bad.exit_code == 2 and "no manifest" in bad.stderr


@pytest.mark.parametrize("outcome", ["failed", "undecided"])
def test_an_export_the_gate_did_not_pass_ships_only_with_force(shippable_run, tmp_path, outcome):
    """One meaning of "passed" (export.gate): a gate that failed or was undecided leaves nothing to ship."""
    from export.gate import Decision, GateResult, Outcome, record_gate
    from noodle import app

    run = shutil.copytree(shippable_run, tmp_path / "run")
    result = GateResult(0.5, 110)
    result.decisions = [Decision("int8", Outcome(outcome), f"int8 {outcome}")]
    record_gate(run, result)
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is False and manifest["validation"]["gate"]["outcome"] == outcome
    args = ["bundle", str(run), "--model", "int8", "--out", str(tmp_path / "dist"), "--no-wheels"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and not (tmp_path / "dist").exists()
    assert "nothing ships from this export" in refused.stderr and "--force" in refused.stderr
    assert f"gate {'failed' if outcome == 'failed' else 'was undecided (too few photos)'} on 110 photos" \
        in refused.stderr
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and "--force: bundling an export that did not pass" in forced.output


def test_pi_check_refuses_what_it_cannot_check(shippable_run, tmp_path):
    from bench.pi_check import app as pi_check

    missing = CliRunner().invoke(pi_check, [str(shippable_run), str(tmp_path), "--dist", str(tmp_path)])
    assert missing.exit_code == 2 and "no such bundle; `make bundle` writes it" in missing.stderr
    # A bundle without wheels/ cannot prove the offline install.
    path = write_bundle(shippable_run, "int8", tmp_path)
    unknown = CliRunner().invoke(pi_check, [str(path), str(tmp_path), "--releases", "bookworm jessie"])
    assert unknown.exit_code == 2 and "use some of bookworm, trixie" in unknown.stderr
    offline = CliRunner().invoke(pi_check, [str(path), str(tmp_path), "--releases", "trixie"])
    assert offline.exit_code == 2 and "no wheels/ in the bundle" in offline.stderr


def test_pi_check_camera_reads_the_clip_frame_by_frame(copy, sample_data, tmp_path, monkeypatch):
    """pi-check's camera step, with this machine standing in for the emulated root."""
    pytest.importorskip("cv2")
    from bench import pi_check

    model = Path("model/int8.tflite")
    clip = pi_check.make_clip(sample_data / "test", tmp_path, copy, model)
    labels = json.loads((copy / "model" / "manifest.json").read_text())["labels"]
    assert clip.frames == pi_check.CLIP_FRAMES and set(clip.x86) <= set(labels)
    (copy / ".venv").symlink_to(sys.prefix)  # this environment has OpenCV, as --camera gives
    home = tmp_path / "home"
    home.mkdir()
    ran = []

    def here(root, binds, command, env):
        ran.append(command)
        local = command.replace("cd /bundle", f"cd {copy}").replace("--source /tmp/", f"--source {home}/")
        return subprocess.run(["sh", "-c", local], capture_output=True, text=True, timeout=300)

    monkeypatch.setattr(pi_check, "in_root", here)
    target = pi_check.RELEASES["bookworm"]
    assert pi_check.check_camera(target, tmp_path, {}, {}, model, clip, home)
    assert ran[0] == f"cd /bundle && ./noodle-edge camera {model} --source /tmp/clip.mp4 --every 1 --json"
    # A clip that gives fewer frames than x86 read is a failure.
    short = pi_check.Clip(clip.path, clip.frames + 1, [*clip.x86, clip.x86[0]])
    assert not pi_check.check_camera(target, tmp_path, {}, {}, model, short, home)


def test_pi_check_enrolment_skips_a_model_without_its_backbone(copy, sample_data, tmp_path, capsys):
    """allconv exports no embed.tflite: the enrolment step says so in one line and is skipped."""
    from bench import pi_check

    x86 = {"discs/disc.0.jpg": {"label": "discs"}}
    assert pi_check.plan_enrol(sample_data / "test", x86, copy, Path("model/int8.tflite"),
                               Path(sys.executable), tmp_path) is None
    said = [line for line in capsys.readouterr().out.splitlines() if "enrolment" in line]
    assert said == ["pi-check: enrolment skipped: model/ has no embed.tflite (only lite0's export writes "
                    "one, and teach needs its backbone)"]


def test_pi_check_enrolment_names_what_went_wrong():
    """An enrolment whose rollback kept the taught model, or whose /v1/model lacks a label, fails in words."""
    from bench.pi_check import enrol_problems

    teach = {"state": "done", "labels": ["a", "b"]}
    good = {"teach": teach, "taught": {"labels": ["a", "b"], "sha256": "new"}, "files": {"x.jpg": {}},
            "rollback": {"sha256": "old"}, "after": {"sha256": "old"}}
    assert enrol_problems(good, "old", ["a", "b"], 1) == []
    kept = {**good, "after": {"sha256": "new"}}
    assert enrol_problems(kept, "old", ["a", "b"], 1) == [
        "after /v1/model/rollback the sha256 is new, not the shipped old"]
    short = {**good, "taught": {"labels": ["a"], "sha256": "new"}}
    assert "not the taught labels" in enrol_problems(short, "old", ["a", "b"], 1)[0]
    failed = {**good, "teach": {"state": "failed", "error": "disk full"}}
    assert enrol_problems(failed, "old", ["a", "b"], 1) == ["/v1/teach ended failed: disk full"]


@pytest.mark.slow
def test_an_export_killed_during_validation_is_not_bundled(trained_run, tmp_path):
    """D9: files and a manifest exist, but validation never finished: bundle refuses, naming the fix."""
    import shutil
    import signal
    import subprocess
    import sys

    from noodle import app

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "manifest.json", "splits.csv"):  # export reads the photos from splits.csv
        shutil.copy2(trained_run / name, run / name)
    export = [sys.executable, "-m", "noodle", "export", str(run), "--variants", "float32,int8"]
    proc = subprocess.Popen(export, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("validating on"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["validation"] is None and set(manifest["models"]) == {"float32", "int8"}

    result = CliRunner().invoke(app, ["bundle", str(run), "--out", str(tmp_path / "dist"), "--no-wheels"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "validation never finished" in lines[0] and f"noodle export {run}" in lines[0]
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def make(tmp_path: Path, *args: str, export_rc: int = 0) -> subprocess.CompletedProcess:
    """The Makefile with a `noodle` that logs its arguments: venvs stand-ins, so nothing installs."""
    calls = tmp_path / "noodle.log"
    fake = tmp_path / "noodle"
    fake.write_text(f'#!/bin/sh\necho "$*" >>{calls}\ncase "$1 $*" in\n'
                    '  "train "*--print-run-dir*) echo "$4/$(basename "$2")-lite0-0123abcd" ;;\n'
                    '  "data "*) mkdir -p "$3" ;;\n'
                    f'  "export "*) exit {export_rc} ;;\nesac\n')
    fake.chmod(0o755)
    for venv in ("venv", "venv-edge"):
        (tmp_path / venv).mkdir(exist_ok=True)
        (tmp_path / venv / ".installed").touch()  # newer than pyproject.toml: no install
    # `python -m export.gate RUN`, which says whether the export may ship: passed once exported.
    (tmp_path / "venv" / "bin").mkdir(exist_ok=True)
    gate = tmp_path / "venv" / "bin" / "python"
    gate.write_text(f'#!/bin/sh\ngrep -qs "^export $3" {calls} || {{ echo "$3: unfinished"; exit 4; }}\n'
                    'echo "$3: passed: its validation passed"\n')
    gate.chmod(0o755)
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args, f"NOODLE={fake}", f"VENV={tmp_path}/venv",
                           f"EDGE_VENV={tmp_path}/venv-edge", f"OUT={tmp_path}/runs",
                           f"SAMPLE={tmp_path}/sample"], capture_output=True, text=True, timeout=120)


def noodle_calls(tmp_path: Path) -> list[str]:
    calls = tmp_path / "noodle.log"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return [line.replace(str(tmp_path), "T") for line in lines]


def test_make_bundle_ships_the_run_the_last_make_export_made(tmp_path):
    """Was: after `make export DATA=/my/photos`, a plain `make bundle` bundled the sample's run."""
    photos, other = tmp_path / "photos", tmp_path / "other"
    photos.mkdir(), other.mkdir()
    run = f"{tmp_path}/runs/photos-lite0-0123abcd"
    failed = make(tmp_path, "export", f"DATA={photos}", export_rc=2)  # bad input: nothing recorded
    assert failed.returncode != 0 and not (tmp_path / "runs" / "last-export").exists()
    noodle_calls(tmp_path)
    done = make(tmp_path, "export", f"DATA={photos}")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "last-export").read_text() == f"{run}\n{photos}\n"
    assert f"recorded in {tmp_path}/runs/last-export: `make bundle` ships {run}" in done.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["last-export"]  # no temporary file
    noodle_calls(tmp_path)

    # A plain `make bundle`: that run, said first, and nothing trained or exported.
    done = make(tmp_path, "bundle", "WHEELS=0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (f"make bundle: {run}, the run the last `make export` made, of "
                                           f"DATA={photos} (DATA=... or RUN=... bundles another)")
    shipped = "--model int8 --out dist --wheel-cache .cache/wheels --no-wheels"
    assert noodle_calls(tmp_path) == [f"bundle T/runs/photos-lite0-0123abcd {shipped}"]

    # Told otherwise: DATA names another run, which is trained and exported as before.
    done = make(tmp_path, "bundle", f"DATA={other}", "WHEELS=0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"make bundle: the run of DATA={other}, as `make export` names it"
    calls = noodle_calls(tmp_path)
    assert calls[-1] == f"bundle T/runs/other-lite0-0123abcd {shipped}"
    assert "export T/runs/other-lite0-0123abcd" in calls
    done = make(tmp_path, "bundle", f"RUN={tmp_path}/runs/mine", "WHEELS=0")
    assert done.stdout.splitlines()[0] == f"make bundle: RUN={tmp_path}/runs/mine"
    assert noodle_calls(tmp_path)[-1] == f"bundle T/runs/mine {shipped}"

    # Nothing recorded: the sample's run, and the line says so before training it.
    (tmp_path / "runs" / "last-export").unlink()
    done = make(tmp_path, "bundle", "WHEELS=0")
    assert done.stdout.splitlines()[0].startswith(
        f"make bundle: the run of DATA={tmp_path}/sample, the embedded sample: no `make export` is recorded "
        f"in {tmp_path}/runs/last-export"), done.stdout
    assert noodle_calls(tmp_path)[-1] == f"bundle T/runs/sample-lite0-0123abcd {shipped}"
