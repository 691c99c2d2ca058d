"""Artifacts written whole: a temporary file beside the destination, renamed onto it on success.

Every stage writes through `atomic_output` (or `write_bytes`/`write_json`), so
a killed or failed writer never leaves a half-written file under the final
name, and a full disk or a file where a folder should be is one OutputError
line naming the path. Ships to the device (the camera's snapshots use it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge.errors import NoodleError

try:
    import fcntl
except ImportError:  # Windows: temporary files are not locked, so none is taken for stale
    fcntl = None


class OutputError(NoodleError, OSError):
    """An artifact that cannot be written: a file in the way, a full disk. One line, exit 2."""


# A full disk, or the user's quota: the same fix.
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _in_the_way(folder: Path) -> Path:
    """The nearest of `folder` and its parents that exists and is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return folder


def make_folder(folder: str | os.PathLike) -> Path:
    """mkdir -p, or OutputError naming the file in the way (or why not)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{_in_the_way(folder)}: a file is where a folder should be; move it away, "
                          "or write somewhere else (--out)") from None
    except OSError as exc:
        raise OutputError(f"{folder}: cannot make the folder ({exc.strerror or exc}); "
                          "give a folder you may write to") from None
    return folder


def _stale(dest: Path, suffix: str) -> None:
    """Remove temporary files of `dest` that no writer holds (left by a killed one).

    A writer holds an exclusive lock on its temporary file while it writes, so
    a file whose lock can be taken is nobody's.
    """
    if fcntl is None:
        return
    import glob

    for path in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp{glob.escape(suffix)}"):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except OSError:  # held: another writer's, still being written
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only on success.

    A killed or failed writer leaves at most a hidden `.tmp` file, never a
    half-written file under the final name, and the next write of `dest`
    removes what a killed one left. `suffix` keeps an extension that a writer
    insists on (Keras wants `.keras`). A file where the folder should be, or a
    full disk, is an OutputError naming the path.
    """
    dest = Path(dest)
    make_folder(dest.parent)
    if dest.is_dir() and not dest.is_symlink():
        raise OutputError(f"{dest}: a folder is where this file should be written; move it away")
    _stale(dest, suffix)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    except OSError as exc:
        raise _output_error(dest, exc) from None
    tmp_path = Path(tmp)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # ours until it is renamed or removed: see _stale
        # mkstemp makes the file private (0600); artifacts get the usual umask-based
        # mode so they can be copied to a Pi and read by another user.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except OSError as exc:
        if isinstance(exc, NoodleError) or exc.errno not in DISK_FULL:
            raise
        raise _output_error(dest, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


def _output_error(dest: Path, exc: OSError) -> OSError:
    if exc.errno in DISK_FULL:
        return OutputError(f"{dest}: cannot write it (No space left on device); free some space "
                           "and run it again (nothing half-written was left)")
    return exc


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike, obj: object) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
