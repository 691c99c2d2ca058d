"""`noodle bundle`: one tarball with all a Raspberry Pi needs to run a model.

    noodle-edge-<run name>-<variant>/
        edge/                the device modules of the runner package, nothing host-only
        model/               the chosen .tflite and its manifest (that model only)
        requirements-pi.in   the `edge` extra and base dependencies of pyproject.toml
        requirements-pi.txt  with wheels: every wheel in wheels/ by version and sha256
        wheels/              with wheels: aarch64 wheels for Bookworm and Trixie (export.wheelhouse)
        install.sh           makes .venv (offline from wheels/ when present), --service for boot
        noodle-edge          runs `python -m edge` from that venv
        noodle-edge.service  the systemd unit template install.sh fills in
        README-PI.md         the commands to type on the Pi

The templates live in export/pi/. The tarball is written to a temporary name
and renamed, so dist/ never holds half of one.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import NoodleError, one_line_errors
from edge.manifest import MANIFEST_NAME, RunDir, atomic_output, load_export, sha256_file
from edge.runtime import package_version
from export.wheelhouse import TARGETS, pinned_requirements, pip_download, target_environment, wheels_for

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "pi"
EDGE = ROOT / "edge"
DISTRIBUTION = "noodle-kit"
# The extra in pyproject.toml that names the device's interpreter.
EXTRA = "edge"
# The int8 model: a quarter of float32's size, and the Pi's integer kernels are its fast path.
DEFAULT_MODEL = "int8"
EXECUTABLE = {"install.sh", "noodle-edge"}
TEMPLATE_FILES = ("install.sh", "noodle-edge", "noodle-edge.service", "README-PI.md")
# Where `make bundle` keeps downloaded wheels, so bundling again is offline and fast.
WHEEL_CACHE = Path(".cache/wheels")
# Packages a device module may not import: the Pi has numpy, Pillow, typer and an interpreter.
HOST_ONLY = {"train", "export", "bench", "tests", "tensorflow", "keras", "pytest"}


class BundleError(NoodleError):
    pass


def version() -> str:
    installed = package_version(DISTRIBUTION)
    if installed is None:
        found = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        return found.group(1) if found else "0"
    return installed


def pi_requirements() -> list[str]:
    """The runner's requirements: base dependencies plus the `edge` extra, markers kept.

    Read from the installed metadata of this package, whose source is
    pyproject.toml, so the Pi installs what `make edge-env` tested.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{DISTRIBUTION} is not installed here; run `make setup` first") from None
    from packaging.requirements import Requirement

    lines = []
    for line in declared:
        req = Requirement(line)
        marker = str(req.marker) if req.marker is not None else ""
        if "extra ==" in marker and not any(req.marker.evaluate({**target_environment(t), "extra": EXTRA})
                                            for t in TARGETS):
            continue  # another extra's (train, litert, ...)
        # packaging writes markers in one normal form, so the extra's clause reads exactly so.
        for clause in (f' and extra == "{EXTRA}"', f'extra == "{EXTRA}" and ', f'extra == "{EXTRA}"'):
            marker = marker.replace(clause, "")
        spec = f"{req.name}{req.specifier}"
        lines.append(f"{spec}; {marker}" if marker else spec)
    return lines


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


def bundle_path(run_dir: str | Path, variant: str = DEFAULT_MODEL, out: str | Path = "dist") -> Path:
    """dist/noodle-edge-<run name>-<variant>.tar.gz: where `noodle bundle` writes, and pi-check looks."""
    return Path(out) / f"noodle-edge-{Path(run_dir).resolve().name}-{variant}.tar.gz"


def _render(name: str, values: dict[str, str]) -> bytes:
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode()


