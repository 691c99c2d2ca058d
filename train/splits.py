"""RUN/splits.csv: which photo is in which split, written once by `noodle train`, read by export.

One row per photo (file, label, split, sha256), the file relative to the
data folder the manifest records (absolute when a CSV named one outside it).
Export, validation and compare read the photos from here instead of finding
and splitting the data set again, so they score exactly the photos training
held out; the sha256 of each photo they use says whether it changed since.
Cells are written as every CSV of noodle's is (edge.escape.csv_cell: escaped,
formulas neutralized), so a file or class name from the data cannot run as a
spreadsheet formula, and are read back exactly (csv_value).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edge.atomic import write_bytes
from edge.escape import csv_cell, csv_value
from edge.manifest import RunManifest, sha256_file
from train.data import DataError, Decoded, decode
from train.rundir import RunDir

COLUMNS = ("file", "label", "split", "sha256")
# Photos hashed at once: reading is what costs, and threads overlap it.
HASH_WORKERS = 8


def write_splits(dest: str | os.PathLike, dataset) -> None:
    """Every photo of `dataset` (train.data.Dataset) with its label, split and sha256, atomically."""
    rows = [(path, dataset.labels[y], split) for split, items in dataset.splits.items() for path, y in items]
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        digests = list(pool.map(lambda row: sha256_file(row[0]), rows))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    root = Path(dataset.root)
    for (path, label, split), digest in zip(rows, digests, strict=True):
        file = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(path).absolute()
        writer.writerow([csv_cell(file.as_posix()), csv_cell(label), split, digest])
    write_bytes(dest, out.getvalue().encode("utf-8", "surrogateescape"))


@dataclass
class Recorded:
    """splits.csv as read: each split's (file, class index, sha256), the files under `root`."""

    root: Path
    splits: dict[str, list[tuple[Path, int, str]]]
    # Whether the files are where training read them (no --data given).
    as_trained: bool

    @property
    def evaluation(self) -> str:
        """The split that scores the variants: test, or validation when there is no test split."""
        return "test" if self.splits.get("test") else "val"

    def items(self, split: str) -> list[tuple[Path, int]]:
        return [(path, y) for path, y, _ in self.splits.get(split, [])]


def read_splits(run_dir: str | os.PathLike, manifest: RunManifest,
                data: str | os.PathLike | None = None) -> Recorded:
    """RUN/splits.csv, its files under the recorded data folder (or `data`, where it is now)."""
    path = RunDir(run_dir).splits
    record = manifest.data or {}
    root = Path(data) if data is not None else Path(record.get("root", ""))
    if not root.exists() or str(root) in ("", "."):
        raise DataError(f"training data {str(root) or '(none recorded)'} not found; calibration and "
                        "validation need it: pass --data PATH (the folder the model was trained on)")
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise DataError(f"{path}: missing; `noodle train` writes it beside the model: train again "
                        f"(`noodle train {root} --out {run_dir}`)") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc}); train again") from None
    index = {label: i for i, label in enumerate(manifest.labels)}
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise DataError(f"{path}: not a splits file (its header is not {','.join(COLUMNS)}); train again")
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for line, row in enumerate(rows[1:], start=2):
        label = csv_value(row[1]) if len(row) == len(COLUMNS) else None
        if label not in index or row[2] not in splits:
            raise DataError(f"{path}: line {line} is not a row of file, one of the model's labels, a split "
                            "(train, val, test) and a sha256; train again")
        file = Path(csv_value(row[0]))
        splits[row[2]].append((file if file.is_absolute() else root / file, index[label], row[3]))
    return Recorded(root, splits, as_trained=data is None)


def unchanged(recorded: Recorded, split: str, rows: list[tuple[Path, int, str]] | None = None) -> list:
    """`rows` of `split` (default: all of it) as (file, class index), each checked against its sha256.

    A photo changed or gone since training is an error naming it, since a
    split carved from changed photos is not the one training held out; with
    --data (the user's choice of folder) those photos are left out, in one line.
    """
    rows = recorded.splits.get(split, []) if rows is None else rows
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        changed = [row[0] for row, same in zip(rows, pool.map(_same, rows), strict=True) if not same]
    if changed and recorded.as_trained:
        raise DataError(f"{recorded.root}: its photos changed since training ({len(changed)} of the "
                        f"{split} split's {len(rows)}, such as {csv_cell(str(changed[0]))}), so that split "
                        "is not the one training held out; train again on it (`make export` does), or "
                        "pass --data PATH to score on the photos still as trained")
    if changed:
        import logging

        logging.getLogger(__name__).warning(
            f"{recorded.root}: left out {len(changed)} of the {split} split's {len(rows)} photos, changed "
            "or gone since training")
    gone = set(changed)
    return [(path, y) for path, y, _ in rows if path not in gone]


def _same(row: tuple[Path, int, str]) -> bool:
    try:
        return sha256_file(row[0]) == row[2]
    except OSError:
        return False


# The evaluation split's pixels, decoded once per process: validation and the
# --max-drop gate of one export score the same photos.
_DECODED: dict[tuple, Decoded] = {}


def evaluation_pixels(recorded: Recorded, size: tuple[int, int]) -> tuple[str, Decoded]:
    """(split, its pixels) of the evaluation split, checked unchanged and decoded once."""
    split = recorded.evaluation
    files = recorded.splits.get(split, [])
    key = (split, tuple(size), hashlib.sha256("\n".join(f"{p}\0{d}" for p, _, d in files).encode(
        "utf-8", "surrogateescape")).hexdigest())
    if key not in _DECODED:
        _DECODED.clear()  # one split of one run is all an export scores
        _DECODED[key] = decode(unchanged(recorded, split), size)
    return split, _DECODED[key]

