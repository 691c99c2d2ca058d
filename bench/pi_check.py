"""`make pi-check`: install the bundle with its own install.sh on each Pi release, offline, under qemu.

64-bit Raspberry Pi OS is Debian arm64 plus Raspberry Pi's kernel and
firmware; user space (Python, glibc) is Debian's. Bookworm is Debian 12
(Python 3.11, tflite-runtime 2.14), Trixie is Debian 13 (Python 3.13,
ai-edge-litert). For each release in --releases:

1. root: `debootstrap --foreign --variant=minbase --include=python3,python3-venv`
   writes a Debian arm64 root, cached in CACHE/pi-root-<release>. The first
   stage leaves the included packages as .debs for a second stage; we unpack
   them with dpkg-deb, which is all the second stage would do for the files.
2. emulation: binfmt_misc runs aarch64 programs under qemu-aarch64-static,
   registered for the duration of the check when it is not already (with the
   F flag, so it works in a chroot). Every program runs on PI_CPU's emulated core
   (QEMU_CPU), a Pi 5's, not qemu's default, which has features no Pi has.
   install.sh runs python, pip, uname and friends as child processes, and only
   binfmt makes those children aarch64 as well; `qemu-aarch64-static -L ROOT` alone emulates one process.
3. install: the UNPACKED bundle is bind-mounted at /bundle in a private mount
   and network namespace (`unshare --mount --net`: loopback only, and down),
   then `chroot ROOT /bin/sh -c 'cd /bundle && ./install.sh --camera'` with
   PIP_INDEX_URL at a closed port: the release's own sh, python and pip
   install from the bundle's wheels/ (OpenCV too, as README-PI's USB-camera
   step does) or fail.
4. run: `./noodle-edge classify` from the bundle's .venv on the photos
   (bind-mounted at /photos); this machine's device environment (.venv-edge)
   classifies the same photos with the same unpacked bundle.
5. compare: the same label for every photo on every release, or exit 1.
6. camera: `./noodle-edge camera MODEL --source clip.mp4`, a clip made here
   from the photos, must classify every frame with the release's OpenCV, as
   this machine's OpenCV does; the labels are compared with x86's and counted
   (a video decoder need not give the same pixels everywhere, so they are
   reported, not required).
7. serve: `./noodle-edge serve MODEL --source clip.mp4` in the release, with the
   namespace's loopback up (still no network beyond it); a client in the
   bundle's .venv fetches /v1/model (its labels and sha256 must be the
   model's) and POSTs SERVE_PHOTOS photos to /v1/classify over 127.0.0.1: each
   label must equal x86's `classify` label for that photo, and the camera loop
   must have classified frames of the clip (/v1/latest).
8. enrol: `./noodle-edge serve MODEL --captures DIR` in the release; the client
   POSTs ENROL_CAPTURES photos a class (of PHOTOS' class folders, none of them
   among the photos classified next) to /v1/captures/{label}, POSTs /v1/teach
   (replacing the shipped classes, so the captures alone make the head), waits
   on GET /v1/teach, checks that /v1/model lists the taught labels, POSTs
   ENROL_PHOTOS photos to /v1/classify and POSTs /v1/model/rollback, which
   must bring back the shipped sha256. This machine's serve does the same
   steps with the same photos first: the labels must equal its labels. A
   model without embed.tflite (only lite0 exports one) skips it, saying so.
9. deploy: `./noodle-edge serve MODEL --captures DIR --token-file F` in the
   release (token NAME:SECRET); a client of this machine, in serve's network
   namespace but outside the chroot, POSTs DEPLOY_CAPTURES photos a class,
   runs `noodle deploy URL RUN --variant V` (the run's first of
   DEPLOY_VARIANTS other than the shipped one), checks that /v1/model shows
   V's sha256, deployed by NAME, POSTs DEPLOY_PHOTOS photos to /v1/classify
   (labels equal to x86's `classify` of V) and POSTs /v1/model/rollback, which
   must bring back the shipped sha256. A bundle given alone (no run) skips it.

    python -m bench.pi_check RUN_OR_BUNDLE PHOTOS [--model int8] [--releases "bookworm trixie"]
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import NoodleError
from edge.logs import logger
from edge.serve_config import DEFAULTS as SERVE
from export.bundle import DEFAULT_MODEL, BundleError, bundle_path
from export.bundle import unpack as unpack_bundle
from export.gate import export_outcome
from export.wheelhouse import TARGETS, Target

ROOT = Path(__file__).resolve().parent.parent
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# debootstrap lives in /usr/sbin, which a non-login PATH may lack.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Where Debian's qemu-user-static keeps its registration line (systemd-binfmt reads it).
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
# A port nothing listens on: pip would fail fast there, had it tried the index.
CLOSED_INDEX = "http://127.0.0.1:9/simple"
# An emulated install is minutes on two cores; a stuck one is not.
STEP_TIMEOUT = 1800
# The CPU qemu emulates: a Raspberry Pi 5's Cortex-A76. qemu's default ("max") has SVE and SME,
# which no Pi has, and there Trixie's numpy 2.5.5 (OpenBLAS) multiplied float64 matrices wrongly
# under qemu 7.2 (a 4x1280 @ 1280x2 product off by 44), so the enrolment taught a wrong head.
PI_CPU = "cortex-a76"


RELEASES = {target.release: target for target in TARGETS}
# python3-venv brings ensurepip and the pip wheel it installs; pip 25 (Trixie's)
# loads the CA bundle even offline. Raspberry Pi OS has all three.
PACKAGES = "python3,python3-venv,ca-certificates"
MOUNT_POINTS = ("bundle", "photos", "proc", "dev", "tmp")


class CheckFailed(NoodleError):
    pass


log = logger("pi_check", stdout=True, prefix="pi-check: ").info


def run(args: list[str], timeout: float = STEP_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        for line in (done.stderr.strip() or done.stdout.strip()).splitlines()[-15:]:
            log(f"  | {line}")
        raise CheckFailed(f"{' '.join(map(str, args[:3]))} ... exited {done.returncode} (output above)")
    return done


def tool(name: str) -> str:
    found = shutil.which(name, path=TOOL_PATH)
    if found is None:
        raise CheckFailed(f"{name} not found; apt-get install debootstrap qemu-user-static "
                          "(`make pi-tools` does)")
    return found


def cached_root(root: Path, stamp: str, make) -> Path:
    """ROOT as `make(folder)` builds it, made once: again only when it never finished or its STAMP changed.

    It is built in ROOT.partial and renamed when done, so a killed build is never taken for a root.
    """
    marker = root / ".noodle-complete"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    make(work)
    (work / ".noodle-complete").write_text(stamp)
    work.rename(root)
    return root


def build_root(target: Target, cache: Path) -> Path:
    """A Debian arm64 root with python3 and python3-venv unpacked, made once and cached."""
    root = cache / f"pi-root-{target.release}"
    return cached_root(root, f"Debian {target.debian} {target.release} arm64 minbase + {PACKAGES}\n",
                       lambda work: _debootstrap_arm64(target, root, work))


def _debootstrap_arm64(target: Target, root: Path, work: Path) -> None:
    log(f"{target.release}: debootstrap --foreign arm64 into {root} (minutes, cached afterwards)")
    run([tool("debootstrap"), "--foreign", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}",
         target.release, str(work), MIRROR])
    # The included packages and their dependencies, still .debs: unpack them,
    # keeping the merged-/usr symlinks (/bin -> usr/bin) intact.
    paths = dict(line.split() for line in (work / "debootstrap/debpaths").read_text().splitlines())
    for package in (work / "debootstrap/base").read_text().split():
        deb = work / paths[package].lstrip("/")
        data = subprocess.run([tool("dpkg-deb"), "--fsys-tarfile", str(deb)], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(work), "-f", "-"],
                       input=data.stdout, check=True)
    python = work / f"usr/bin/python{target.python}"
    if not python.is_file() or not (work / f"usr/lib/python{target.python}/ensurepip").is_dir():
        raise CheckFailed(f"{python}: python or its venv not unpacked; "
                          f"see {work}/debootstrap/debootstrap.log")
    shutil.rmtree(work / "var/cache/apt/archives", ignore_errors=True)  # the .debs: 100 MB, unpacked now
    # What the skipped maintainer scripts would have made: the CA bundle
    # (update-ca-certificates) and /etc/mtab, which df reads.
    certs = sorted((work / "usr/share/ca-certificates").rglob("*.crt"))
    (work / "etc/ssl/certs/ca-certificates.crt").write_bytes(b"".join(c.read_bytes() for c in certs))
    if not (work / "etc/mtab").is_symlink():
        (work / "etc/mtab").symlink_to("../proc/self/mounts")
    for point in MOUNT_POINTS:  # the first stage links proc to the host's /proc; the second undoes that
        if (work / point).is_symlink():
            (work / point).unlink()
        (work / point).mkdir(exist_ok=True)


@contextlib.contextmanager
def aarch64_binfmt():
    """Let the kernel run aarch64 programs under qemu, registering it only for this check if needed."""
    entry = BINFMT / "qemu-aarch64"
    if entry.is_file() and entry.read_text().startswith("enabled"):
        flags = re.search(r"^flags: *(\w*)", entry.read_text(), re.M)
        if flags is None or "F" not in flags.group(1):
            raise CheckFailed(f"{entry}: registered without the F flag, so a chroot cannot find qemu; "
                              f"re-register it from {BINFMT_CONF} (`systemctl restart systemd-binfmt`)")
        yield
        return
    if not BINFMT_CONF.is_file():
        raise CheckFailed(f"{BINFMT_CONF}: missing; apt-get install qemu-user-static")
    if os.geteuid() != 0:
        raise CheckFailed("registering qemu-aarch64 with binfmt_misc and chroot need root; "
                          "run it as root or with sudo")
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
    log(f"registered qemu-aarch64 with binfmt_misc for this check (from {BINFMT_CONF})")
    try:
        yield
    finally:
        entry.write_text("-1")  # unregister: leave the kernel as we found it


def in_root(root: Path, binds: dict[str, Path], command: str,
            env: dict[str, str], loopback: bool = False) -> subprocess.CompletedProcess:
    """COMMAND by the root's /bin/sh in a chroot, with no network and BINDS mounted; mounts vanish after.

    `loopback`: with the new namespace's loopback up (127.0.0.1 only; nothing beyond it)."""
    return in_namespace(root, binds, chroot_argv(root, env, command), loopback)