def write_bundle(run_dir: str | Path, variant: str = DEFAULT_MODEL, out: str | Path = "dist",
                 log=print, wheel_cache: Path | None = None, download=pip_download) -> Path:
    """Write OUT/noodle-edge-<run name>-<variant>.tar.gz; return its path.

    With WHEEL_CACHE, the tarball carries every target release's wheels and
    requirements-pi.txt pins them; without, the Pi installs from the index.
    """
    run = RunDir(run_dir)
    manifest = load_export(run.export_manifest)
    # Only an export whose validation finished and passed ships: one killed
    # during validation has files and a manifest but no proof they run.
    if not (manifest.validation or {}).get("passed"):
        state = "did not pass" if manifest.validation else "never finished"
        raise BundleError(f"{run.export_manifest}: the export's validation {state}; "
                          f"run `noodle export {run_dir}` and bundle when it succeeds")
    entry = manifest.entry(variant)
    if entry is None:
        have = ", ".join(manifest.models) or "none"
        failed = (manifest.failed or {}).get(variant)
        raise BundleError(f"{run.export_manifest}: no {variant} model"
                          + (f" (its export failed: {failed})" if failed else "")
                          + f"; exported: {have}; pick one with MODEL=... or re-run `noodle export`")
    model = run.export / entry.file
    if not model.is_file():
        raise BundleError(f"{model}: missing; re-run `noodle export {run_dir}`")
    if entry.sha256 and sha256_file(model) != entry.sha256:
        raise BundleError(f"{model}: sha256 differs from {run.export_manifest}; re-run `noodle export`")
    # The device's manifest lists the one model it gets; the rest of the export stays home.
    shipped = dataclasses.replace(manifest, models={variant: entry}, failed=None)

    ver = version()
    dest = bundle_path(run_dir, variant, out)
    top = dest.name.removesuffix(".tar.gz")
    values = {"VERSION": ver, "TOP": top, "MODEL_FILE": entry.file, "VARIANT": variant,
              "SIZE": f"{manifest.input.height}x{manifest.input.width}", "LABELS": ", ".join(manifest.labels)}
    files: dict[str, bytes | Path] = device_sources()
    files[f"model/{entry.file}"] = model
    files[f"model/{MANIFEST_NAME}"] = (json.dumps(shipped.to_dict(), indent=2) + "\n").encode()
    requirements = pi_requirements()
    files["requirements-pi.in"] = ("# Written by `noodle bundle` from pyproject.toml: the runner's "
                                   "dependencies and the `edge` extra.\n"
                                   + "\n".join(requirements) + "\n").encode()
    wheels = []
    if wheel_cache is not None:
        groups = {target: wheels_for(target, requirements, Path(wheel_cache), download) for target in TARGETS}
        files["requirements-pi.txt"] = pinned_requirements(groups).encode()
        wheels = sorted({wheel.path for group in groups.values() for wheel in group})
        files.update({f"wheels/{path.name}": path for path in wheels})
    for name in TEMPLATE_FILES:
        files[name] = _render(name, values)

    now = int(time.time())
    # Wheels are already compressed: a light gzip level saves seconds and costs nothing in size.
    with atomic_output(dest, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = data.stat().st_size if isinstance(data, Path) else len(data)
            info.mtime, info.mode = now, 0o755 if name in EXECUTABLE else 0o644
            with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as stream:
                tar.addfile(info, stream)
    shipped_wheels = (f"{len(wheels)} wheels for {', '.join(t.release for t in TARGETS)} "
                      f"({sum(p.stat().st_size for p in wheels) / 2**20:.1f} MiB)" if wheels
                      else "no wheels (the Pi installs from the index)")
    log(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MiB): {variant} model "
        f"{entry.bytes / 1024:.0f} KiB, {shipped_wheels}")
    return dest


app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("bundle")
@one_line_errors
def bundle_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder whose export/ holds the model.")],
    model: Annotated[str, typer.Option(help="Which exported variant to ship.")] = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for the tarball.")] = Path("dist"),
    wheels: Annotated[bool, typer.Option(
        help="Ship the aarch64 wheels for an offline install (about 60 MB); --no-wheels installs "
             "from the index on the Pi.")] = True,
    wheel_cache: Annotated[Path, typer.Option(help="Where downloaded wheels are kept.")] = WHEEL_CACHE,
) -> None:
    """Write dist/noodle-edge-<run>-<variant>.tar.gz: runner, model, wheels, install.sh, README-PI.md.

    The last line printed is the tarball's path.
    """
    path = write_bundle(run_dir, model, out, log=typer.echo, wheel_cache=wheel_cache if wheels else None)
    typer.echo(path)
