"""`noodle bundle`: one tarball with all a Raspberry Pi needs to run a model.

    noodle-edge-<run name>-<variant>/    (-online/ without wheels: another name, another tarball)
        edge/                the device modules of the runner package, nothing host-only
        model/               the chosen .tflite and its manifest (that model only); for lite0 also
                             embed.tflite and features.npz, what `noodle-edge teach` needs
        requirements-pi.in   the `edge` extra and base dependencies of pyproject.toml
        requirements-pi.txt  every aarch64 wheel for Bookworm and Trixie, by version and sha256
        requirements-camera.in/.txt  the same for `install.sh --camera` (OpenCV, for --source)
        wheels/              with wheels: those wheels, so the Pi installs offline (export.wheelhouse)
        install.sh           makes .venv (offline from wheels/ when present), --service for boot
        noodle-edge          runs `python -m edge` from that venv
        noodle-edge.service  the systemd unit template install.sh fills in
        README-PI.md         the commands to type on the Pi
        SHA256SUMS           the sha256 of every file above (edge.integrity): install.sh checks
                             them all before anything runs, the runner its own at start

The templates live in export/pi/. The tarball is written to a temporary name
and renamed, so dist/ never holds half of one; its sha256 is printed, for
checking the copy on the Pi, and so is SHA256SUMS's, which install.sh prints.
A bundle without wheels is pinned by sha256 all the same: its wheels are
downloaded into the wheel cache to pin them (once; the offline bundle uses the
same cache), and only the pins ship. Its members are plain files under the top
folder, never a link, an absolute path or `..`; `unpack` (pi-check, the
tests) refuses a tarball with any such member before writing anything.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import logging
import re
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from edge.atomic import atomic_output
from edge.errors import NoodleError, one_line_errors
from edge.escape import escape_name, markdown
from edge.integrity import SUMS, format_sums
from edge.manifest import MANIFEST_NAME, load_export, load_run, sha256_file
from edge.runtime import package_version
from edge.serve_config import DEFAULTS as SERVE
from export import embed, wheelhouse
from export.gate import Outcome, export_outcome
from export.wheelhouse import TARGETS, Wheel, pinned_requirements, target_environment, wheels_for
from train.rundir import RunDir

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "pi"
EDGE = ROOT / "edge"
DISTRIBUTION = "noodle-kit"
# The extras in pyproject.toml the Pi installs: the device's interpreter, and serve's MQTT
# client (pure Python and small, so `noodle-edge serve --mqtt` works offline too).
EXTRA = "edge"
SERVE_EXTRA = "serve"
# The int8 model: a quarter of float32's size, and the Pi's integer kernels are its fast path.
DEFAULT_MODEL = "int8"
EXECUTABLE = {"install.sh", "noodle-edge"}
TEMPLATE_FILES = ("install.sh", "noodle-edge", "noodle-edge.service", "README-PI.md")
# Where `make bundle` keeps downloaded wheels, so bundling again is offline and fast.
WHEEL_CACHE = Path(".cache/wheels")
# Packages a device module may not import: the Pi has numpy, Pillow, typer and an interpreter.
HOST_ONLY = {"train", "export", "bench", "tests", "tensorflow", "keras", "pytest"}
# What a model file or variant may be named to ship: install.sh and README-PI.md
# put the names into shell commands and Markdown as they are.
SHIPPABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The extra of pyproject.toml that `install.sh --camera` adds: OpenCV, for --source.
CAMERA_EXTRA = "camera"
CAMERA_PINS = ("# Written by `noodle bundle`: what `./install.sh --camera` adds to requirements-pi.txt",
               "# (OpenCV, for --source: a USB camera, a video file), resolved against that file's numpy",
               "# and pinned by version and sha256 per release; requirements-camera.in holds the ranges.")
# A noodle-edge command or option name, as install.sh's COMMANDS holds it.
OPTION_WORD = re.compile(r"-{0,2}[a-z0-9][a-z0-9-]*", re.I)
# The name's ending of a bundle without wheels/, which installs from the package index.
ONLINE = "-online"
# How many labels README-PI.md lists, and how many characters of each.
README_LABELS, README_LABEL_WIDTH = 20, 60


class BundleError(NoodleError):
    pass


def version() -> str:
    installed = package_version(DISTRIBUTION)
    if installed is None:
        found = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        return found.group(1) if found else "0"
    return installed


def pi_requirements(*extras: str) -> list[str]:
    """The runner's requirements: base dependencies plus `extras` (default: edge and serve), markers kept.

    Read from the installed metadata of this package, whose source is
    pyproject.toml, so the Pi installs what `make edge-env` tested.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{DISTRIBUTION} is not installed here; run `make setup` first") from None
    from packaging.requirements import Requirement

    extras = extras or (EXTRA, SERVE_EXTRA)
    lines = []
    for line in declared:
        req = Requirement(line)
        marker = str(req.marker) if req.marker is not None else ""
        if "extra ==" in marker and not any(req.marker.evaluate({**target_environment(t), "extra": extra})
                                            for t in TARGETS for extra in extras):
            continue  # another extra's (train, litert, ...)
        # packaging writes markers in one normal form, so the extra's clause reads exactly so.
        for extra in extras:
            for clause in (f' and extra == "{extra}"', f'extra == "{extra}" and ', f'extra == "{extra}"'):
                marker = marker.replace(clause, "")
        spec = f"{req.name}{req.specifier}"
        lines.append(f"{spec}; {marker}" if marker else spec)
    return lines