def chroot_argv(root: Path, env: dict[str, str], command: str) -> list[str]:
    """COMMAND by the root's /bin/sh in a chroot, with ENV alone."""
    return ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
            "/bin/sh", "-c", command]


def in_namespace(root: Path, binds: dict[str, Path], argv: list[str], loopback: bool = False,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """ARGV in a mount and network namespace of its own, with ROOT's /dev, /proc and BINDS mounted:
    a chroot_argv, or a program of this machine (with ENV) that starts one; both share the loopback."""
    mounts = [f"mount --rbind /dev {root}/dev", f"mount -t proc proc {root}/proc"]
    if loopback:
        mounts.insert(0, "ip link set lo up")
    mounts += [f"mount --bind {shlex.quote(str(host))} {root}/{inside}" for inside, host in binds.items()]
    script = " && ".join(mounts + ["exec " + shlex.join(argv)])
    return subprocess.run(["unshare", "--mount", "--net", "--fork", "sh", "-c", script],
                          capture_output=True, text=True, timeout=STEP_TIMEOUT, env=env)


def unpack(bundle: Path, into: Path) -> Path:
    """The bundle unpacked into INTO (new); a link, absolute or `..` member refuses it whole.

    This runs as root, so export.bundle.unpack checks every member before
    writing any, and tarfile's `data` filter checks them again.
    """
    into.mkdir(parents=True)
    try:
        return unpack_bundle(bundle, into)
    except BundleError as exc:
        raise CheckFailed(str(exc)) from None


def parse_labels(stdout: str, photos: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in stdout.splitlines() if line.startswith("{"))
    return {os.path.relpath(row["file"], photos): row for row in rows}


def said(stderr: str, pattern: str) -> str:
    found = re.search(pattern, stderr)
    return found.group(1) if found else "?"


def compare(name: str, pi: dict[str, dict], x86: dict[str, dict]) -> list[str]:
    if set(pi) != set(x86):
        raise CheckFailed(f"{name}: different files classified: aarch64 {len(pi)}, x86 {len(x86)}")
    differ = sorted(f for f in pi if pi[f]["label"] != x86[f]["label"])
    for f in differ[:10]:
        log(f"  {f}: {name} {pi[f]['label']} {pi[f]['score']}, x86 {x86[f]['label']} {x86[f]['score']}")
    return differ


def check_release(target: Target, bundle: Path, photos: Path, cache: Path, x86: dict[str, dict],
                  work: Path, clip: Clip, enrol: Enrol | None, deploy: Deploy | None) -> bool:
    start = time.perf_counter()
    root = build_root(target, cache)
    log(f"{target.release} (Debian {target.debian}): root ready in {time.perf_counter() - start:.0f} s "
        f"({root})")
    bundle_dir = unpack(bundle, work / target.release)
    home = work / f"{target.release}-tmp"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "PIP_INDEX_URL": CLOSED_INDEX, "QEMU_CPU": PI_CPU}
    binds = {"bundle": bundle_dir, "photos": photos, "tmp": home}
    start = time.perf_counter()
    with system_picamera2(root, cache) if target.release == PICAMERA2_RELEASE else contextlib.nullcontext():
        done = in_root(root, binds, "cd /bundle && ./install.sh --camera", env)
        if done.returncode == 0 and target.release == PICAMERA2_RELEASE:
            check_picamera2(root, binds, env)
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        log(f"{target.release}: install.sh | {line}")
    if done.returncode != 0:
        raise CheckFailed(f"{target.release}: ./install.sh exited {done.returncode} (its output above)")
    python = said(done.stdout, r"Python (\S+)")
    venv = (bundle_dir / ".venv").resolve()
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    log(f"{target.release}: ./install.sh offline in {time.perf_counter() - start:.0f} s; "
        f".venv is {size / 2**20:.0f} MiB")
    model = next(bundle_dir.glob("model/*.tflite")).relative_to(bundle_dir)
    start = time.perf_counter()
    ran = in_root(root, binds, f"cd /bundle && ./noodle-edge classify {model} /photos --json -v", env)
    if ran.returncode != 0:
        for line in ran.stderr.strip().splitlines()[-10:]:
            log(f"{target.release}:   | {line}")
        raise CheckFailed(f"{target.release}: ./noodle-edge classify exited {ran.returncode} (output above)")
    pi = parse_labels(ran.stdout, "/photos")
    runtime = said(ran.stderr, r"runtime ([^;]+);")
    differ = compare(target.release, pi, x86)
    log(f"{target.release} (Debian {target.debian}): Python {python}, {runtime}: labels equal on "
        f"{len(pi) - len(differ)} of {len(pi)} photos ({time.perf_counter() - start:.0f} s to classify "
        f"under qemu)")
    camera = check_camera(target, root, binds, env, model, clip, home)
    served = check_serve(target, root, binds, env, model, clip, x86, home)
    enrolled = check_enrol(target, root, binds, env, model, enrol, home) if enrol is not None else True
    deployed = check_deploy(target, root, binds, env, model, deploy, home) if deploy is not None else True
    return bool(pi) and not differ and camera and served and enrolled and deployed


