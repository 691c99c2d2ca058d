"""Find the photos and labels in a dataset, split them, decode them once.

Four layouts are detected (see `find_dataset`): class-per-folder with or
without train/val/test folders, Kaggle's flat `cat.0.jpg` names, and a CSV of
file and label columns (a header is optional, its names are recognised; the
label may be one-hot, a 0/1 column per class), given as DATA or one per split
folder beside its photos (Roboflow's `train/_classes.csv`). The layouts are
read by train.layouts and train.csv_reader; here the classes are numbered,
the splits carved and checked, and the pixels decoded. Every image goes
through `edge.preprocess.load_image`, the same function the device runs, and
is cached as uint8 so only the first pass decodes.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.escape import escape_name, listed
from edge.preprocess import ImageError, load_image
from train.csv_reader import Raw, skipped
from train.layouts import LAYOUTS, read_layout
from train.names import DataError

# When there is no test split: 15 % of each class is carved for validation and
# another 15 % for test (70/15/15), so the photos that chose the epoch never
# score the exported variants.
TEST_FRACTION = 0.15
# When a test split is given but no validation split, validation only picks
# the epoch: 20 % of the training photos, as before there were test carvings.
VAL_FRACTION = 0.2
# Carved with a fixed seed, stratified, and independent of --seed, so runs
# with different seeds are compared on the same photos.
SPLIT_SEED = 20240613
# Above this many bytes of decoded pixels a split goes to a memory-mapped file
# in the run folder instead of memory (about 228,000 photos at 56x56). Set
# NOODLE_IN_MEMORY_LIMIT (bytes) lower on a machine with little memory.
IN_MEMORY_LIMIT = int(os.environ.get("NOODLE_IN_MEMORY_LIMIT", 2 << 30))
# Below this many test photos in a class, each photo is a tenth or more of
# that class's accuracy, and the figures are not to be trusted: one warning
# says so, with the test photos per class and what helps.
FEW_TEST_PHOTOS = 10


@dataclass
class Dataset:
    root: Path
    layout: str
    # The class names, sorted: label i is labels[i] (the manifest's `labels`, the device's).
    labels: list[str]
    # split name -> list of (file, class index); always train, val and test.
    splits: dict[str, list[tuple[Path, int]]]
    # split name -> "given" or how it was carved.
    sources: dict[str, str] = field(default_factory=dict)
    # Files the data names that are not there: {"file", "reason", ...} like decode's.
    skipped: list[dict] = field(default_factory=list)
    # Things that do not stop training but may make its figures wrong.
    warnings: list[str] = field(default_factory=list)
    # sha256 of the labelled file list with sizes and mtimes (see `fingerprint`).
    fingerprint: str = ""
    # split -> short sha256 of its members (label and path only): a carved split
    # found again later must hold the same photos, or training saw test photos.
    split_digests: dict[str, str] = field(default_factory=dict)
    # The options it was read with (CSV columns, min_photos), to find the same data again.
    options: dict[str, str | int] = field(default_factory=dict)
    # Classes left out by min_photos -> the training photos each had.
    dropped: dict[str, int] = field(default_factory=dict)
    # split -> its photos whose burst (train.groups) has training photos too: a figure on them scores
    # memory, so none is reported from a split with any (train's summary, export's compare and gate).
    shared: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {self.labels[i]: n for i, n in sorted(Counter(y for _, y in items).items())}
            for split, items in self.splits.items()
        }

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "labels": self.labels,
            "counts": self.counts(),
            "splits": self.sources,
            "fingerprint": self.fingerprint,
            "split_digests": self.split_digests,
            "missing": len(self.skipped),
            "warnings": self.warnings,
            "options": self.options,
            "dropped": self.dropped,
            "shared_bursts": self.shared,
        }


@dataclass
class Decoded:
    """Pixels of one split, decoded by the device's preprocessing."""

    x: np.ndarray  # (n, h, w, 3) uint8, in memory or memory-mapped
    y: np.ndarray  # (n,) int32
    files: list[Path]
    skipped: list[dict] = field(default_factory=list)
    rows: np.ndarray | None = None  # which of the items decoded are these (train.stream sets it)




