"""`noodle bundle`: one tarball with all a Raspberry Pi needs to run a model.

    noodle-edge-<version>/
        edge/               the runner package, as it is in this checkout
        model/              the chosen .tflite and its manifest (that model only)
        requirements-pi.txt from the `edge` extra and base dependencies of pyproject.toml
        install.sh          makes .venv and installs the requirements
        noodle-edge         runs `python -m edge` from that venv
        README-PI.md        the three commands to type on the Pi

The templates live in export/pi/. The tarball is written to a temporary name
and renamed, so dist/ never holds half of one.
"""
from __future__ import annotations

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
from edge.manifest import MANIFEST_NAME, atomic_output, read_manifest, sha256_file

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "pi"
EDGE = ROOT / "edge"
DISTRIBUTION = "noodle-kit"
# The int8 model: a quarter of float32's size, and the Pi's integer kernels are its fast path.
DEFAULT_MODEL = "int8"
EXECUTABLE = {"install.sh", "noodle-edge"}


class BundleError(NoodleError):
    pass


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        found = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        return found.group(1) if found else "0"


def pi_requirements() -> list[str]:
    """The runner's requirements: base dependencies plus the `edge` extra, markers kept.

    Read from the installed metadata of this package, whose source is
    pyproject.toml, so the Pi installs what `make edge-env` tested.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{DISTRIBUTION} is not installed here; run `make setup` first") from None
    lines = []
    for req in declared:
        spec, _, marker = (part.strip() for part in req.partition(";"))
        extra = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if extra and extra.group(1) != "edge":
            continue
        marker = re.sub(r'\s*(and\s+)?extra\s*==\s*"edge"(\s+and)?\s*', " ", marker).strip()
        lines.append(f"{spec}; {marker}" if marker else spec)
    return lines


def _render(name: str, values: dict[str, str]) -> bytes:
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode()


def write_bundle(run_dir: str | Path, variant: str = DEFAULT_MODEL, out: str | Path = "dist",
                 log=print) -> Path:
    """Write dist/noodle-edge-<version>.tar.gz for RUN_DIR/export/<variant>; return its path."""
    export = Path(run_dir) / "export"
    manifest = read_manifest(export / MANIFEST_NAME)
    entry = manifest.get("models", {}).get(variant)
    if entry is None:
        have = ", ".join(manifest.get("models", {})) or "none"
        failed = manifest.get("failed", {}).get(variant)
        raise BundleError(f"{export / MANIFEST_NAME}: no {variant} model"
                          + (f" (its export failed: {failed})" if failed else "")
                          + f"; exported: {have}; pick one with MODEL=... or re-run `noodle export`")
    model = export / entry["file"]
    if not model.is_file():
        raise BundleError(f"{model}: missing; re-run `noodle export {run_dir}`")
    if entry.get("sha256") and sha256_file(model) != entry["sha256"]:
        raise BundleError(f"{model}: sha256 differs from {export / MANIFEST_NAME}; re-run `noodle export`")
    # The device's manifest lists the one model it gets; the rest of the export stays home.
    shipped = {k: v for k, v in manifest.items() if k not in ("models", "failed")}
    shipped["models"] = {variant: entry}

    ver = version()
    top = f"noodle-edge-{ver}"
    h, w = manifest["input"]["height"], manifest["input"]["width"]
    values = {"VERSION": ver, "MODEL_FILE": entry["file"], "VARIANT": variant, "SIZE": f"{h}x{w}",
              "LABELS": ", ".join(manifest["labels"])}
    files: dict[str, bytes] = {}
    for source in sorted(EDGE.rglob("*.py")):
        files[f"edge/{source.relative_to(EDGE).as_posix()}"] = source.read_bytes()
    files[f"model/{entry['file']}"] = model.read_bytes()
    files[f"model/{MANIFEST_NAME}"] = (json.dumps(shipped, indent=2) + "\n").encode()
    files["requirements-pi.txt"] = ("# Written by `noodle bundle` from pyproject.toml: the runner's "
                                    "dependencies and the `edge` extra.\n"
                                    + "\n".join(pi_requirements()) + "\n").encode()
    for name in ("install.sh", "noodle-edge", "README-PI.md"):
        files[name] = _render(name, values)

    dest = Path(out) / f"{top}.tar.gz"
    now = int(time.time())
    with atomic_output(dest, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime = len(data), now
            info.mode = 0o755 if name in EXECUTABLE else 0o644
            tar.addfile(info, io.BytesIO(data))
    log(f"wrote {dest} ({dest.stat().st_size / 1024:.0f} KiB): {variant} model "
        f"{entry['bytes'] / 1024:.0f} KiB, edge package, requirements-pi.txt, install.sh, README-PI.md")
    return dest


app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("bundle")
@one_line_errors
def bundle_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder whose export/ holds the model.")],
    model: Annotated[str, typer.Option(help="Which exported variant to ship.")] = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for the tarball.")] = Path("dist"),
) -> None:
    """Write dist/noodle-edge-<version>.tar.gz: runner, model, requirements, install.sh, README-PI.md."""
    write_bundle(run_dir, model, out, log=typer.echo)