# The clip `camera --source` reads: photos as frames, 320x240 (4:3, so the centre
# crop matters), MPEG-4 in .mp4, a frame a photo at 10 fps.
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 20, (320, 240), 10.0


@dataclasses.dataclass
class Clip:
    path: Path
    frames: int
    x86: list[str]  # the label of each frame, by this machine's OpenCV and runtime


def camera_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"frame"')]


def make_clip(photos: Path, work: Path, host_dir: Path, model: Path) -> Clip:
    """clip.mp4 of up to CLIP_FRAMES photos, evenly spaced, and x86's labels of its frames."""
    import cv2

    from edge.preprocess import is_image_file

    files = sorted(p for p in photos.rglob("*") if p.is_file() and is_image_file(p))
    count = min(CLIP_FRAMES, len(files))
    chosen = [files[int(i * len(files) / count)] for i in range(count)]
    path = work / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    for photo in chosen:
        frame = cv2.imread(str(photo))
        if frame is not None:
            writer.write(cv2.resize(frame, CLIP_SIZE))
    writer.release()
    # This machine's OpenCV (the host environment's) with the same unpacked bundle.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NOODLE_RUNTIME"))}
    ran = run([sys.executable, "-m", "edge", "camera", str(model), "--source", str(path), "--every", "1",
               "--json"], cwd=host_dir, env=env)
    labels = [row["label"] for row in camera_rows(ran.stdout)]
    log(f"{path.name}: {len(labels)} frames of {len(chosen)} photos, {CLIP_SIZE[0]}x{CLIP_SIZE[1]} MPEG-4; "
        f"x86 (OpenCV {cv2.__version__}) labels them")
    return Clip(path, len(labels), labels)


def check_camera(target: Target, root: Path, binds: dict, env: dict, model: Path, clip: Clip,
                 home: Path) -> bool:
    """`noodle-edge camera --source clip.mp4` in the release: every frame classified, with its OpenCV."""
    shutil.copy2(clip.path, home / clip.path.name)  # /tmp in the root
    start = time.perf_counter()
    ran = in_root(root, binds, f"cd /bundle && ./noodle-edge camera {model} --source /tmp/{clip.path.name} "
                  "--every 1 --json", env)
    opencv = in_root(root, binds, "cd /bundle && .venv/bin/python -c 'import cv2, numpy; "
                     "print(cv2.__version__, numpy.__version__)'", env).stdout.split()
    rows = camera_rows(ran.stdout)
    if ran.returncode != 0 or len(rows) != clip.frames:
        for line in ran.stderr.strip().splitlines()[-10:]:
            log(f"{target.release}:   | {line}")
        log(f"{target.release}: FAILED: ./noodle-edge camera --source {clip.path.name} exited "
            f"{ran.returncode} with {len(rows)} of {clip.frames} frames")
        return False
    same = sum(row["label"] == label for row, label in zip(rows, clip.x86, strict=True))
    log(f"{target.release}: ./noodle-edge camera --source {clip.path.name}: {len(rows)} frames with OpenCV "
        f"{' and numpy '.join(opencv) or '?'} from the bundle, labels equal to x86's on {same} of "
        f"{len(rows)} ({time.perf_counter() - start:.0f} s under qemu)")
    return True