def find_dataset(data: str | os.PathLike, *, file_column: str | None = None,
                 label_column: str | None = None, split_column: str | None = None,
                 min_photos: int = 0) -> Dataset:
    """Detect the layout of `data`, list its labelled files, make train/val/test splits.

    The column options name a CSV's columns (a header name, or a 1-based
    column number) when detection cannot tell. `min_photos` drops every class
    with fewer training photos (before validation and test are carved from
    them), from every split; 0 keeps them all.
    """
    root = Path(data)
    columns = {k: v for k, v in (("file_column", file_column), ("label_column", label_column),
                                 ("split_column", split_column)) if v}
    layout, raw, missing = read_layout(root, columns)
    options = {**columns, **({"min_photos": min_photos} if min_photos else {})}
    return _finish(root, layout, raw, missing, options, min_photos)


def read_labelled(path: str | os.PathLike, labels: list[str], test_map: dict[str, str] | None = None,
                  **columns: str | None) -> tuple[list[tuple[Path, int]], list[dict], dict[str, str]]:
    """Every labelled photo of `path`, numbered by a model's `labels`: (items, skipped, mapping).

    For scoring a model on photos it never saw: any layout find_dataset reads,
    nothing carved; a test split is used when there is one, else all photos.
    Classes may be a subset of `labels`, never a class the model lacks. A
    class named otherwise is matched by `match_labels` (`test_map` first);
    `mapping` says which class was read as which label.
    `columns`: find_dataset's file_column, label_column, split_column.
    """
    path = Path(path)
    _, raw, missing = read_layout(path, {k: v for k, v in columns.items() if v}, known=labels)
    items = raw.get("test") or [item for split in raw.values() for item in split]
    if raw.get("test"):  # only the split scored: a photo missing from train/ is no concern here
        missing = [m for m in missing if m[2] == "test"]
    if not items:
        raise DataError(f"{path}: no labelled photos found; {LAYOUTS}")
    found = sorted({label for _, label in items})
    mapping = match_labels(path, found, labels, test_map or {})
    index = {c: i for i, c in enumerate(labels)}
    numbered = [(f, index[mapping.get(label, label)]) for f, label in items]
    return numbered, [skipped(m) for m in missing], mapping


def match_labels(path: Path, found: list[str], labels: list[str], given: dict[str, str]) -> dict[str, str]:
    """Each class of `found` that is not one of the model's `labels` -> the label it is read as.

    `given` (--test-map) first. Then a class that is a label but for case or a
    plural s (cats for cat, Dog for dogs), when that is the one label it could
    be and no other class takes it: the common pairing of flat Kaggle names
    (cat, dog) with a test folder of cats/ and dogs/. Anything else is refused,
    naming the classes and the fix.
    """
    def shown(names) -> str:
        return ", ".join(f"'{escape_name(n)}'" for n in names)

    stray = sorted(set(given) - set(found))
    wrong = sorted({t for t in given.values() if t not in labels})
    if stray or wrong:
        raise DataError(f"{path}: --test-map names " + "; ".join(
            ([f"classes {shown(stray)} that are not in it (its classes: {shown(found)})"] if stray else [])
            + ([f"{shown(wrong)}, not labels of the model ({shown(labels)})"] if wrong else [])))

    def key(name: str) -> str:
        name = name.casefold()
        return name[:-1] if len(name) > 1 and name.endswith("s") else name

    mapping = {c: given[c] for c in found if c in given}
    guessed = {c: [t for t in labels if key(t) == key(c)] for c in found
               if c not in labels and c not in given}
    mapping.update({c: ts[0] for c, ts in guessed.items() if len(ts) == 1})
    # One to one: a label taken twice, or by a class that also appears as itself, is no match.
    taken = Counter(mapping.get(c, c) for c in found)
    for c in [c for c in mapping if c not in given and taken[mapping[c]] > 1]:
        del mapping[c]
    unknown = [c for c in found if c not in labels and c not in mapping]
    if unknown:
        raise DataError(f"{path}: classes {shown(unknown)} are not the model's ({shown(labels)}); name its "
                        f"folders or labels as the model's, or map them: --test-map "
                        + ",".join(f"{escape_name(c)}=LABEL" for c in unknown))
    clash = [t for t, n in Counter(mapping.get(c, c) for c in found).items() if n > 1]
    if clash:
        raise DataError(f"{path}: --test-map reads two classes as {shown(clash)}; map each class to "
                        "its own label")
    return mapping


