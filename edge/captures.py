"""The capture store: photos kept on the device to teach from, for serve's /v1/captures routes.

    ROOT/<label>/<time>-<n>.jpg   the layout `noodle train` and `noodle-edge teach` read
    ROOT/_unsure/<time>-<n>.jpg   frames the model was unsure of: a ring of at most `unsure_max`

No path from a request reaches the file system: a label is checked (training's
rule, edge.escape.label_problem, plus what a folder name must not be) and a
name is made here; a name given to delete or move must be one this store
makes. Every photo is the frame's centre square (what the camera path
classifies), written whole or not at all (atomic_output), and refused in
words when it would take the store past its limit (--captures-max-mb).
numpy and Pillow only: this file ships to the device.
"""
from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from edge.atomic import atomic_output
from edge.errors import NoodleError
from edge.escape import escape_name, label_problem, shown
from edge.manifest import sha256_file
from edge.preprocess import crop_square

UNSURE = "_unsure"
# 200 MB: about 2,000 photos at a camera's 640x480 centre square, far more than a class needs.
MAX_MB = 200.0
# Unsure frames kept: enough to find the mistakes of a day, never the card's space.
UNSURE_MAX = 100
# The same quality `noodle-edge capture` saves at (edge.camera.JPEG_QUALITY).
JPEG_QUALITY = 95
NAME = re.compile(r"^\d{8}T\d{6}-\d{1,9}\.jpg$")


class CaptureError(NoodleError):
    """A capture refused: a bad label or name, a photo that cannot be read, the store full."""


class CaptureFull(CaptureError):
    """The store's limit (--captures-max-mb) would be passed."""


def check_label(label: str) -> str:
    """`label`, or CaptureError saying why it cannot be a class folder."""
    problem = label_problem(label)
    if problem is None and (label in (".", "..") or label.startswith(".")):
        problem = f"class name '{shown(label)}' starts with a dot, which `noodle train` skips as hidden"
    if problem is None and any(ch in label for ch in "/\\"):
        problem = f"class name '{shown(label)}' holds a slash; a class name is one folder: drop it"
    if problem is None and label == UNSURE:
        problem = f"{UNSURE} holds the frames the model was unsure of; give the class another name"
    if problem is not None:
        raise CaptureError(problem)
    return label


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise CaptureError(f"'{shown(name)}' is not a capture name this store makes (<time>-<n>.jpg); "
                           "list them with GET /v1/captures")
    return name