def runner_commands() -> str:
    """install.sh's COMMANDS: a line per noodle-edge command, its name then every option it takes."""
    import typer.main

    from edge.cli import app as edge_app

    lines = []
    for name, command in sorted(typer.main.get_command(edge_app).commands.items()):
        options = sorted({o for p in command.params for o in (*p.opts, *p.secondary_opts) if o[:1] == "-"})
        words = [name, *options]
        # The lines go between single quotes in a shell script.
        if not all(OPTION_WORD.fullmatch(w) for w in words):
            raise BundleError(f"edge/cli.py: noodle-edge {escape_name(name)} has a command or option name "
                              "install.sh cannot check; name commands and options in letters, digits and '-'")
        lines.append(" ".join(words))
    return "\n".join(lines)


def camera_requirements() -> list[str]:
    """What `install.sh --camera` adds: the `camera` extra of pyproject.toml (OpenCV), without the base."""
    base = set(pi_requirements())
    return [line for line in pi_requirements(CAMERA_EXTRA) if line not in base]


def camera_wheels(target, base: list[Wheel], requirements: list[str], cache: Path, download) -> list[Wheel]:
    """TARGET's camera wheels, resolved against its base wheels pinned as they are.

    So the OpenCV shipped is one that runs with the numpy the runner has:
    on Bookworm numpy < 2 (tflite-runtime 2.14) picks opencv-python-headless
    4.11.0.86, the last built against numpy 1.x, where an unpinned install
    would pull numpy 2 and break the runtime.
    """
    pins = [f"{wheel.name}=={wheel.version}" for wheel in base]
    have = {wheel.path.name for wheel in base}
    return [wheel for wheel in wheels_for(target, requirements + pins, cache, download)
            if wheel.path.name not in have]


def device_sources() -> dict[str, bytes]:
    """edge/*.py by archive name, refusing a module that imports host-only code."""
    files = {}
    for source in sorted(EDGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_bytes(), str(source))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            host = [n for n in names if n.split(".")[0] in HOST_ONLY]
            if host:
                raise BundleError(f"{source}: imports {host[0]}, which the device does not have; "
                                  "keep host-only code out of edge/")
        files[f"edge/{source.name}"] = source.read_bytes()
    return files


def bundle_path(run_dir: str | Path, variant: str = DEFAULT_MODEL, out: str | Path = "dist",
                wheels: bool = True) -> Path:
    """Where `noodle bundle` writes, and pi-check looks: dist/noodle-edge-<run name>-<variant>.tar.gz.

    A bundle without wheels ends `-online.tar.gz` instead: it never replaces the offline one.
    """
    ending = "" if wheels else ONLINE
    return Path(out) / f"noodle-edge-{Path(run_dir).resolve().name}-{variant}{ending}.tar.gz"


def _render(name: str, values: dict[str, str]) -> bytes:
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode()


