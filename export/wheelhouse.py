"""The bundle's wheelhouse: the exact aarch64 wheels each Raspberry Pi OS release installs offline.

For each target release the runner's requirements are evaluated as that
release's Python on aarch64 would, `pip download` fetches wheels for its
platform only, and requirements-pi.txt pins every file by version and
sha256. On the Pi, install.sh installs exactly those files with
`--no-index --require-hashes`. Downloads stay in a cache folder with one lock
file per target and requirement set, so bundling again makes no network call.
The lock records each wheel's sha256 as it was downloaded (pip checks a
download against the hash the index publishes), and a cached wheel that no
longer has it is refused: the cache is never trusted blindly.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.atomic import write_bytes
from edge.errors import NoodleError
from edge.manifest import sha256_file

ARCH = "aarch64"  # 64-bit Raspberry Pi OS; the runtimes publish no 32-bit ARM wheels


@dataclass(frozen=True)
class Target:
    release: str  # the Debian codename Raspberry Pi OS is built on
    debian: int
    python: str  # the release's python3, major.minor
    python_full: str  # for requirement markers that name a patch release
    glibc: int  # glibc 2.<glibc>: the newest manylinux tag its wheels may carry


# Bookworm (Debian 12: Python 3.11, glibc 2.36) is still on many Pis; Trixie
# (Debian 13: Python 3.13, glibc 2.41) is Raspberry Pi OS since October 2025.
TARGETS = (Target("bookworm", 12, "3.11", "3.11.2", 36), Target("trixie", 13, "3.13", "3.13.5", 41))


class WheelhouseError(NoodleError):
    pass


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    sha256: str

    @classmethod
    def read(cls, path: Path) -> Wheel:
        # name-version[-build]-python-abi-platform.whl (PEP 427); names are already normalized with "_".
        name, version = path.name.split("-")[:2]
        return cls(path, name.lower().replace("_", "-"), version, sha256_file(path))


def platforms(target: Target) -> list[str]:
    # pip does not widen a manylinux_2_X tag to older ones: list every tag this glibc runs.
    newest_first = range(target.glibc, 16, -1)
    return [f"manylinux_2_{minor}_{ARCH}" for minor in newest_first] + [f"manylinux2014_{ARCH}"]


def target_environment(target: Target) -> dict[str, str]:
    """The marker variables of TARGET's Python on aarch64 Linux, for packaging's evaluate()."""
    return {"python_version": target.python, "python_full_version": target.python_full,
            "platform_machine": ARCH, "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def for_target(requirements: list[str], target: Target) -> list[str]:
    """The requirements whose markers hold for TARGET's Python on aarch64 Linux, markers dropped."""
    from packaging.requirements import Requirement

    env = target_environment(target)
    wanted = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            wanted.append(f"{req.name}{req.specifier}")
    return wanted


def pip_download(specs: list[str], target: Target, dest: Path) -> None:
    """Wheels for SPECS and their dependencies, for TARGET's Python and platform, into DEST."""
    tags = [arg for tag in platforms(target) for arg in ("--platform", tag)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--only-binary=:all:", *tags, "--python-version", target.python,
                           "--implementation", "cp", "--dest", str(dest), *specs],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise WheelhouseError(download_failure(done.stderr, target, dest))


# pip reports a full disk as an OSError (a traceback, or "Could not install packages due to an
# OSError"), naming the file it was writing last when it knows it.
NO_SPACE = re.compile(r"\[Errno 28\] No space left on device(.*)")


def download_failure(stderr: str, target: Target, dest: Path) -> str:
    """pip download's failure in one line: a full disk says where, anything else is the network's."""
    what = f"pip download for {target.release} (Python {target.python}, {ARCH})"
    full = NO_SPACE.search(stderr)
    if full:
        named = re.findall(r"'([^']+)'", full.group(1))
        where = Path(named[-1]) if named else dest
        return (f"{where}: no space left on device while {what} wrote the wheels ({free_mb(where)} MB free "
                "there); free some space (docs/device.md says how much the wheels take), or keep the wheel "
                "cache on a bigger disk (--wheel-cache, or WHEEL_CACHE=... for make)")
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")] or ["(no message)"]
    return (f"{what}: {errors[-1]}; check the network (the package index must be reachable until the "
            "wheels are in the cache)")


def free_mb(path: Path) -> int:
    """Free space, in MB, on the file system that holds PATH (or its nearest existing folder)."""
    for folder in (path, *path.parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize // 2**20
    return 0


def wheels_for(target: Target, requirements: list[str], cache: Path, download=pip_download) -> list[Wheel]:
    """TARGET's wheels, from CACHE when its lock for these requirements is complete, else downloaded."""
    specs = for_target(requirements, target)
    key = hashlib.sha256("\n".join(specs + platforms(target)).encode()).hexdigest()[:12]
    lock = cache / f"{target.release}-{key}.lock"
    recorded = _read_lock(lock)
    # A lock of an older noodle records no sha256: those wheels are downloaded again.
    if recorded and all(recorded.values()) and all((cache / name).is_file() for name in recorded):
        wheels = [Wheel.read(cache / name) for name in recorded]
        for wheel in wheels:
            expected = recorded[wheel.path.name]
            if wheel.sha256 != expected:
                raise WheelhouseError(
                    f"{wheel.path}: sha256 {wheel.sha256[:16]}... differs from {expected[:16]}... "
                    f"recorded in {lock} when it was downloaded; the cache was altered: delete that wheel "
                    "(or the whole cache) and bundle again to download it afresh")
        return wheels
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        download(specs, target, Path(tmp))
        downloaded = [Wheel.read(path) for path in sorted(Path(tmp).glob("*.whl"))]
        if not downloaded:
            raise WheelhouseError(f"pip download for {target.release} gave no wheels for {', '.join(specs)}")
        for wheel in downloaded:
            os.replace(wheel.path, cache / wheel.path.name)
    write_bytes(lock, "".join(f"{w.path.name} {w.sha256}\n" for w in downloaded).encode())
    return [Wheel(cache / w.path.name, w.name, w.version, w.sha256) for w in downloaded]


def _read_lock(lock: Path) -> dict[str, str | None]:
    """A lock file's wheels: file name -> the sha256 recorded at download (None in an old lock)."""
    try:
        lines = lock.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    return {fields[0]: fields[1] if len(fields) > 1 else None
            for fields in (line.split() for line in lines) if fields}


PINS_HEADER = ("# Written by `noodle bundle`: the wheels the Pi installs, by exact version and sha256, per",
               f"# Raspberry Pi OS release ({ARCH}). install.sh installs them with --require-hashes, from",
               "# wheels/ when the bundle has it, else from the package index; requirements-pi.in holds",
               "# the ranges they were resolved from.")


def pinned_requirements(groups: dict[Target, list[Wheel]], header: tuple[str, ...] = PINS_HEADER) -> str:
    """requirements-pi.txt: every wheel by exact version and sha256, one block per release."""
    lines = list(header)
    for target, wheels in groups.items():
        lines += ["", f"# {target.release.capitalize()} (Debian {target.debian}), Python {target.python}"]
        for wheel in sorted(wheels, key=lambda w: w.name):
            lines += [f'{wheel.name}=={wheel.version}; python_version == "{target.python}" \\',
                      f"    --hash=sha256:{wheel.sha256}"]
    return "\n".join(lines) + "\n"
