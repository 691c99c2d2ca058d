"""Find the photos and labels in a dataset, split them, decode them once.

Three layouts are detected (see `find_dataset`): class-per-folder (with or
without train/test folders), Kaggle's flat `cat.0.jpg` names, and a CSV of
`file,label`. Every image goes through `edge.preprocess.load_image`, the same
function the device runs, and is cached as uint8 so only the first pass decodes.
"""
from __future__ import annotations

import csv
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import NoodleError
from edge.preprocess import ImageError, is_image_file, load_image

# Folder names people give their splits, in the order we look for them.
SPLIT_NAMES = {
    "train": ("train", "training", "training_set", "train_set"),
    "val": ("val", "valid", "validation", "validation_set", "val_set"),
    "test": ("test", "testing", "test_set"),
}
# Share of the training photos held out to select epochs when there is no val
# folder. Carved with a fixed seed, stratified, and independent of --seed, so
# runs with different seeds are compared on the same validation photos.
VAL_FRACTION = 0.2
SPLIT_SEED = 20240613
# Above this many bytes of decoded pixels the cache goes to a memory-mapped file.
IN_MEMORY_LIMIT = 2 << 30


class DataError(NoodleError, ValueError):
    """A dataset that cannot be used as given; the message says how to fix it."""


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    # split name -> list of (file, class index)
    splits: dict[str, list[tuple[Path, int]]]
    val_carved: bool = False

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {self.classes[i]: n for i, n in sorted(Counter(y for _, y in items).items())}
            for split, items in self.splits.items()
        }

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "counts": self.counts(),
            "validation": f"carved {VAL_FRACTION:.0%} of train (seed {SPLIT_SEED})"
            if self.val_carved
            else "given",
        }


@dataclass
class Decoded:
    """Pixels of one split, decoded by the device's preprocessing."""

    x: np.ndarray  # (n, h, w, 3) uint8, in memory or memory-mapped
    y: np.ndarray  # (n,) int32
    files: list[Path]
    skipped: list[dict] = field(default_factory=list)


