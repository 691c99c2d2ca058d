"""Which photos come in bursts, so that a split keeps each burst on one side.

Frames of one capture, shots a second apart, and near-identical views of one
subject are one photo taken several times. A split by frame puts copies of it
in train and in test, and the test then scores memory: 100 % on frames of a
still subject that the model never learned to tell apart. So photos are
grouped, within a class, by any of:

- capture's names: `noodle-edge capture` saves `<folder>-<YYYYmmdd-HHMMSS>-<NNNN>.jpg`
  (edge/camera.py), one time stamp per capture run: a run is one group;
- EXIF times: photos whose DateTimeOriginal lies within BURST_SECONDS of
  another's are a burst;
- content: a difference hash (dHash: 9x8 pixels, one bit per left-right step,
  per colour channel: 192 bits) within NEAR_BITS of another's is a
  near-duplicate; bytes alone would miss a re-encoded or slightly moved frame.
  Per channel, because a grey 64-bit hash cannot tell apart simple pictures of
  one shape in other colours (the embedded sample's discs and stripes).

Groups are the connected sets of those links (union-find). Pillow and numpy only.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

# `noodle-edge capture`'s names (edge/camera.py's _save): the run's stamp, then the frame number.
CAPTURE_NAME = re.compile(r"^(?P<run>.+-\d{8}-\d{6})-\d{4,}(?:-\d+)?$")
# Photos of one class taken this close together (EXIF DateTimeOriginal) are one burst.
BURST_SECONDS = 2.0
# dHash bits (of 192) that may differ between near-duplicates: frames of a still subject with sensor
# noise and small shifts differ by a few; unrelated photos by far more (docs/data.md has the distances
# measured on cats-vs-dogs, the embedded sample and captured frames).
NEAR_BITS = 15
HASH_SIDE = 8
# EXIF tags: DateTimeOriginal (in the Exif IFD), then DateTime (IFD0).
EXIF_IFD, DATETIME_ORIGINAL, DATETIME = 0x8769, 36867, 306
WORKERS = 8
# Pairs of hashes compared at once: 2M pairs of three 64-bit words are 48 MB of XORs, whatever
# the class's size (a class of 50,000 photos is 1.25 billion pairs, compared 2M at a time).
BLOCK_PAIRS = 1 << 21
# Set bits of each byte value: a XOR's differing bits where numpy has no bitwise_count (numpy < 2).
POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)


def dhash(path: Path) -> bytes | None:
    """The photo's difference hash, 24 bytes (64 bits a channel), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (HASH_SIDE * 4, HASH_SIDE * 4))  # JPEG: decode at a fraction of the size
            pixels = np.asarray(im.convert("RGB").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX),
                                dtype=np.int16)
    except Exception:  # an unreadable photo is decode's to report, not grouping's
        return None
    bits = pixels[:, 1:] > pixels[:, :-1]  # (8, 8, 3)
    return np.packbits(np.moveaxis(bits, -1, 0).ravel()).tobytes()


def exif_time(path: Path) -> float | None:
    """Seconds of the photo's EXIF DateTimeOriginal (else DateTime), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            text = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
        return datetime.strptime(str(text).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp() if text else None
    except Exception:  # no EXIF, or a malformed one: no time to group by
        return None


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def groups(files: list[Path]) -> list[int]:
    """A group number per file (files of one class): equal numbers are one burst."""
    n = len(files)
    union = _Union(n)
    runs: dict[str, int] = {}
    for i, f in enumerate(files):
        match = CAPTURE_NAME.match(Path(f).stem)
        if match:
            union.join(i, runs.setdefault(match["run"], i))
    with ThreadPoolExecutor(WORKERS) as pool:
        hashes = list(pool.map(dhash, files))
        times = list(pool.map(exif_time, files))
    timed = sorted((t, i) for i, t in enumerate(times) if t is not None)
    for (t0, i), (t1, j) in zip(timed, timed[1:], strict=False):
        if t1 - t0 <= BURST_SECONDS:
            union.join(i, j)
    known = [i for i, h in enumerate(hashes) if h is not None]
    for a, b in near_pairs(b"".join(hashes[i] for i in known)):
        union.join(known[a], known[b])
    roots = [union.find(i) for i in range(n)]
    number = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [number[r] for r in roots]


def near_pairs(hashes: bytes):
    """(a, b), a < b, of every two dhashes (24 bytes each, concatenated) within NEAR_BITS.

    Every pair once (a block of rows against itself and the rows after it), three 64-bit words
    a hash and numpy's bitwise_count: the pairs grow as the square of a class's photos, so each
    costs a few operations, not 24 table look-ups (docs/experiments.md has the times).
    """
    words = np.frombuffer(hashes, np.uint64).reshape(-1, 3).T.copy()  # (3, n): each word contiguous
    n = words.shape[1]
    rows = max(1, BLOCK_PAIRS // max(1, n))
    for start in range(0, n, rows):
        distance = sum(_bit_count(w[start:start + rows, None] ^ w[None, start:]) for w in words)
        for a, b in zip(*np.nonzero(distance <= NEAR_BITS), strict=True):
            if a < b:  # a counts from the block's first row, b from the same photo
                yield start + int(a), start + int(b)


def _bit_count(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return POPCOUNT[words.view(np.uint8)].reshape(*words.shape, 8).sum(-1, dtype=np.uint8)