# What pi-check's clients share, written beside each (standard library only: it runs under each
# release's python as well as this machine's). A client starts serve itself, so it knows when serve ended.
CLIENT_LIB = r"""
import json, sys, time, urllib.request

def ask(port, path, body=None, kind="application/octet-stream", token=None):
    headers = {"Content-Type": kind} if body is not None else {}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request("http://127.0.0.1:" + str(port) + path, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)

# Until serve (a Popen) answers /healthz; the client exits if serve ended or SECONDS passed.
# The deadline it returns bounds what the client waits for afterwards.
def wait_healthy(server, port, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            ask(port, "/healthz")
            return deadline
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("serve did not answer /healthz")
            time.sleep(1)
"""


def write_client(folder: Path, name: str, source: str) -> Path:
    """The client SOURCE written into FOLDER as NAME, with the module it imports (pi_client.py)."""
    (folder / "pi_client.py").write_text(CLIENT_LIB)
    (folder / name).write_text(source)
    return folder / name


def step_passed(target: Target, step: str, problems: list[str], ran: subprocess.CompletedProcess,
                serve_log: Path) -> bool:
    """Whether a client's STEP passed: no PROBLEMS, and no traceback in serve's log. A failure is
    said in one line, after the last lines of the client's stderr and of serve's log."""
    logged = serve_log.read_text(errors="replace") if serve_log.is_file() else ""
    if "Traceback" in logged:
        problems = [*problems, "serve's log holds a traceback"]
    if not problems:
        return True
    for line in (ran.stderr.strip().splitlines() + logged.strip().splitlines())[-10:]:
        log(f"{target.release}:   | {line}")
    log(f"{target.release}: FAILED: {step}: " + "; ".join(problems))
    return False


# `serve` in the release: photos POSTed over loopback, labels against x86's `classify`.
SERVE_PHOTOS, SERVE_PORT = 10, SERVE.port
# Run by the bundle's .venv python in the root: starts serve, asks it, prints a JSON line per
# answer, stops it, and prints what serve logged.
SERVE_CLIENT = r"""
import json, subprocess, sys, time
from pi_client import ask, wait_healthy
model, clip, port, photos = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
log = open("/tmp/serve.log", "wb")
server = subprocess.Popen(["./noodle-edge", "serve", model, "--source", clip, "--loop", "--port", port,
                           "--rate", "0"], stderr=log)
try:
    deadline = wait_healthy(server, port, 600)
    print(json.dumps({"model": ask(port, "/v1/model")}))
    for photo in photos:
        with open(photo, "rb") as f:
            print(json.dumps({"file": photo, **ask(port, "/v1/classify", f.read())}))
    while ask(port, "/v1/latest").get("frame", 0) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    print(json.dumps({"latest": ask(port, "/v1/latest")}))
finally:
    server.terminate()
    server.wait(60)
"""


def check_serve(target: Target, root: Path, binds: dict, env: dict, model: Path, clip: Clip,
                x86: dict[str, dict], home: Path) -> bool:
    """`noodle-edge serve` in the release: /v1/model, /v1/classify and /v1/latest over its loopback."""
    write_client(home, "serve_client.py", SERVE_CLIENT)
    photos = sorted(x86)[:SERVE_PHOTOS]
    start = time.perf_counter()
    args = [str(model), f"/tmp/{clip.path.name}", str(SERVE_PORT)] + [f"/photos/{p}" for p in photos]
    ran = in_root(root, binds, "cd /bundle && .venv/bin/python /tmp/serve_client.py "
                  + " ".join(map(shlex.quote, args)), env, loopback=True)
    rows = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    info = next((r["model"] for r in rows if "model" in r), None)
    answers = {os.path.relpath(r["file"], "/photos"): r for r in rows if "file" in r}
    latest = next((r["latest"] for r in rows if "latest" in r), {})
    manifest = json.loads((Path(binds["bundle"]) / model.parent / "manifest.json").read_text())
    problems = []
    if ran.returncode != 0 or info is None or len(answers) != len(photos):
        problems.append(f"the client exited {ran.returncode} with {len(answers)} of {len(photos)} answers")
    elif (info["labels"] != manifest["labels"]
          or info["sha256"] != manifest["models"][info["variant"]]["sha256"]):
        problems.append("/v1/model's labels or sha256 differ from the bundle's manifest")
    differ = [p for p, r in answers.items() if r["label"] != x86[p]["label"]]
    if differ:
        problems.append(f"labels differ from x86's on {len(differ)} photo(s): " + ", ".join(differ[:5]))
    if not latest.get("frame"):
        problems.append("/v1/latest has no camera frame")
    if not step_passed(target, "./noodle-edge serve", problems, ran, home / "serve.log"):
        return False
    log(f"{target.release}: ./noodle-edge serve --source {clip.path.name}: /v1/model {info['variant']} "
        f"{info['runtime']['name']} {info['runtime']['version']}; /v1/classify labels equal to x86's on "
        f"{len(answers)} of {len(photos)} photos; /v1/latest frame {latest['frame']} {latest['label']} "
        f"({time.perf_counter() - start:.0f} s under qemu)")
    return True


# Enrolment through serve's Teach routes: few captures, since each is an emulated invoke.
ENROL_CAPTURES, ENROL_PHOTOS = 6, 10
# Run by a python in the release or on this machine: starts `serve --captures`, POSTs the
# captures, teaches, classifies, rolls back; a JSON line per answer.
ENROL_CLIENT = r"""
import json, subprocess, sys, time, urllib.parse
from pi_client import ask, wait_healthy
job = json.loads(sys.argv[1])
port = job["port"]
log = open(job["log"], "wb")
server = subprocess.Popen(job["serve"] + ["--captures", job["captures_dir"], "--port", str(port),
                                          "--rate", "0"], stderr=log)
def show(**row):
    print(json.dumps(row), flush=True)
try:
    deadline = wait_healthy(server, port, 900)
    show(shipped=ask(port, "/v1/model"))
    for label, paths in job["captures"].items():
        for path in paths:
            with open(path, "rb") as f:
                show(captured=ask(port, "/v1/captures/" + urllib.parse.quote(label, safe=""), f.read(),
                                  "image/jpeg"))
    started = time.monotonic()
    ask(port, "/v1/teach", json.dumps({"replace": True}).encode(), "application/json")
    while True:
        state = ask(port, "/v1/teach")
        if state["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(1)
    show(teach=state, waited=round(time.monotonic() - started, 1))
    show(taught=ask(port, "/v1/model"))
    for photo in job["photos"]:
        with open(photo, "rb") as f:
            print(json.dumps({"file": photo, **ask(port, "/v1/classify", f.read())}), flush=True)
    show(rollback=ask(port, "/v1/model/rollback", b""))
    show(after=ask(port, "/v1/model"))
finally:
    server.terminate()
    server.wait(60)
"""