def find_dataset(data: str | os.PathLike) -> Dataset:
    """Detect the layout of `data` and list its labelled files per split."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; pass a folder of photos or a CSV")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a file that is not a CSV; pass a folder of photos or a file,label CSV")
        return _finish(root, "csv", _read_csv(root))

    split_dirs = {
        split: next((root / n for n in names if (root / n).is_dir()), None)
        for split, names in SPLIT_NAMES.items()
    }
    if split_dirs["train"] is not None:
        raw, layout = {}, None
        for split, folder in split_dirs.items():
            if folder is None:
                continue
            if _class_folders(folder):
                raw[split], layout = _read_class_folders(folder), "folders"
            elif _images_in(folder):
                raw[split], layout = _read_flat(folder), "kaggle-flat"
        if "train" not in raw:
            raise DataError(
                f"{split_dirs['train']}: no class folders and no images; "
                "put photos in train/<class>/ (one folder per class)"
            )
        return _finish(root, layout, raw)
    if _class_folders(root):
        return _finish(root, "class-folders", {"train": _read_class_folders(root)})
    if _images_in(root):
        return _finish(root, "kaggle-flat", {"train": _read_flat(root)})
    raise DataError(
        f"{root}: unknown layout; expected train/<class>/*.jpg (and test/<class>/), "
        "<class>/*.jpg, Kaggle names like cat.0.jpg, or a file,label CSV"
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_folders(folder: Path) -> list[tuple[Path, str]]:
    items = []
    for class_dir in _class_folders(folder):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DataError(f"{class_dir}: class folder with no images; add photos or remove it")
        items += [(f, class_dir.name) for f in files]
    return items


def _read_flat(folder: Path) -> list[tuple[Path, str]]:
    items = []
    for f in _images_in(folder):
        label, dot, rest = f.name.partition(".")
        if not dot or not rest or label == "":
            raise DataError(
                f"{f}: flat layout needs names like <label>.<anything>.jpg (cat.0.jpg); "
                "rename it or use class folders"
            )
        items.append((f, label))
    return items


def _read_csv(path: Path) -> dict[str, list[tuple[Path, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable CSV ({exc}); save it as UTF-8 file,label rows") from None
    if not rows:
        raise DataError(f"{path}: empty CSV; write one file,label row per photo")
    header = [c.strip().lower() for c in rows[0]]
    has_header = "file" in header and "label" in header
    cols = header if has_header else ["file", "label", "split"][: len(rows[0])]
    if "file" not in cols or "label" not in cols:
        raise DataError(f"{path}: CSV needs file and label columns (a header 'file,label' is optional)")
    fi, li = cols.index("file"), cols.index("label")
    si = cols.index("split") if "split" in cols else None
    raw: dict[str, list[tuple[Path, str]]] = {}
    missing = []
    for line, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if len(row) <= max(fi, li):
            raise DataError(f"{path}:{line}: expected file,label; got {','.join(row)!r}")
        file = (path.parent / row[fi].strip()).resolve()
        if not file.is_file():
            missing.append(row[fi].strip())
            continue
        split = row[si].strip().lower() if si is not None and len(row) > si else "train"
        split = next((s for s, names in SPLIT_NAMES.items() if split in names), None)
        if split is None:
            raise DataError(f"{path}:{line}: unknown split {row[si]!r}; use train, val or test")
        raw.setdefault(split, []).append((file, row[li].strip()))
    if missing:
        raise DataError(
            f"{path}: {len(missing)} file(s) it names do not exist (first: {missing[0]}); "
            "paths are relative to the CSV's folder"
        )
    return raw


def _finish(root: Path, layout: str, raw: dict[str, list[tuple[Path, str]]]) -> Dataset:
    train = raw.get("train", [])
    classes = sorted({label for _, label in train})
    if not train:
        raise DataError(f"{root}: no training images found; add photos per class")
    if len(classes) < 2:
        raise DataError(
            f"{root}: found only one class ({classes[0]}); a classifier needs at least two "
            "(one folder or label per class)"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[Path, int]]] = {}
    for split, items in raw.items():
        unknown = sorted({label for _, label in items} - set(classes))
        if unknown:
            raise DataError(
                f"{root}: the {split} split has classes that training lacks ({', '.join(unknown)}); "
                "give every class training photos"
            )
        splits[split] = [(f, index[label]) for f, label in items]
    carved = "val" not in splits
    if carved:
        splits["train"], splits["val"] = stratified_split(splits["train"], VAL_FRACTION, SPLIT_SEED)
    return Dataset(root=root, layout=layout, classes=classes, splits=splits, val_carved=carved)


def stratified_split(items, fraction: float, seed: int):
    """Hold out `fraction` of each class (at least one file each), repeatably."""
    rng = random.Random(seed)
    keep, held = [], []
    for label in sorted({y for _, y in items}):
        members = sorted((f for f, y in items if y == label), key=str)
        rng.shuffle(members)
        n_held = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held += [(f, label) for f in members[:n_held]]
        keep += [(f, label) for f in members[n_held:]]
    return keep, held


def decode(
    items: list[tuple[Path, int]],
    size: tuple[int, int],
    workers: int | None = None,
    cache_dir: Path | None = None,
    name: str = "pixels",
) -> Decoded:
    """Decode every file once with the device's preprocessing; skip bad files.

    Pillow releases the GIL while decoding, so threads scale with cores.
    """
    height, width = size
    workers = workers or min(8, os.cpu_count() or 1)
    shape = (len(items), height, width, 3)
    if cache_dir is not None and np.prod(shape) > IN_MEMORY_LIMIT:
        cache_dir.mkdir(parents=True, exist_ok=True)
        x = np.lib.format.open_memmap(cache_dir / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
    else:
        x = np.empty(shape, dtype=np.uint8)
    ok = np.zeros(len(items), dtype=bool)
    skipped = []

    def one(i: int):
        try:
            x[i] = load_image(items[i][0], size)
            ok[i] = True
        except ImageError as exc:
            return {"file": exc.path, "reason": exc.reason}
        return None

    with ThreadPoolExecutor(workers) as pool:
        skipped = [s for s in pool.map(one, range(len(items))) if s is not None]
    keep = np.flatnonzero(ok)
    if len(keep) < len(items):
        x = x[keep]  # a copy; small next to the whole set, since only bad files drop out
    y = np.array([items[i][1] for i in keep], dtype=np.int32)
    return Decoded(x=x, y=y, files=[items[i][0] for i in keep], skipped=skipped)
