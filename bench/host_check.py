"""`make host-check`: the README's two commands on a fresh Debian host, in a chroot.

A Debian 13 "trixie" host has Python 3.13: TensorFlow 2.21 installs, but
tflite-runtime 2.14 has no wheels past 3.11, so the device environment
(.venv-edge) holds ai-edge-litert alone. This proves such a host end to end:

1. root: `debootstrap --variant=minbase --include=python3,python3-venv,make,ca-certificates`
   for this machine's architecture (amd64), cached in CACHE/host-root-<release>.
2. the checkout, as a fresh clone holds it: the files git tracks and the
   untracked ones it does not ignore, copied anew into the root's /srv/noodle
   (no .venv, no runs), with ../shared bind-mounted beside it at /srv/shared.
3. `make export`, then `make test`, run there as root with the network (pip;
   apt-get for the tests' mosquitto and chromium), each timed; the whole
   output goes to CACHE/host-check-<release>.log, its last lines here.

    python -m bench.host_check [--release trixie] [--cache .cache]

It needs root (debootstrap, chroot, mount namespaces), as pi-check does.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bench.pi_check import MIRROR, CheckFailed, cached_root, tool
from edge.logs import logger
from export.wheelhouse import TARGETS

ROOT = Path(__file__).resolve().parent.parent
RELEASES = {target.release: target for target in TARGETS}
# What a fresh Debian host that runs the README has: its python3 with venv, and make.
PACKAGES = "python3,python3-venv,make,ca-certificates"
INSIDE = "/srv/noodle"  # the checkout in the root; ../shared is /srv/shared beside it
# The README's commands, in its order: set-up and export on the embedded default, then the tests.
COMMANDS = ("make export", "make test")
# A fresh set-up downloads TensorFlow; the suite is about ten minutes on two cores.
STEP_TIMEOUT = 3600
# Passed into the root: a proxy this machine reaches the registries through.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


log = logger("host_check", stdout=True, prefix="host-check: ").info


def build_root(release: str, cache: Path) -> Path:
    """A Debian root of this machine's architecture with PACKAGES installed, made once and cached."""
    root = cache / f"host-root-{release}"

    def debootstrap(work: Path) -> None:
        log(f"{release}: debootstrap into {root} (a minute or two, cached afterwards)")
        done = subprocess.run([tool("debootstrap"), "--variant=minbase", f"--include={PACKAGES}", release,
                               str(work), MIRROR], capture_output=True, text=True, timeout=STEP_TIMEOUT)
        if done.returncode != 0:
            raise CheckFailed(f"debootstrap {release} exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}; "
                              f"see {work}/debootstrap/debootstrap.log")

    return cached_root(root, f"Debian {release} minbase + {PACKAGES}\n", debootstrap)


def copy_checkout(root: Path) -> Path:
    """The checkout's files as a fresh clone holds them (with uncommitted work), copied anew into ROOT."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    into = root / INSIDE.lstrip("/")
    shutil.rmtree(into, ignore_errors=True)
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    (root / "srv/shared").mkdir(parents=True, exist_ok=True)
    return into


def network_files(root: Path) -> None:
    """What the root needs to reach the registries as this machine does: its resolver and trusted CAs."""
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():  # a proxy's CA that this machine trusts, trusted inside too
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")


def in_root(root: Path, shared: Path, command: str, out) -> tuple[int, float]:
    """COMMAND in INSIDE, by the root's sh, in a mount namespace (mounts vanish after); (exit, seconds)."""
    # The root bound on itself first: a chroot's / is then a mount point, as a host's is, so
    # `unshare --mount` inside (a test mounts a small tmpfs privately) can make it private.
    mounts = [f"mount --bind {root} {root}", f"mount -t proc proc {root}/proc",
              f"mount --rbind /dev {root}/dev", f"mount --rbind /sys {root}/sys"]
    if shared.is_dir():
        mounts.append(f"mount --bind {shlex.quote(str(shared))} {root}/srv/shared")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", **{k: v for k, v in os.environ.items() if k in PROXY_VARIABLES}}
    clean = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    inner = f"cd {INSIDE} && {command}"
    chroot = f"exec chroot {root} /usr/bin/env -i {clean} /bin/sh -c {shlex.quote(inner)}"
    script = " && ".join([*mounts, chroot])
    start = time.perf_counter()
    done = subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script], stdout=out,
                          stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT)
    return done.returncode, time.perf_counter() - start


def tail(path: Path, lines: int) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def check(release: str, cache: Path, shared: Path) -> int:
    start = time.perf_counter()
    root = build_root(release, cache)
    python = subprocess.run(["chroot", str(root), "python3", "--version"], capture_output=True, text=True)
    log(f"{release}: root ready in {time.perf_counter() - start:.0f} s ({root}; {python.stdout.strip()})")
    copy_checkout(root)
    network_files(root)
    logfile = cache / f"host-check-{release}.log"
    failed = []
    with logfile.open("w") as out:
        for command in COMMANDS:
            print(f"$ {command}", file=out, flush=True)
            code, seconds = in_root(root, shared, command, out)
            out.flush()
            log(f"{release}: {command} exited {code} in {seconds / 60:.1f} min; its last lines:")
            for line in tail(logfile, 4 if code == 0 else 25):
                log(f"  | {line}")
            if code != 0:
                failed.append(command)
    log(f"{'FAILED: ' + ', '.join(failed) if failed else 'passed'} on Debian {RELEASES[release].debian} "
        f"{release} ({python.stdout.strip()}) in {(time.perf_counter() - start) / 60:.1f} min; "
        f"the whole output: {logfile}")
    return 1 if failed else 0


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    release: Annotated[str, typer.Option(help=f"The Debian release: {', '.join(RELEASES)}.")] = "trixie",
    cache: Annotated[Path, typer.Option(help="Where the root and the log are kept.")] = ROOT / ".cache",
    shared: Annotated[Path, typer.Option(
        help="The shared photos' folder, bound beside the checkout as ../shared.")] = ROOT.parent / "shared",
) -> None:
    """Run `make export` and `make test` on a fresh Debian host of this architecture, in a chroot."""
    try:
        if release not in RELEASES:
            raise CheckFailed(f"--release {release!r}: use one of {', '.join(RELEASES)}")
        if os.geteuid() != 0:
            raise CheckFailed("debootstrap, chroot and mount namespaces need root: run it as root or by sudo")
        code = check(release, cache.resolve(), shared.resolve())
    except (CheckFailed, subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"host-check: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="python -m bench.host_check")
