"""Classify image files: expand the paths, decode on a thread pool, invoke in batches.

Pillow releases the GIL while it decodes and resizes, so decoding runs on
every core while the interpreter (which releases it too) works through the
previous batch. Results come back in the order the files were given; a file
that cannot be read yields its reason and the rest still run.

numpy, Pillow and an interpreter only: this file ships to the device.
"""
from __future__ import annotations

import errno
import glob
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edge.errors import NoodleError
from edge.escape import escape_name
from edge.preprocess import (
    HEIF_FIX,
    IMAGE_SUFFIXES,
    ImageError,
    heif_support,
    is_heif_file,
    is_image_file,
    os_reason,
    return_freed_decodes,
)

# Images per invoke: a batch amortizes the invoke's overhead, but past a few
# images nothing more is gained, and a smaller batch lets decoding and invoking
# overlap more finely (docs/experiments.md, "Figures behind the code").
BATCH = 16
# Batches decoded ahead of the interpreter: enough that it never waits for
# the pool, few enough that a huge folder is not decoded into memory at once.
AHEAD = 3
GLOB_CHARS = frozenset("*?[")
# Decode threads allowed per core: past a few per core they only wait on each other.
WORKERS_PER_CORE = 8


def default_workers() -> int:
    """Decode threads: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_per_core(option: str, value: int | None, per_core: int) -> None:
    """A count of threads: None (its default) or 1 to `per_core` per core this process may use."""
    if value is None:
        return
    cores = default_workers()
    most = per_core * cores
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise NoodleError(f"{option} {value}: out of range; use 1 to {most} "
                          f"({per_core} per core, {cores} core(s) here), or leave it out")


def check_workers(workers: int | None) -> None:
    """--workers: None (one per core) or 1 to WORKERS_PER_CORE per core."""
    check_per_core("--workers", workers, WORKERS_PER_CORE)


@dataclass
class Result:
    path: str
    top: list[tuple[str, float]] | None = None  # (label, probability), best first
    error: str | None = None  # why the file could not be classified


def expand(args: Iterable[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Files, folders (recursive, images only) and globs -> (files, problems).

    A file named outright is kept whatever its suffix (decoding will say if it
    is no image); a folder contributes its image files, sorted. Each argument
    that yields nothing becomes a one-line problem naming it (escaped, see
    escape_name). Duplicates are dropped, first occurrence kept.
    """
    files: list[str] = []
    problems: list[str] = []
    for arg in map(str, args):
        shown = escape_name(arg)
        if os.path.isdir(arg):
            before = len(problems)
            found = _images_under(arg, problems)
            if not found and len(problems) == before:
                problems.append(f"{shown}: folder has no images "
                                f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif os.path.exists(arg):
            files.append(arg)
        elif GLOB_CHARS & set(arg):
            found = []
            for match in sorted(glob.glob(arg, recursive=True)):
                found += _images_under(match, problems) if os.path.isdir(match) else [match]
            if not found:
                problems.append(f"{shown}: no file matches this pattern")
            files += found
        else:
            problems.append(f"{shown}: {_missing(arg)}")
    return list(dict.fromkeys(files)), problems


def _missing(path: str) -> str:
    """Why a path that does not exist for os.path.exists cannot be used."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"broken symlink (to {escape_name(os.readlink(path))}); point it at a real file"
        if exc.errno != errno.ENOENT:
            return os_reason(exc) or str(exc)
    return "no such file or folder"


def walk(folder: str | os.PathLike, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk, sorted, following symlinked folders: the one rule of every reader of photos.

    classify, bench, training and compare all read a class folder that is a
    symlink (photos/cats -> /mnt/cats) as the folder it points to. Each real
    folder is read once, and a link to a folder that holds it (a loop) is not
    followed. A caller may prune `dirs` in place, as with os.walk.
    """
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, onerror=onerror, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # reached again through another link
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _holds(os.path.realpath(os.path.join(root, d)), real))
        names.sort()
        yield root, dirs, names


def _holds(outer: str, inner: str) -> bool:
    """Whether real path `outer` is `inner` or a folder above it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _images_under(folder: str, problems: list[str]) -> list[str]:
    found = []

    def unreadable(exc: OSError) -> None:
        problems.append(f"{escape_name(exc.filename or folder)}: {os_reason(exc) or exc}")

    for root, _, names in walk(folder, onerror=unreadable):
        found += [os.path.join(root, n) for n in names if is_image_file(n) or is_heif_file(n)]
    heif = sum(map(is_heif_file, found))
    if heif and not heif_support():
        # Named once per folder with the fix, not once per file (a phone dump has hundreds).
        print(f"warning: {escape_name(folder)}: skipped {heif} HEIC/HEIF photo(s); {HEIF_FIX} "
              "to classify them too", file=sys.stderr)
        found = [f for f in found if not is_heif_file(f)]
    return found


def _decode(load, path: str) -> np.ndarray | str:
    try:
        return load(path)
    except ImageError as exc:
        return exc.reason
    except MemoryError:
        return "image too large for this device's memory"


def classify(clf, paths: list[str], k: int = 1, batch: int | None = None,
             workers: int | None = None) -> Iterator[Result]:
    """Yield a Result per path, in order; `clf` is an edge.runtime.Classifier."""
    batch = max(1, min((batch or BATCH) if clf.batchable else 1, len(paths) or 1))
    check_workers(workers)
    workers = workers or default_workers()
    return_freed_decodes()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        todo = iter(paths)

        def top_up():
            while len(pending) < batch * AHEAD:
                path = next(todo, None)
                if path is None:
                    return
                pending.append((path, pool.submit(_decode, clf.preprocess, path)))

        top_up()
        while pending:
            chunk = [pending.popleft() for _ in range(min(batch, len(pending)))]
            top_up()
            decoded = [(path, future.result()) for path, future in chunk]
            good = [pixels for _, pixels in decoded if isinstance(pixels, np.ndarray)]
            tops = iter(clf.top_k(clf.probabilities(np.stack(good), batch=batch), k) if good else [])
            for path, pixels in decoded:
                if isinstance(pixels, np.ndarray):
                    yield Result(path, top=next(tops))
                else:
                    yield Result(path, error=pixels)
