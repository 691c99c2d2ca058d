"""The manifest: the one source of truth that travels with a model.

Class names, input size, preprocessing and (after export) each model file with
its sha256 and quantization live here, written by `noodle train` and
`noodle export`, read by every later stage and by the device. Also the atomic
file writing every stage uses, so no artifact is ever half-written.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge.errors import NoodleError

MANIFEST_NAME = "manifest.json"
FORMAT = "noodle"
# Bump when a reader of the previous layout would misread the new one.
SCHEMA = 1


class ManifestError(NoodleError, ValueError):
    """A manifest that is missing, unreadable or from another version of noodle."""


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only on success.

    A killed or failed writer leaves at most a hidden `.tmp` file, never a
    half-written file under the final name. `suffix` keeps an extension that a
    writer insists on (Keras wants `.keras`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); artifacts get the usual umask-based
    # mode so they can be copied to a Pi and read by another user.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike, obj: object) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and check a manifest file (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path}: no manifest; it is written by `noodle train` and `noodle export`, "
            "keep it beside the model"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc}); re-run the stage that wrote it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a noodle manifest; re-run the stage that wrote it")
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(
            f"{path}: manifest schema {manifest.get('schema')} is from another version of noodle "
            f"(this one reads {SCHEMA}); re-run `noodle train`/`noodle export` with this version"
        )
    for key in ("labels", "input", "preprocessing"):
        if key not in manifest:
            raise ManifestError(f"{path}: manifest lacks {key!r}; re-run the stage that wrote it")
    return manifest


def image_size(manifest: dict) -> tuple[int, int]:
    return int(manifest["input"]["height"]), int(manifest["input"]["width"])