@dataclasses.dataclass
class Enrol:
    captures: dict[str, list[Path]]  # label: photos POSTed to /v1/captures/{label}
    photos: list[str]  # classified after the teach, relative to PHOTOS (none of them captured)
    x86: dict  # this machine's answers: "teach", "taught" and the label of each photo


def enrol_client(folder: Path, job: dict) -> str:
    """The client written into FOLDER; its argument, the job."""
    write_client(folder, "enrol_client.py", ENROL_CLIENT)
    return json.dumps(job)


def enrol_rows(stdout: str) -> dict:
    """The client's answers: each key once, the classified photos under "files"."""
    out: dict = {"files": {}}
    for row in (json.loads(line) for line in stdout.splitlines() if line.startswith("{")):
        if "file" in row:
            out["files"][row["file"]] = row
        else:
            out.update(row)
    return out


def enrol_problems(rows: dict, shipped_sha: str, labels: list[str], photos: int) -> list[str]:
    """What is wrong with one run of the enrolment client, in words (none: it enrolled)."""
    teach, taught, after = rows.get("teach", {}), rows.get("taught", {}), rows.get("after", {})
    if teach.get("state") != "done":
        return [f"/v1/teach ended {teach.get('state', 'unanswered')}: {teach.get('error', '')}"]
    problems = []
    if sorted(taught.get("labels", [])) != sorted(labels) or taught.get("labels") != teach.get("labels"):
        problems.append(f"/v1/model lists {taught.get('labels')}, not the taught labels {labels}")
    if taught.get("sha256") in (None, shipped_sha):
        problems.append("/v1/model's sha256 after the teach is still the shipped one")
    if len(rows["files"]) != photos:
        problems.append(f"{len(rows['files'])} of {photos} photos classified after the teach")
    if after.get("sha256") != shipped_sha or rows.get("rollback", {}).get("sha256") != shipped_sha:
        problems.append(f"after /v1/model/rollback the sha256 is {after.get('sha256')}, not the shipped "
                        f"{shipped_sha}")
    return problems