def write_bundle(run_dir: str | Path, variant: str = DEFAULT_MODEL, out: str | Path = "dist",
                 wheels: bool = False, wheel_cache: Path | None = None, download=None,
                 force: bool = False) -> Path:
    """Write OUT/noodle-edge-<run name>-<variant>.tar.gz (-online.tar.gz without wheels); return its path.

    requirements-pi.txt pins every target release's wheels by sha256, from
    WHEEL_CACHE (downloaded there by DOWNLOAD, pip by default, when missing).
    With WHEELS the tarball carries them too; without, the Pi fetches exactly
    those files from the index.
    """
    wheel_cache = Path(wheel_cache if wheel_cache is not None else WHEEL_CACHE)
    download = download or wheelhouse.pip_download
    run = RunDir(run_dir)
    log.info(f"bundling {escape_name(str(run_dir))}: its {escape_name(variant)} model, {trained_on(run)}")
    manifest, entry, model = _shippable(run, run_dir, variant, force)
    # The device's manifest lists the one model it gets; the rest of the export stays home.
    shipped = dataclasses.replace(manifest, models={variant: entry}, failed=None)

    ver = version()
    dest = bundle_path(run_dir, variant, out, wheels=wheels)
    top = dest.name.removesuffix(".tar.gz")
    values = {"VERSION": ver, "TOP": top, "MODEL_FILE": entry.file, "VARIANT": variant,
              "SIZE": f"{manifest.input.height}x{manifest.input.width}",
              "LABELS": readme_labels(manifest.labels), "COMMANDS": runner_commands(),
              "PORT": str(SERVE.port)}
    files: dict[str, bytes | Path] = device_sources()
    files[f"model/{entry.file}"] = model
    files["edge/VERSION"] = f"{ver}\n".encode()  # HA's sw_version on the Pi (edge.serve_mqtt)
    files[f"model/{MANIFEST_NAME}"] = (json.dumps(shipped.to_dict(), indent=2) + "\n").encode()
    # For `noodle-edge teach` (lite0): the backbone's features model and the shipped classes' features.
    files.update({f"model/{name}": path for name, path in embed.shipped_files(run.export).items()})
    shipped_wheels = _requirements(files, values, wheels, wheel_cache, download)
    for name in TEMPLATE_FILES:
        files[name] = _render(name, values)
    files[SUMS] = checksum_list(files)

    _write_tar(dest, top, files)
    log.info(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MiB): {variant} model "
             f"{entry.bytes / 1024:.0f} KiB, {shipped_wheels}")
    log.info(f"sha256 {sha256_file(dest)}  {dest.name} (on the Pi, `sha256sum {dest.name}` must print the "
             "same; README-PI.md)")
    log.info(f"sha256 {hashlib.sha256(files[SUMS]).hexdigest()}  {top}/{SUMS} (./install.sh prints it "
             f"before it installs: the same digits, or the list was rewritten)")
    return dest


def _requirements(files: dict[str, bytes | Path], values: dict[str, str], wheels: bool, wheel_cache: Path,
                  download) -> str:
    """The requirement files (and with WHEELS the wheels) into `files`; what ships, said in words."""
    requirements = pi_requirements()
    files["requirements-pi.in"] = ("# Written by `noodle bundle` from pyproject.toml: the runner's "
                                   "dependencies and the `edge` and `serve` extras.\n"
                                   + "\n".join(requirements) + "\n").encode()
    camera = camera_requirements()
    files["requirements-camera.in"] = ("# Written by `noodle bundle` from pyproject.toml's `camera` "
                                       "extra: what `./install.sh --camera` adds.\n"
                                       + "\n".join(camera) + "\n").encode()
    # Pinned by sha256 with or without wheels/: an online install fetches exactly these files.
    groups = {target: wheels_for(target, requirements, wheel_cache, download) for target in TARGETS}
    files["requirements-pi.txt"] = pinned_requirements(groups).encode()
    cameras = {target: camera_wheels(target, groups[target], camera, wheel_cache, download)
               for target in TARGETS}
    files["requirements-camera.txt"] = pinned_requirements(cameras, CAMERA_PINS).encode()
    pinned = sorted({wheel.path for group in (*groups.values(), *cameras.values()) for wheel in group})
    shipped_opencv = ", ".join(f"{' '.join(f'{w.name} {w.version}' for w in group) or 'nothing'} on "
                               f"{target.release.capitalize()}" for target, group in cameras.items())
    if wheels:
        files.update({f"wheels/{path.name}": path for path in pinned})
        values["OPENCV"] = f"{shipped_opencv}, offline from `wheels/`"
        shipped_wheels = (f"{len(pinned)} wheels for {', '.join(t.release for t in TARGETS)} "
                          f"({sum(p.stat().st_size for p in pinned) / 2**20:.1f} MiB); for --camera "
                          f"{shipped_opencv}")
    else:
        values["OPENCV"] = f"{shipped_opencv}, from the package index (this bundle has no `wheels/`)"
        shipped_wheels = (f"no wheels: the Pi fetches the {len(pinned)} that requirements-pi.txt and "
                          "requirements-camera.txt pin by sha256 from the index")
    return shipped_wheels