# ------------------------------------------------------------------------ splits

def _finish(root: Path, layout: str, raw: Raw, missing: list[tuple], options: dict,
            min_photos: int = 0) -> Dataset:
    train = raw.get("train", [])
    if not train and missing:
        raise DataError(f"{root}: all {len(missing)} files it lists are missing (first: {missing[0][0]}); "
                        "paths are relative to the CSV's folder")
    if not train:
        raise DataError(f"{root}: no training images found; add photos per class")
    # A class whose every listed file is missing is still a class: it must fail, not vanish.
    classes = sorted({label for _, label in train} | {m[1] for m in missing if m[2] == "train"})
    # min_photos: a class with fewer training photos leaves every split, and the manifest names it.
    have = Counter(label for _, label in train)
    dropped = {c: have[c] for c in classes if have[c] < min_photos}
    if dropped:
        raw = {split: [(f, label) for f, label in items if label not in dropped]
               for split, items in raw.items()}
        missing = [m for m in missing if m[1] not in dropped]
        classes = [c for c in classes if c not in dropped]
    if len(classes) < 2:
        found = f"only one class ({escape_name(classes[0])})" if classes else "no class"
        if dropped:
            found += f" of {min_photos} or more training photos (--min-photos dropped {len(dropped)})"
        raise DataError(f"{root}: found {found}; a classifier needs at least two "
                        "(one folder or label per class)")
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

    # What to carve from train, as a share of each class's training photos.
    if "test" in splits:
        held = {} if "val" in splits else {"val": VAL_FRACTION}
    else:
        held = {"test": TEST_FRACTION} if "val" in splits else {"val": TEST_FRACTION, "test": TEST_FRACTION}
    _enough(root, classes, splits["train"], missing, held)
    splits, sources, shared = _held_out(splits, held)
    sizes = _sizes(splits)
    listing = _listing(root, classes, splits)
    digests = {s: hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]
               for s, lines in listing.items()}
    warnings = (_shared_words(root, splits, shared) + _few_test_photos(root, classes, splits["test"])
                + _duplicates(root, classes, splits, sizes))
    return Dataset(root=root, layout=layout, labels=classes, splits=splits,
                   sources={s: sources.get(s, "none") for s in splits},
                   skipped=[skipped(m) for m in missing], warnings=warnings,
                   fingerprint=fingerprint(listing, splits, sizes), split_digests=digests, options=options,
                   dropped=dropped, shared=shared)


def _held_out(splits, held: dict[str, float]) -> tuple[dict, dict[str, str], dict[str, int]]:
    """The splits with `held` carved from train by burst, where each came from, and what still shares."""
    sources = {split: "given" for split in splits}
    burst = _bursts(splits)
    if held:
        splits = {**splits, **_carve(splits["train"], held, SPLIT_SEED, burst)}
        for split, fraction in held.items():
            sources[split] = f"carved {fraction:.0%} of each class from train by burst (seed {SPLIT_SEED})"
    splits = {s: splits.get(s, []) for s in ("train", "val", "test")}
    return splits, sources, _shared(splits, burst)


def _enough(root: Path, classes: list[str], train, missing, held: dict) -> None:
    """Each class needs one training photo, plus one for each split carved from it.

    Every class short of that is named at once, so one run says all there is to fix.
    """
    need = 1 + len(held)
    have = Counter(y for _, y in train)
    lost = Counter(m[1] for m in missing if m[2] == "train")
    short = [(name, have[i]) for i, name in enumerate(classes) if have[i] < need]
    if not short:
        return
    roles = ", ".join(["training", *("validation" if s == "val" else s for s in held)])
    listed = ", ".join(f"'{escape_name(name)}' has {n}" + (f" ({lost[name]} listed but missing)" if lost[name]
                                                           else "") for name, n in short)
    them = "it" if len(short) == 1 else "them"
    raise DataError(f"{root}: {len(short)} class(es) with too few training photos ({listed}); each needs "
                    f"at least {need}, one each for {roles}; add photos of {them}, remove {them}, or pass "
                    f"--min-photos {need} to drop every class below {need}")


