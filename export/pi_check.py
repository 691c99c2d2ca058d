"""`make pi-check`: run the bundle on the Pi's platform and compare its labels with x86's.

64-bit Raspberry Pi OS Bookworm is Debian 12 arm64 plus Raspberry Pi's
kernel and firmware; user space, Python 3.11 and glibc 2.36 included, is
Debian's. So:

1. root: `debootstrap --foreign --variant=minbase --include=python3.11` writes
   a Debian 12 arm64 root (cached under .cache/). Its first stage unpacks only
   the essential packages and leaves the included ones as .debs for a second
   stage that would need binfmt to run aarch64 code; we unpack those few
   ourselves with dpkg-deb, which is all the second stage would do for files.
2. packages: the bundle's requirements-pi.txt, markers evaluated for Python
   3.11 on aarch64, installed by this host's pip as aarch64 wheels
   (`--platform manylinux_2_34_aarch64 ... --only-binary=:all: --target`).
3. run: the root's own aarch64 python3.11 under `qemu-aarch64-static -L ROOT`
   (no binfmt registration) runs `python -m edge classify --json` from the
   UNPACKED bundle; the device environment (.venv-edge) runs the same on x86.
4. compare: the same label for every photo, or exit 1.

    python -m export.pi_check dist/noodle-edge-X.tar.gz PHOTOS [--root .cache/pi-root]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"  # Raspberry Pi OS 12's Debian base
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
TARGET_PYTHON = "3.11"  # Bookworm's python3
# What pip may install for an aarch64 Python 3.11 on glibc 2.36: tflite-runtime
# 2.14 ships manylinux_2_34 only, numpy and Pillow older tags.
PLATFORMS = ["manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
             "manylinux2014_aarch64"]
# `packaging` evaluates requirement markers as the Pi's Python would.
TARGET_ENV = {"python_version": TARGET_PYTHON, "python_full_version": f"{TARGET_PYTHON}.2",
              "platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
              "os_name": "posix", "implementation_name": "cpython",
              "platform_python_implementation": "CPython"}
QEMU = "qemu-aarch64-static"
# debootstrap lives in /usr/sbin, which a non-login PATH may lack.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"pi-check: {message}", flush=True)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise CheckFailed(f"{' '.join(map(str, args[:4]))} ... exited {done.returncode}:\n{tail}")
    return done


def build_root(root: Path) -> Path:
    """A Debian 12 arm64 root with python3.11 unpacked, made once and cached."""
    done = root / ".noodle-complete"
    if done.is_file():
        return root
    tools = {tool: shutil.which(tool, path=TOOL_PATH) for tool in ("debootstrap", QEMU, "dpkg-deb")}
    for tool, found in tools.items():
        if found is None:
            raise CheckFailed(f"{tool} not found; apt-get install debootstrap qemu-user-static "
                              "(`make pi-check` does)")
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    log(f"debootstrap --foreign {SUITE} arm64 into {root} (about a minute, cached afterwards)")
    run([tools["debootstrap"], "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3.11",
         SUITE, str(work), MIRROR])
    # The included packages and their dependencies, still .debs: unpack them,
    # keeping bookworm's /lib -> usr/lib symlinks (merged /usr) intact.
    paths = dict(line.split() for line in (work / "debootstrap/debpaths").read_text().splitlines())
    for package in (work / "debootstrap/base").read_text().split():
        deb = work / paths[package].lstrip("/")
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(work), "-f", "-"],
                       input=data.stdout, check=True)
    python = work / f"usr/bin/python{TARGET_PYTHON}"
    if not python.is_file():
        raise CheckFailed(f"{python}: not unpacked; see {work}/debootstrap/debootstrap.log")
    (work / ".noodle-complete").write_text(f"{SUITE} arm64 minbase + python{TARGET_PYTHON}\n")
    work.rename(root)
    return root


def target_requirements(path: Path) -> list[str]:
    from packaging.requirements import Requirement

    wanted = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(TARGET_ENV):
            wanted.append(f"{req.name}{req.specifier}")
    return wanted


def install_packages(requirements: Path, cache: Path) -> Path:
    """aarch64 wheels for the requirements in a folder for PYTHONPATH, cached by content."""
    wanted = target_requirements(requirements)
    key = hashlib.sha256("\n".join(wanted + PLATFORMS).encode()).hexdigest()[:12]
    site = cache / f"pi-site-{key}"
    if (site / ".noodle-complete").is_file():
        return site
    shutil.rmtree(site, ignore_errors=True)
    log(f"pip install --platform aarch64 for Python {TARGET_PYTHON}: {', '.join(wanted)}")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", *platforms, "--python-version", TARGET_PYTHON, "--implementation", "cp",
         "--target", str(site), *wanted])
    (site / ".noodle-complete").write_text("\n".join(wanted) + "\n")
    return site


def unpack(bundle: Path, into: Path) -> Path:
    with tarfile.open(bundle) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 (our own tarball)
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise CheckFailed(f"{bundle}: expected one top folder, found {[p.name for p in tops]}")
    return tops[0]


def classify(command: list[str], bundle_dir: Path, model: str, photos: Path, env: dict) -> dict[str, dict]:
    start = time.perf_counter()
    done = subprocess.run([*command, "-m", "edge", "classify", model, str(photos), "--json", "-v"],
                          cwd=bundle_dir, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise CheckFailed(f"classify exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    results = {}
    for line in done.stdout.splitlines():
        row = json.loads(line)
        results[os.path.relpath(row["file"], photos)] = row
    said = [line for line in done.stderr.splitlines() if line.startswith("model ")]
    log(f"{said[0] if said else ''}; {len(results)} photos in {seconds:.1f} s")
    return results


def check(bundle: Path, photos: Path, root: Path, edge_python: Path) -> int:
    root = build_root(root.resolve())
    with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
        bundle_dir = unpack(bundle, Path(tmp))
        site = install_packages(bundle_dir / "requirements-pi.txt", root.parent)
        models = sorted((bundle_dir / "model").glob("*.tflite"))
        if len(models) != 1:
            raise CheckFailed(f"{bundle}: expected one model in model/, found {len(models)}")
        model = str(models[0].relative_to(bundle_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NOODLE_RUNTIME"))}
        python = root / f"usr/bin/python{TARGET_PYTHON}"
        arm = [QEMU, "-L", str(root), str(python)]
        probe = run([*arm, "-c", "import platform, sys; print(platform.machine(), sys.version.split()[0])"],
                    env=env).stdout.split()
        log(f"{bundle.name} unpacked; Debian {SUITE} root's python{TARGET_PYTHON}: "
            f"{probe[0]} Python {probe[1]} under {QEMU}")
        pi = classify(arm, bundle_dir, model, photos, {**env, "PYTHONPATH": str(site)})
        x86 = classify([str(edge_python)], bundle_dir, model, photos, env)
    if set(pi) != set(x86):
        raise CheckFailed(f"different files classified: aarch64 {len(pi)}, x86 {len(x86)}")
    differ = sorted(f for f in pi if pi[f]["label"] != x86[f]["label"])
    score_diff = max(abs(pi[f]["score"] - x86[f]["score"]) for f in pi) if pi else 0.0
    counts = {}
    for row in pi.values():
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    log(f"labels equal on {len(pi) - len(differ)} of {len(pi)} photos "
        f"(aarch64 labels: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
        f"largest score difference {score_diff:.6f}")
    if differ or not pi:
        for f in differ[:10]:
            log(f"  {f}: aarch64 {pi[f]['label']} {pi[f]['score']}, x86 {x86[f]['label']} {x86[f]['score']}")
        return 1
    log("passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.pi_check", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT / ".cache/pi-root")
    parser.add_argument("--edge-python", type=Path, default=ROOT / ".venv-edge/bin/python")
    args = parser.parse_args(argv)
    try:
        return check(args.bundle.resolve(), args.photos.resolve(), args.root, args.edge_python.absolute())
    except CheckFailed as exc:
        print(f"pi-check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