def checksum_list(files: dict[str, bytes | Path]) -> bytes:
    """SHA256SUMS: every file of the bundle by its sha256, sorted by path (edge.integrity)."""
    digests = {name: sha256_file(data) if isinstance(data, Path) else hashlib.sha256(data).hexdigest()
               for name, data in files.items()}
    return format_sums(digests).encode()


def _shippable(run: RunDir, run_dir, variant: str, force: bool = False):
    """(export manifest, the variant's entry, its file), refused in one line unless it may ship."""
    manifest = load_export(run.export_manifest)
    # Only an export that passed ships (export.gate's one reading): one killed during validation
    # has files but no proof they run; one the --max-drop gate failed or left undecided, only --force.
    found = export_outcome(manifest.validation)
    if found.outcome is not Outcome.passed and not (force and found.forcible):
        hint = (" (to ship it anyway: `noodle bundle --force`, make bundle FORCE=1)" if found.forcible
                else f"; run `noodle export {run_dir}` and bundle when it succeeds")
        raise BundleError(f"{run.export_manifest}: nothing ships from this export: {found.line}{hint}")
    if found.outcome is not Outcome.passed:
        log.warning(f"--force: bundling an export that did not pass: {found.line}")
    entry = manifest.entry(variant)
    if entry is None:
        have = ", ".join(manifest.models) or "none"
        failed = (manifest.failed or {}).get(variant)
        raise BundleError(f"{run.export_manifest}: no {variant} model"
                          + (f" (its export failed: {failed})" if failed else "")
                          + f"; exported: {have}; pick one with MODEL=... or re-run `noodle export`")
    model = _model_file(run, variant, entry.file)
    if not model.is_file():
        raise BundleError(f"{model}: missing; re-run `noodle export {run_dir}`")
    if entry.sha256 and sha256_file(model) != entry.sha256:
        raise BundleError(f"{model}: sha256 differs from {run.export_manifest}; re-run `noodle export`")
    return manifest, entry, model