def _few_test_photos(root: Path, classes: list[str], test) -> list[str]:
    """One warning when a class has fewer than FEW_TEST_PHOTOS test photos: its figures are noise."""
    have = Counter(y for _, y in test)
    counts = sorted((have[i], name) for i, name in enumerate(classes))
    if counts[0][0] >= FEW_TEST_PHOTOS:
        return []
    low, high, median = counts[0][0], counts[-1][0], counts[len(counts) // 2][0]
    per_class = f"{low}" if low == high else f"{low} to {high}"
    named = ("" if low == high else f"median {median}; ") + listed([f"'{escape_name(name)}' {n}"
                                                                    for n, name in counts])
    # No architecture advice: a figure on few photos is noise whatever model it scores.
    return [f"{root}: too few photos for a trustworthy figure: the test split has {per_class} photo(s) per "
            f"class ({named}; all in manifest.json, data.counts), and below {FEW_TEST_PHOTOS} one photo is "
            "over a tenth of a class's accuracy; more test photos per class (make export TEST=folder), or "
            "fewer classes (--min-photos N, make MIN_PHOTOS=N, drops those below N) help"]


def _bursts(splits) -> dict[Path, tuple[int, int]]:
    """Each photo's (class, burst number) over every split (train.groups), a class at a time."""
    from train.groups import groups

    burst = {}
    for label in sorted({y for items in splits.values() for _, y in items}):
        files = sorted({f for items in splits.values() for f, y in items if y == label}, key=str)
        burst.update({f: (label, g) for f, g in zip(files, groups(files), strict=True)})
    return burst


def _carve(items, held: dict[str, float], seed: int, burst: dict | None = None) -> dict[str, list]:
    """Move `fraction` of each class (at least one photo) into each held split, repeatably, whole bursts
    at a time (train.groups) so that no held photo has a near-copy in train.

    A class of fewer bursts than splits cannot be held out independently: it is carved by photo, as
    before, and `_shared` counts what that leaves on both sides.
    """
    rng = random.Random(seed)
    burst = burst or {}
    out = {"train": [], **{split: [] for split in held}}
    for label in sorted({y for _, y in items}):
        members = sorted((f for f, y in items if y == label), key=str)
        bunches: dict = defaultdict(list)
        for f in members:
            bunches[burst.get(f, (label, str(f)))].append(f)
        if len(bunches) <= len(held):  # too few bursts: by photo
            bunches = {f: [f] for f in members}
        shuffled = list(bunches.values())
        rng.shuffle(shuffled)
        order = deque(shuffled)
        for k, (split, fraction) in enumerate(held.items()):
            n = max(1, round(len(members) * fraction))
            later = len(held) - k - 1  # the splits after this one, and train, keep a burst each
            taken: list = []
            while len(order) > later + 1 and (not taken or len(taken) < n):  # whole bursts, to the share
                taken += order.popleft()  # from the front: with no bursts, the very photos carved before
            out[split] += [(f, label) for f in taken]
        out["train"] += [(f, label) for bunch in order for f in bunch]
    return out


def _shared(splits, burst: dict) -> dict[str, int]:
    """Per held split, its photos whose burst also has training photos."""
    in_train = {burst[f] for f, _ in splits["train"] if f in burst}
    return {split: n for split in ("val", "test")
            if (n := sum(burst.get(f) in in_train for f, _ in splits[split]))}


def _shared_words(root: Path, splits, shared: dict[str, int]) -> list[str]:
    """One warning per split that shares bursts with training: its figure is not reported."""
    return [f"{root}: {n} of the {len(splits[split])} {'validation' if split == 'val' else split} photos "
            "share a burst with training photos (frames of one capture, shots seconds apart or "
            "near-identical views: train.groups), so no figure of that split is reported; capture each class "
            "in several sessions, and score on photos the model never saw: make export TEST=folder (--test)"
            for split, n in shared.items()]


def _sizes(splits) -> dict[Path, os.stat_result | None]:
    sizes = {}
    for items in splits.values():
        for f, _ in items:
            try:
                sizes[f] = f.stat()
            except OSError:
                sizes[f] = None  # vanished since listed: decode will skip it
    return sizes


def _listing(root: Path, classes: list[str], splits) -> dict[str, list[str]]:
    """split -> "label<TAB>path under the data" per photo, in split order."""
    base = os.path.abspath(root if root.is_dir() else root.parent)
    return {split: [f"{classes[y]}\t{os.path.relpath(os.path.abspath(f), base)}" for f, y in items]
            for split, items in splits.items()}


def fingerprint(listing: dict[str, list[str]], splits, stats) -> str:
    """sha256 of the labelled file list: split, label, path under the data, size, mtime.

    Cheap (no file is read), and changes when a photo is added, removed,
    relabelled, moved between splits or edited. A copy keeps it as long as
    the copy keeps mtimes (cp -p, rsync -a).
    """
    lines = []
    for split, items in splits.items():
        for line, (f, _) in zip(listing[split], items, strict=True):
            st = stats.get(f)
            size, mtime = (st.st_size, int(st.st_mtime)) if st else (-1, -1)
            lines.append(f"{split}\t{line}\t{size}\t{mtime}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _duplicates(root: Path, classes: list[str], splits, stats) -> list[str]:
    """The same bytes twice: under two labels an error, in two splits of one label a warning.

    A photo under two labels (the same frame captured into cat/ and dog/) is
    trained as both and scored wrong as one; in two splits, the test scores a
    photo training saw. Only files of equal size in another split or class are hashed.
    """
    by_size = defaultdict(list)
    for split, items in splits.items():
        for f, y in items:
            if stats.get(f):
                by_size[stats[f].st_size].append((split, y, f))
    groups = defaultdict(list)
    for same in by_size.values():
        if len({(split, y) for split, y, _ in same}) > 1:
            for split, y, f in same:
                try:
                    groups[hashlib.sha1(f.read_bytes()).digest()].append((split, y, f))
                except OSError:
                    pass
    base = root if root.is_dir() else root.parent
    labelled = [g for g in groups.values() if len({y for _, y, _ in g}) > 1]
    if labelled:
        named = sorted(sorted((_rel(f, base), classes[y]) for _, y, f in g) for g in labelled)
        pairs = "; ".join(" = ".join(f"{escape_name(rel)} ('{escape_name(label)}')" for rel, label in g)
                          for g in named)
        raise DataError(f"{root}: {len(labelled)} photo(s) have the same bytes under two labels ({pairs}); "
                        "keep each photo under one label: delete the copies under the wrong one")
    shared = [g for g in groups.values() if len({split for split, _, _ in g}) > 1]
    if not shared:
        return []
    examples = "; ".join(" = ".join(escape_name(_rel(f, base)) for _, _, f in g) for g in shared[:3])
    return [f"{root}: {len(shared)} photo(s) are in more than one split (same bytes): {examples}; "
            "delete the copies so test photos are new to the model"]


def _rel(f: Path, base: Path) -> str:
    try:
        return str(Path(f).relative_to(base))
    except ValueError:
        return str(f)


# ------------------------------------------------------------------------ pixels

def cores() -> int:
    """The cores this process may use: a container or taskset may allow fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    workers = workers or cores()
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
        if isinstance(x, np.memmap):
            # Compacted in place a chunk at a time: x[keep] would copy the whole
            # set into memory. keep is ascending, so no chunk reads a row already overwritten.
            for start in range(0, len(keep), 1024):
                chunk = keep[start : start + 1024]
                x[start : start + len(chunk)] = x[chunk]
            x = x[: len(keep)]
        else:
            x = x[keep]  # a copy; small next to the whole set, since only bad files drop out
    y = np.array([items[i][1] for i in keep], dtype=np.int32)
    return Decoded(x=x, y=y, files=[items[i][0] for i in keep], skipped=skipped)