class CaptureStore:
    """ROOT's captures: add, list, delete, move; one writer at a time (a lock), readers any time."""

    def __init__(self, root: str | os.PathLike, max_mb: float = MAX_MB, unsure_max: int = UNSURE_MAX):
        if not max_mb > 0:
            raise CaptureError(f"--captures-max-mb {max_mb:g}: give the megabytes the captures may use, "
                               "above 0")
        self.root, self.max_bytes, self.unsure_max = Path(root), int(max_mb * 1e6), unsure_max
        self._lock = threading.Lock()
        self._n = 0
        # sha256 of each photo by (path, mtime, size): a pull's listing hashes only what changed.
        self._sums: dict[str, tuple[int, int, str]] = {}
        self._sums_lock = threading.Lock()  # two pulls at once list from two threads

    # --- writing

    def add(self, label: str, frame: np.ndarray, bgr: bool = False) -> Path:
        """Keep a frame (H, W, 3 uint8, or H, W grey) as ROOT/<label>/<time>-<n>.jpg, its centre square."""
        return self._keep(check_label(label), _jpeg(frame, bgr))

    def add_image(self, label: str, data: bytes) -> Path:
        """Keep an uploaded image's centre square (any format Pillow reads), as JPEG."""
        return self._keep(check_label(label), _jpeg(_decode(data), False))

    def add_unsure(self, frame: np.ndarray, bgr: bool = False) -> Path:
        """Keep a frame in the _unsure ring; the oldest beyond `unsure_max` go."""
        path = self._keep(UNSURE, _jpeg(frame, bgr))
        with self._lock:
            for old in self._photos(UNSURE)[: -self.unsure_max or None]:
                old.unlink(missing_ok=True)
        return path

    def _keep(self, label: str, data: bytes) -> Path:
        with self._lock:
            used = self.bytes_used()
            if used + len(data) > self.max_bytes:
                raise CaptureFull(f"the captures hold {used / 1e6:.1f} MB of their "
                                  f"{self.max_bytes / 1e6:g} MB limit; delete some (DELETE "
                                  "/v1/captures/LABEL) or raise --captures-max-mb")
            folder = self.root / label
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            while True:
                self._n += 1
                path = folder / f"{stamp}-{self._n}.jpg"
                if not path.exists():
                    break
            with atomic_output(path) as tmp:
                tmp.write_bytes(data)
            return path

    def delete(self, label: str, name: str | None = None) -> int:
        """Remove one capture, or a whole class (its folder too); the count removed."""
        label = label if label == UNSURE else check_label(label)
        folder = self.root / label
        with self._lock:
            if name is not None:
                path = folder / check_name(name)
                if not path.is_file():
                    raise CaptureError(f"{shown(label)}/{escape_name(name)}: no such capture")
                path.unlink()
                return 1
            photos = self._photos(label)
            for path in photos:
                path.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass  # not there, or holds files this store did not make: left as they are
            return len(photos)

    def move(self, name: str, label: str, source: str = UNSURE) -> Path:
        """Move a capture (from _unsure, by default) into class `label`: the page's one click."""
        label = check_label(label)
        path = self.root / (source if source == UNSURE else check_label(source)) / check_name(name)
        with self._lock:
            if not path.is_file():
                raise CaptureError(f"{shown(source)}/{escape_name(name)}: no such capture")
            dest = self.root / label / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                raise CaptureError(f"{shown(label)}/{escape_name(name)}: already there")
            os.replace(path, dest)
            return dest

    # --- reading

    def _photos(self, label: str) -> list[Path]:
        folder = self.root / label
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.iterdir() if NAME.match(p.name) and p.is_file()),
                      key=lambda p: (p.name.split("-")[0], int(p.name.split("-")[1][:-4])))

    def labels(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p.name != UNSURE and label_problem(p.name) is None
                      and not p.name.startswith("."))

    def bytes_used(self) -> int:
        return sum(p.stat().st_size for label in [*self.labels(), UNSURE] for p in self._photos(label))

    def files(self, unsure: bool = False) -> list[dict]:
        """Every capture as {label, name, bytes, sha256} (`noodle pull`'s index), _unsure with `unsure`."""
        with self._sums_lock:
            return self._files(unsure)

    def _files(self, unsure: bool) -> list[dict]:
        out, seen = [], set()
        for label in [*self.labels(), *([UNSURE] if unsure else [])]:
            for path in self._photos(label):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted meanwhile
                key = str(path)
                seen.add(key)
                cached = self._sums.get(key)
                if cached is None or cached[:2] != (st.st_mtime_ns, st.st_size):
                    cached = (st.st_mtime_ns, st.st_size, sha256_file(path))
                    self._sums[key] = cached
                out.append({"label": label, "name": path.name, "bytes": st.st_size, "sha256": cached[2]})
        if not unsure:
            seen |= {k for k in self._sums if Path(k).parent.name == UNSURE}
        for gone in set(self._sums) - seen:
            self._sums.pop(gone, None)
        return out

    def listing(self, recent: int = 0) -> dict:
        """Counts and bytes per class, the _unsure ring, the total and the limit (GET /v1/captures)."""
        def one(label: str) -> dict:
            photos = self._photos(label)
            entry = {"count": len(photos), "bytes": sum(p.stat().st_size for p in photos)}
            if recent:
                entry["recent"] = [p.name for p in photos[-recent:]]
            return entry

        classes = {label: one(label) for label in self.labels()}
        unsure = one(UNSURE)
        used = sum(c["bytes"] for c in classes.values()) + unsure["bytes"]
        return {"classes": classes, "unsure": unsure, "bytes": used, "limit_bytes": self.max_bytes}


def _jpeg(frame: np.ndarray, bgr: bool) -> bytes:
    from PIL import Image

    frame = np.asarray(frame)
    shape_ok = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))
    if frame.dtype != np.uint8 or not shape_ok:
        raise CaptureError(f"a frame of {frame.dtype} {frame.shape}: a capture is an (H, W, 3) uint8 image")
    square = crop_square(frame)
    if square.ndim == 3:
        square = square[:, :, 2::-1] if bgr else square[:, :, :3]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(square)).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CaptureError(f"the upload is not an image this device reads ({exc}); "
                           "send a JPEG or PNG") from None