def _write_tar(dest: Path, top: str, files: dict[str, bytes | Path]) -> None:
    """The tarball, atomically: every member under TOP/, the executables 0755."""
    now = int(time.time())
    for name in files:
        check_member_name(f"{top}/{name}", dest)
    # Wheels are already compressed: a light gzip level saves seconds and costs nothing in size.
    with atomic_output(dest, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = data.stat().st_size if isinstance(data, Path) else len(data)
            info.mtime, info.mode = now, 0o755 if name in EXECUTABLE else 0o644
            with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as stream:
                tar.addfile(info, stream)


def trained_on(run: RunDir) -> str:
    """Which data the run's model learned, as its manifest (`noodle train`'s) records it."""
    try:
        trained = load_run(run.manifest)
        return f"trained on {escape_name(trained.data['root'])} ({len(trained.labels)} classes)"
    except (NoodleError, KeyError, TypeError):
        return f"trained on data {run.manifest} does not name"


def _model_file(run: RunDir, variant: str, name: str) -> Path:
    """The export's model file for `variant`, refused unless it is a plain file inside RUN/export/."""
    field = f"{run.export_manifest}: models.{variant}.file"
    if not SHIPPABLE_NAME.fullmatch(name) or not SHIPPABLE_NAME.fullmatch(variant):
        raise BundleError(f"{field} '{escape_name(name)}' (variant '{escape_name(variant)}'): a bundle "
                          "ships names of letters, digits, '.', '_' and '-' only; re-run `noodle export`")
    model = run.export / name
    if model.is_symlink() or (model.exists() and model.resolve().parent != run.export.resolve()):
        raise BundleError(f"{field}: {model} is a link, out of the export folder perhaps; a bundle "
                          "ships the file `noodle export` wrote: re-run it")
    return model


def readme_labels(labels: list[str]) -> str:
    """The labels for README-PI.md's prose: escaped for Markdown, long ones and long lists cut."""
    shown = [markdown(label, README_LABEL_WIDTH) for label in labels[:README_LABELS]]
    more = len(labels) - len(shown)
    return ", ".join(shown) + (f" and {more} more (model/manifest.json lists them)" if more > 0 else "")


def check_member_name(name: str, where: Path | str) -> None:
    """A tarball member's name: relative, under one top folder, no `..`, no backslash."""
    parts = PurePosixPath(name).parts
    if (not parts or name.startswith("/") or ".." in parts or "\\" in name or ":" in parts[0]
            or not name.isprintable()):
        raise BundleError(f"{where}: member '{escape_name(name)}' is an absolute path or climbs out with "
                          "'..'; the tarball was altered or is not a noodle bundle: make it again with "
                          "`noodle bundle`")


def check_members(tar: tarfile.TarFile, where: Path | str) -> list[tarfile.TarInfo]:
    """Every member of a bundle, refused as a whole unless each is a plain file or folder inside it."""
    members = tar.getmembers()
    for member in members:
        check_member_name(member.name, where)
        if not (member.isfile() or member.isdir()):
            kind = ("a symlink" if member.issym() else "a hard link" if member.islnk()
                    else "a device or other special file")
            raise BundleError(f"{where}: member '{escape_name(member.name)}' is {kind}; a noodle bundle "
                              "holds plain files only: make it again with `noodle bundle`")
    return members


def unpack(bundle: Path, into: Path) -> Path:
    """Unpack a bundle into INTO (made, or empty); return its top folder. Nothing lands outside INTO.

    Every member is checked before any is written (check_members), and
    tarfile's `data` filter, where this Python has it, checks them again.
    """
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(bundle) as tar:
            members = check_members(tar, bundle)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, members, filter="data")
            else:
                tar.extractall(into, members)  # noqa: S202 (every member checked above)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{bundle}: cannot unpack it ({exc}); copy it again") from None
    tops = sorted({PurePosixPath(m.name).parts[0] for m in members})
    if len(tops) != 1 or not (into / tops[0]).is_dir():
        raise BundleError(f"{bundle}: expected one top folder, found {tops}; "
                          "make it again with `noodle bundle`")
    return into / tops[0]


app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("bundle")
@one_line_errors
def bundle_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder whose export/ holds the model.")],
    model: Annotated[str, typer.Option(help="Which exported variant to ship.")] = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for the tarball.")] = Path("dist"),
    wheels: Annotated[bool, typer.Option(
        help="Ship the aarch64 wheels for an offline install (about 60 MB); --no-wheels ships only "
             "their sha256 pins, and the Pi fetches them from the index.")] = True,
    wheel_cache: Annotated[Path | None, typer.Option(
        help=f"Where downloaded wheels are kept (default {WHEEL_CACHE}); --no-wheels uses them too, "
             "to pin each by sha256.", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Ship an export whose --max-drop gate failed or was undecided (never one whose "
                        "validation failed).")] = False,
) -> None:
    """Write dist/noodle-edge-<run>-<variant>.tar.gz: runner, model, wheels, install.sh, README-PI.md.

    With --no-wheels it is named <variant>-online.tar.gz, so the offline one stays.

    The last line printed is the tarball's path.
    """
    from train.quiet import show_progress

    show_progress()
    path = write_bundle(run_dir, model, out, wheels=wheels, wheel_cache=wheel_cache, force=force)
    typer.echo(path)
