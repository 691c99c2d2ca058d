"""The layouts of a data folder: class folders (inside train/ val/ test/ or not), Kaggle's flat
`cat.0.jpg` names, a CSV of file and label columns (train.csv_reader), or one CSV per split folder.

`read_layout` tells them apart and lists each split's (file, label); train.data
numbers the classes and carves the splits. Hidden entries, `__MACOSX/` and
`._*` files are skipped everywhere.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge.escape import escape_name
from edge.files import walk
from edge.preprocess import is_image_file
from train.csv_reader import NO_COLUMN, read_csv
from train.names import SPLIT_NAMES, DataError, class_name, hidden

# Kaggle flat names are labels only when they make a plausible class set: at
# least 2 classes of at least this many photos each. `Img1.jpg ... Img500.jpg`
# or `Cat1.jpg ...` are not 500 classes.
FLAT_MIN_PER_CLASS = 5

LAYOUTS = ("noodle reads class folders (<class>/*.jpg, optionally inside train/ val/ test/), "
           f"Kaggle names (<class>.<n>.jpg, 2 or more classes of {FLAT_MIN_PER_CLASS}+ photos) "
           "or a CSV with file and label columns")


def read_layout(root: Path, options: dict, known: list[str] | None = None):
    """(layout, raw splits, missing CSV rows) of any layout."""
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; pass a folder of photos or a CSV")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a file that is not a CSV; pass a folder of photos or a file,label CSV")
        raw, missing = read_csv(root, **options)
        return "csv", raw, missing
    if options:
        flags = " ".join(f"--{k.replace('_', '-')}" for k in options)
        raise DataError(f"{root}: a folder, and {flags} name a CSV's columns; drop them or pass the CSV")
    try:
        return _read_folder(root, known)
    except DataError as exc:
        # Kaggle's zips: photos named by id, labels in a CSV beside them.
        csvs = sorted(root.glob("*.csv"))
        if csvs:
            raise DataError(f"{exc}; or pass {csvs[0]} as DATA if it labels these photos") from None
        raise


def _read_folder(root: Path, known: list[str] | None):
    split_dirs = {
        split: next((root / n for n in names if (root / n).is_dir()), None)
        for split, names in SPLIT_NAMES.items()
    }
    if split_dirs["train"] is not None or (known and split_dirs["test"] is not None):
        raw, layout, missing = {}, None, []
        for split, folder in split_dirs.items():  # train first: its labels check the others'
            if folder is None:
                continue
            csvs = sorted(p for p in folder.glob("*.csv") if not hidden(p.name))
            if _class_folders(folder):
                raw[split], layout = _read_class_folders(folder), "folders"
            elif _images_in(folder):
                raw[split], lost, kind = _split_folder(folder, csvs, known or _labels(raw.get("train")))
                missing += [(file, label, split, line) for file, label, _, line in lost]
                layout = layout or kind
        if not raw.get("train") and not (known and raw):
            raise DataError(
                f"{split_dirs['train']}: no class folders and no images; "
                "put photos in train/<class>/ (one folder per class)"
            )
        return layout, raw, missing
    if _class_folders(root):
        return "class-folders", {"train": _read_class_folders(root)}, []
    if _images_in(root):
        return "kaggle-flat", {"train": _read_flat(root, known)}, []
    raise DataError(f"{root}: unknown layout; {LAYOUTS}")


def _split_folder(folder: Path, csvs: list[Path], known: list[str] | None):
    """A split folder's photos, missing rows and layout: labelled by its one CSV,
    else by the photos' own names (`cat.0.jpg` beside a `notes.csv`)."""
    if len(csvs) == 1:
        # Roboflow's classification export: train/_classes.csv beside the photos.
        # Its rows are this folder's split whatever a split column says.
        try:
            listed, lost = read_csv(csvs[0], split_column=NO_COLUMN)
            if not any(listed.values()):
                raise DataError(f"{csvs[0]}: names none of the photos beside it; "
                                "write one file,label row per photo")
            return [item for rows in listed.values() for item in rows], lost, "csv-per-split"
        except DataError as not_labels:
            try:
                return _read_flat(folder, known), [], "kaggle-flat"
            except DataError:
                raise not_labels from None  # neither: the CSV's error says more
    return _read_flat(folder, known), [], "kaggle-flat"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not hidden(p.name) and is_image_file(p) and p.is_file())


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not hidden(p.name))


def _labels(items) -> list[str] | None:
    return sorted({label for _, label in items}) if items else None


def _read_class_folders(folder: Path) -> list[tuple[Path, str]]:
    items = []
    for class_dir in _class_folders(folder):
        class_name(class_dir.name, class_dir)
        files = []
        # Symlinked folders are followed, as noodle-edge classify follows them (edge.files.walk).
        for root, dirs, names in walk(class_dir):
            dirs[:] = [d for d in dirs if not hidden(d)]
            files += [p for n in names
                      if not hidden(n) and is_image_file(n) and (p := Path(root, n)).is_file()]
        files.sort()
        if not files:
            raise DataError(f"{class_dir}: class folder with no images; add photos or remove it")
        items += [(f, class_dir.name) for f in files]
    return items


def _read_flat(folder: Path, known: list[str] | None = None) -> list[tuple[Path, str]]:
    """Kaggle's `<label>.<anything>.jpg`, when the labels make a plausible class set.

    With `known` labels (a model's, or the training split's) any subset of
    them is plausible; otherwise at least two classes of FLAT_MIN_PER_CLASS.
    """
    files = _images_in(folder)
    # The label is the text before the first dot of the stem: cat.0.jpg -> cat.
    unlabelled = [f.name for f in files if "." not in f.stem]
    items = [(f, f.name.partition(".")[0]) for f in files if "." in f.stem]
    counts = Counter(label for _, label in items)
    why = None
    if unlabelled:
        why = (f"{len(unlabelled)} of {len(files)} names have no '<class>.' prefix, "
               f"e.g. {escape_name(unlabelled[0])}")
    elif known is not None:
        strangers = sorted(set(counts) - set(known))
        if strangers:
            why = f"prefixes {strangers[:5]} are not the classes {list(known)}"
    elif len(counts) < 2:
        why = f"every name starts with '{escape_name(next(iter(counts)))}.', which is one class"
    else:
        few = sorted(c for c, n in counts.items() if n < FLAT_MIN_PER_CLASS)
        if few:
            why = (f"{len(few)} of {len(counts)} prefixes name fewer than {FLAT_MIN_PER_CLASS} photos, "
                   f"e.g. '{escape_name(few[0])}.' ({counts[few[0]]})")
    if why:
        raise DataError(f"{folder}: file names do not spell classes ({why}); {LAYOUTS}")
    for label, file in {label: f for f, label in items}.items():
        class_name(label, file)
    return items