def plan_enrol(source: Path, x86: dict[str, dict], host_dir: Path, model: Path, edge_python: Path,
               work: Path) -> Enrol | None:
    """The captures (per class folder of SOURCE, none classified next), and this machine's serve's answers.

    None, said in one line, when the model cannot be taught or the photos have no classes."""
    from edge.captures import CaptureError, check_label
    from edge.preprocess import is_image_file
    from edge.taught import EMBED_NAME

    if not (host_dir / model.parent / EMBED_NAME).is_file():
        log(f"enrolment skipped: {model.parent}/ has no {EMBED_NAME} (only lite0's export writes one, "
            "and teach needs its backbone)")
        return None
    classified = {(source / f).resolve() for f in x86}
    captures: dict[str, list[Path]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        spare = [p for p in files if p.resolve() not in classified] or files
        try:
            label = check_label(folder.name)
        except CaptureError:
            continue
        if len(spare) >= 2:  # a class needs two photos (edge.teach.MIN_PHOTOS)
            count = min(ENROL_CAPTURES, len(spare))
            captures[label] = [spare[int(i * len(spare) / count)] for i in range(count)]
    taken = {p.resolve() for paths in captures.values() for p in paths}
    photos = [f for f in sorted(x86) if (source / f).resolve() not in taken]
    photos = [photos[int(i * len(photos) / min(ENROL_PHOTOS, len(photos)))]
              for i in range(min(ENROL_PHOTOS, len(photos)))]
    if len(captures) < 2 or not photos:
        log(f"enrolment skipped: {source} has {len(captures)} class folder(s) with photos to capture and "
            f"{len(photos)} other photo(s) to classify; it needs 2 and 1")
        return None
    job = {"serve": [str(edge_python), "-m", "edge", "serve", str(model)], "port": SERVE_PORT,
           "captures": {label: [str(p) for p in paths] for label, paths in captures.items()},
           "photos": [str(source / f) for f in photos], "captures_dir": str(work / "x86-captures"),
           "log": str(work / "x86-enrol.log")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NOODLE_RUNTIME"))}
    start = time.perf_counter()
    # Its own network namespace: loopback only, so the port cannot meet another server's.
    ran = run(["unshare", "--net", "--fork", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               str(edge_python), str(work / "enrol_client.py"), enrol_client(work, job)],
              cwd=host_dir, env=env)
    rows = enrol_rows(ran.stdout)
    manifest = json.loads((host_dir / model.parent / "manifest.json").read_text())
    shipped_sha = manifest["models"][rows.get("shipped", {}).get("variant", "")]["sha256"] \
        if rows.get("shipped", {}).get("variant") in manifest["models"] else ""
    problems = enrol_problems(rows, shipped_sha, list(captures), len(photos))
    if problems:
        for line in (work / "x86-enrol.log").read_text(errors="replace").strip().splitlines()[-10:]:
            log(f"x86:   | {line}")
        raise CheckFailed("x86: enrolment through serve: " + "; ".join(problems))
    labels = {os.path.relpath(f, source): r["label"] for f, r in rows["files"].items()}
    log(f"x86: enrolment through serve --captures: {sum(map(len, captures.values()))} captures, teach "
        f"{rows['teach']['seconds']} s, labels {', '.join(rows['teach']['labels'])} "
        f"({time.perf_counter() - start:.0f} s)")
    return Enrol(captures, photos, {"teach": rows["teach"], "labels": labels, "sha256": shipped_sha})


def check_enrol(target: Target, root: Path, binds: dict, env: dict, model: Path, enrol: Enrol,
                home: Path) -> bool:
    """Enrol through `serve --captures` in the release: capture, teach, classify, roll back; vs x86."""
    inside: dict[str, list[str]] = {}
    for label, paths in enrol.captures.items():
        folder = home / "enrol" / label
        folder.mkdir(parents=True)
        for i, path in enumerate(paths):
            shutil.copy2(path, folder / f"{i}{path.suffix}")
        inside[label] = [f"/tmp/enrol/{label}/{i}{path.suffix}" for i, path in enumerate(paths)]
    job = {"serve": ["./noodle-edge", "serve", str(model)], "port": SERVE_PORT, "captures": inside,
           "photos": [f"/photos/{f}" for f in enrol.photos], "captures_dir": "/tmp/captures",
           "log": "/tmp/enrol.log"}
    start = time.perf_counter()
    ran = in_root(root, binds, "cd /bundle && .venv/bin/python /tmp/enrol_client.py "
                  + shlex.quote(enrol_client(home, job)), env, loopback=True)
    seconds = time.perf_counter() - start
    rows = enrol_rows(ran.stdout)
    problems = [f"the client exited {ran.returncode}"] if ran.returncode != 0 else []
    problems += enrol_problems(rows, enrol.x86["sha256"], list(enrol.captures), len(enrol.photos))
    labels = {os.path.relpath(f, "/photos"): r["label"] for f, r in rows["files"].items()}
    differ = [f for f in enrol.photos if labels.get(f) != enrol.x86["labels"][f]]
    if not problems and differ:
        problems.append(f"labels differ from x86's taught model on {len(differ)} photo(s): "
                        + ", ".join(f"{f} {labels.get(f)} vs {enrol.x86['labels'][f]}" for f in differ[:5]))
    if not step_passed(target, "enrolment through serve --captures", problems, ran, home / "enrol.log"):
        return False
    teach = rows["teach"]
    log(f"{target.release}: enrolment through serve --captures: "
        f"{' + '.join(str(len(p)) for p in enrol.captures.values())} captures POSTed, /v1/teach done in "
        f"{teach['seconds']} s (invokes: {teach['invokes']}), /v1/model lists {', '.join(teach['labels'])}; "
        f"/v1/classify labels equal to x86's taught model on {len(enrol.photos) - len(differ)} of "
        f"{len(enrol.photos)} photos not captured; /v1/model/rollback restored the shipped sha256 "
        f"{enrol.x86['sha256'][:12]} ({seconds:.0f} s under qemu)")
    return True


# Deploy from this machine: serve in the release with a named token and --captures, then `noodle deploy`
# of the run's other variant from this machine's environment, over the loopback the two share (the
# client runs outside the chroot, in serve's network namespace); then /v1/model, /v1/classify on photos
# against x86's `classify` of that variant, and rollback. Few captures and photos: each is an emulated
# float invoke (the step's seconds are in docs/device.md).
DEPLOY_CAPTURES, DEPLOY_PHOTOS = 2, 6
# The variant deployed: the first of these the run exported that is not the one shipped. float16 runs
# float kernels, which give x86's labels on aarch64, and its upload is half of float32's.
DEPLOY_VARIANTS = ("float16", "float32", "dynamic", "int8")
# Who deploys (NAME:SECRET): /v1/model must name the token's NAME, never its secret.
DEPLOY_NAME = "pi-check"
# Run by this machine's python in serve's namespace: starts serve in the root (job["serve"], a chroot),
# POSTs the captures, runs `noodle deploy`, asks /v1/model, classifies, rolls back; a JSON line each.
DEPLOY_CLIENT = r"""
import json, subprocess, sys, time, urllib.parse
from pi_client import ask, wait_healthy
job = json.loads(sys.argv[1])
port = job["port"]
with open(job["token_file"]) as f:
    token = f.read().strip()
log = open(job["log"], "wb")
server = subprocess.Popen(job["serve"], stderr=log)
def show(**row):
    print(json.dumps(row), flush=True)
try:
    wait_healthy(server, port, 900)
    show(shipped=ask(port, "/v1/model", token=token))
    for label, paths in job["captures"].items():
        for path in paths:
            with open(path, "rb") as f:
                ask(port, "/v1/captures/" + urllib.parse.quote(label, safe=""), f.read(), "image/jpeg",
                    token=token)
    started = time.monotonic()
    done = subprocess.run(job["deploy"], capture_output=True, text=True, timeout=900)
    show(deploy={"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                 "seconds": round(time.monotonic() - started, 1)})
    show(deployed=ask(port, "/v1/model", token=token))
    for photo in job["photos"]:
        with open(photo, "rb") as f:
            print(json.dumps({"file": photo, **ask(port, "/v1/classify", f.read(), token=token)}), flush=True)
    show(rollback=ask(port, "/v1/model/rollback", b"", token=token))
    show(after=ask(port, "/v1/model", token=token))
finally:
    server.terminate()
    server.wait(60)
"""


@dataclasses.dataclass
class Deploy:
    run: Path
    variant: str
    sha256: str  # the variant's, from the run's export manifest
    captures: dict[str, list[Path]]  # label: photos POSTed before the deploy, which scores the model on them
    photos: list[str]  # classified after the deploy, relative to PHOTOS (none of them captured)
    x86: dict[str, str]  # the label of each, by this machine's `classify` of the variant


def plan_deploy(run_dir: Path | None, shipped: str, photos: Path, x86: dict[str, dict],
                edge_python: Path) -> Deploy | None:
    """The run's variant to deploy, the captures and photos, and x86's labels of them with that variant.

    None, said in one line, when there is no run folder or no other variant in it."""
    if run_dir is None:
        log("deploy skipped: a bundle alone holds one variant; give pi-check the run folder "
            "(`make pi-check` does) to deploy another")
        return None
    if not (run_dir / "export" / "manifest.json").is_file():
        log(f"deploy skipped: {run_dir}/export/manifest.json is missing; `noodle export {run_dir}` writes it")
        return None
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    variant = next((v for v in DEPLOY_VARIANTS if v != shipped and v in manifest["models"]
                    and (run_dir / "export" / manifest["models"][v]["file"]).is_file()), None)
    if variant is None:
        log(f"deploy skipped: {run_dir}/export/ has no variant but {shipped}; `noodle export` writes "
            "the others")
        return None
    from edge.captures import CaptureError, check_label

    by_class: dict[str, list[str]] = {}
    for f in sorted(x86):
        if len(Path(f).parts) > 1:  # in a class folder, whose name is the capture's label
            by_class.setdefault(Path(f).parts[0], []).append(f)
    captures = {}
    for label, files in by_class.items():
        with contextlib.suppress(CaptureError):
            if len(files) > DEPLOY_CAPTURES:
                captures[check_label(label)] = files[-DEPLOY_CAPTURES:]
    taken = {f for files in captures.values() for f in files}
    spare = [f for f in sorted(x86) if f not in taken]
    chosen = [spare[int(i * len(spare) / min(DEPLOY_PHOTOS, len(spare)))]
              for i in range(min(DEPLOY_PHOTOS, len(spare)))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NOODLE_RUNTIME"))}
    model = run_dir / "export" / manifest["models"][variant]["file"]
    ran = run([str(edge_python), "-m", "edge", "classify", str(model), *(str(photos / f) for f in chosen),
               "--json"], env=env)
    labels = {f: row["label"] for f, row in parse_labels(ran.stdout, str(photos)).items()}
    return Deploy(run_dir, variant, manifest["models"][variant]["sha256"],
                  {label: [photos / f for f in files] for label, files in captures.items()}, chosen, labels)


def deploy_problems(rows: dict, deploy: Deploy, shipped_sha: str) -> list[str]:
    """What is wrong with one run of the deploy client, in words (none: it deployed and rolled back)."""
    done, deployed, after = rows.get("deploy", {}), rows.get("deployed", {}), rows.get("after", {})
    if done.get("rc") != 0:
        return [f"`noodle deploy` exited {done.get('rc', 'unrun')}: "
                + (done.get("err") or done.get("out") or "").strip()[-300:]]
    problems = []
    origin = deployed.get("origin") or {}
    if deployed.get("sha256") != deploy.sha256 or origin.get("kind") != "deployed":
        problems.append(f"/v1/model after the deploy shows sha256 {str(deployed.get('sha256'))[:12]} "
                        f"({origin.get('kind')}), not the deployed {deploy.variant}'s {deploy.sha256[:12]}")
    if origin.get("by") != DEPLOY_NAME:
        problems.append(f"/v1/model says it was deployed by {origin.get('by')!r}, not the token's name "
                        f"{DEPLOY_NAME!r}")
    labels = {f: r["label"] for f, r in rows["files"].items()}
    differ = [f for f in deploy.photos if labels.get(f) != deploy.x86.get(f)]
    if differ:
        problems.append(f"labels differ from x86's {deploy.variant} on {len(differ)} of {len(deploy.photos)} "
                        "photo(s): " + ", ".join(f"{f} {labels.get(f)} vs {deploy.x86.get(f)}"
                                                 for f in differ[:5]))
    if after.get("sha256") != shipped_sha or rows.get("rollback", {}).get("sha256") != shipped_sha:
        problems.append(f"after /v1/model/rollback the sha256 is {str(after.get('sha256'))[:12]}, not the "
                        f"shipped {shipped_sha[:12]}")
    return problems


def check_deploy(target: Target, root: Path, binds: dict, env: dict, model: Path, deploy: Deploy,
                 home: Path) -> bool:
    """`noodle deploy` from this machine to serve in the release: /v1/model, labels vs x86, rollback."""
    import secrets

    # One file holds the token for serve (its /tmp), `noodle deploy` and the client: never in `ps`.
    token_file = home / "deploy.token"
    token_file.write_text(f"{DEPLOY_NAME}:{secrets.token_urlsafe(24)}\n")
    token_file.chmod(0o600)
    serve = chroot_argv(root, env, f"cd /bundle && exec ./noodle-edge serve {shlex.quote(str(model))} "
                        f"--captures /tmp/deploy-captures --port {SERVE_PORT} --rate 0 "
                        f"--token-file /tmp/{token_file.name}")
    url = f"http://127.0.0.1:{SERVE_PORT}"
    job = {"serve": serve, "port": SERVE_PORT, "token_file": str(token_file), "log": str(home / "deploy.log"),
           "captures": {label: [str(p) for p in paths] for label, paths in deploy.captures.items()},
           "photos": [str(binds["photos"] / f) for f in deploy.photos],
           "deploy": [sys.executable, "-m", "noodle", "deploy", url, str(deploy.run), "--variant",
                      deploy.variant, "--token-file", str(token_file)]}
    client = write_client(home, "deploy_client.py", DEPLOY_CLIENT)
    start = time.perf_counter()
    # A proxy named in the environment would take even 127.0.0.1's requests, and none is reachable here.
    plain = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    ran = in_namespace(root, binds, [sys.executable, str(client), json.dumps(job)], loopback=True, env=plain)
    seconds = time.perf_counter() - start
    rows = enrol_rows(ran.stdout)
    rows["files"] = {os.path.relpath(f, binds["photos"]): r for f, r in rows["files"].items()}
    manifest = json.loads((Path(binds["bundle"]) / model.parent / "manifest.json").read_text())
    shipped_sha = manifest["models"][model.stem]["sha256"]
    problems = [f"the client exited {ran.returncode}"] if ran.returncode != 0 else []
    problems += deploy_problems(rows, deploy, shipped_sha)
    if not step_passed(target, "deploy from x86", problems, ran, home / "deploy.log"):
        return False
    origin = rows["deployed"]["origin"]
    log(f"{target.release}: deploy from x86: `noodle deploy {url} {deploy.run.name} --variant "
        f"{deploy.variant}` in {rows['deploy']['seconds']} s:")
    for line in rows["deploy"]["out"].strip().splitlines():
        log(f"{target.release}:   noodle deploy | {line}")
    log(f"{target.release}: /v1/model {deploy.sha256[:12]} ({deploy.variant}, {origin.get('kind')} by "
        f"{origin.get('by')}, run {origin.get('run')}); /v1/classify labels equal to x86's "
        f"{deploy.variant} on {len(deploy.photos)} of {len(deploy.photos)} photos; /v1/model/rollback "
        f"restored the shipped sha256 {shipped_sha[:12]} ({seconds:.0f} s under qemu)")
    return True


# picamera2 comes from Raspberry Pi's own apt archive (python3-picamera2), which
# these Debian roots cannot reach; its Python files are on PyPI. Put where the
# apt package puts them, they prove that the bundle's venv sees the system's
# picamera2 (install.sh makes it with --system-site-packages). Importing it
# needs libcamera's bindings, which exist only on a Pi, so the check is that
# the venv finds the module there, not that it runs.
PICAMERA2_RELEASE = "trixie"
SYSTEM_SITE = "usr/lib/python3/dist-packages"


def picamera2_files(cache: Path) -> Path:
    """picamera2's PyPI wheel, downloaded once into the cache."""
    folder = cache / "picamera2"
    wheels = sorted(folder.glob("picamera2-*.whl"))
    if not wheels:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(folder), "picamera2"])
        wheels = sorted(folder.glob("picamera2-*.whl"))
    return wheels[-1]


@contextlib.contextmanager
def system_picamera2(root: Path, cache: Path):
    """picamera2's files in ROOT's dist-packages, as `apt install python3-picamera2` leaves them."""
    import zipfile

    with zipfile.ZipFile(picamera2_files(cache)) as wheel:
        wheel.extractall(root / SYSTEM_SITE, [n for n in wheel.namelist() if n.startswith("picamera2/")])
    try:
        yield
    finally:
        shutil.rmtree(root / SYSTEM_SITE / "picamera2", ignore_errors=True)  # the cached root stays Debian's


def check_picamera2(root: Path, binds: dict, env: dict) -> None:
    """The bundle's venv in ROOT finds the system's picamera2 (install.sh saw it and let it through)."""
    found = in_root(root, binds, "cd /bundle && .venv/bin/python -c 'import importlib.util as u; "
                    "print(u.find_spec(\"picamera2\").origin)'", env)
    origin = found.stdout.strip()
    if found.returncode != 0 or not origin.startswith(f"/{SYSTEM_SITE}/picamera2/"):
        raise CheckFailed(f"{PICAMERA2_RELEASE}: the bundle's .venv does not see the system's picamera2 "
                          f"({origin or found.stderr.strip()[-200:]})")
    log(f"{PICAMERA2_RELEASE}: the bundle's .venv finds the system's picamera2 at {origin}")


def sample_photos(photos: Path, count: int, into: Path) -> Path:
    """`count` of the photos under `photos`, evenly spaced through each folder's sorted files, copied.

    Each folder (a class, in a labelled layout) keeps its share, so both
    labels are exercised; all of them when there are no more than `count`.
    """
    from edge.preprocess import is_image_file

    files = sorted(p for p in photos.rglob("*") if p.is_file() and is_image_file(p))
    if len(files) <= count:
        return photos
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    chosen = []
    for group in by_folder.values():
        share = max(1, round(count * len(group) / len(files)))
        chosen += [group[int(i * len(group) / share)] for i in range(share)]
    for f in chosen:
        dest = into / f.relative_to(photos)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    log(f"{photos}: {len(chosen)} of its {len(files)} photos, evenly spaced through each folder (--sample)")
    return into


def check(bundle: Path, photos: Path, releases: list[Target], cache: Path, edge_python: Path,
          sample: int = 0, run_dir: Path | None = None) -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
        work = Path(tmp)
        source = photos
        if sample:
            photos = sample_photos(photos, sample, work / "photos")
        host_dir = unpack(bundle, work / "x86")
        wheels = sorted((host_dir / "wheels").glob("*.whl"))
        if not wheels:
            raise CheckFailed(f"{bundle}: no wheels/ in the bundle, so the offline install cannot be proven; "
                              "make it with `make bundle` (not WHEELS=0)")
        found = export_outcome(json.loads((host_dir / "model/manifest.json").read_text()).get("validation"))
        log(f"{bundle.name}: {bundle.stat().st_size / 2**20:.1f} MiB, {len(wheels)} wheels; {found.line}")
        model = next(host_dir.glob("model/*.tflite")).relative_to(host_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NOODLE_RUNTIME"))}
        ran = run([str(edge_python), "-m", "edge", "classify", str(model), str(photos), "--json", "-v"],
                  cwd=host_dir, env=env)
        x86 = parse_labels(ran.stdout, str(photos))
        log(f"x86 ({edge_python.parent.parent.name}): {said(ran.stderr, r'runtime ([^;]+);')}, "
            f"{len(x86)} photos")
        clip = make_clip(photos, work, host_dir, model)
        enrol = plan_enrol(source, x86, host_dir, model, edge_python, work)
        deploy = plan_deploy(run_dir, model.stem, photos, x86, edge_python)
        passed = []
        with aarch64_binfmt():
            for target in releases:
                if check_release(target, bundle, photos, cache, x86, work, clip, enrol, deploy):
                    passed.append(target.release)
    failed = [r.release for r in releases if r.release not in passed]
    log(f"{'FAILED on ' + ', '.join(failed) if failed else 'passed on ' + ', '.join(passed)} "
        f"in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    source: Annotated[Path, typer.Argument(
        help="A bundle (.tar.gz), or a run folder whose bundle `noodle bundle` wrote into --dist.")],
    photos: Annotated[Path, typer.Argument(help="Photos to classify on x86 and on each release.")],
    model: Annotated[str, typer.Option(help="The bundled variant, with a run folder.")] = DEFAULT_MODEL,
    dist: Annotated[Path, typer.Option(
        help="Where `noodle bundle` wrote it, with a run folder.")] = Path("dist"),
    releases: Annotated[str, typer.Option(
        help=f"Space-separated, of: {', '.join(RELEASES)}.")] = " ".join(RELEASES),
    cache: Annotated[Path, typer.Option(help="Where the roots are kept.")] = ROOT / ".cache",
    edge_python: Annotated[Path, typer.Option(
        help="The x86 device environment's python.")] = ROOT / ".venv-edge/bin/python",
    sample: Annotated[int, typer.Option(
        min=0, help="Classify only this many of the photos (0: all): an EfficientNet under qemu "
                    "takes seconds a photo.")] = 0,
) -> None:
    """Install the bundle offline on each Pi release under qemu and compare its labels with x86's."""
    try:
        bundle = source if source.name.endswith(".tar.gz") else bundle_path(source, model, dist)
        if not bundle.is_file():
            raise CheckFailed(f"{bundle}: no such bundle; `make bundle` writes it")
        unknown = [r for r in releases.split() if r not in RELEASES]
        if unknown or not releases.split():
            raise CheckFailed(f"--releases {releases!r}: use some of {', '.join(RELEASES)}")
        code = check(bundle.resolve(), photos.resolve(), [RELEASES[r] for r in releases.split()],
                     cache.resolve(), edge_python.absolute(), sample,
                     None if source.name.endswith(".tar.gz") else source.resolve())
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"pi-check: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="python -m bench.pi_check")
