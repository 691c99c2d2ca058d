"""A CSV of file and label columns: which columns, which rows, which photos they name.

A header is optional and its names are recognised (FILE_COLUMNS and the
others, most specific first); without one, the columns are told apart by
their cells. A label may be one-hot, a 0/1 column per class (Roboflow's
`_classes.csv`, Kaggle's ground truths); a split column may name each row's
split. A file cell is resolved against the CSV's folder and the folders under
it, so an id column (`000bec180eb18c7604dcecc8fe0dba07`) finds its photo.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from edge.preprocess import is_heif_file, is_image_file
from train.names import SPLIT_NAMES, DataError, class_name, hidden

# CSV header names, most specific first: the first one present is the column used.
FILE_COLUMNS = ("file", "filename", "file_name", "filepath", "file_path", "path", "image",
                "image_name", "image_path", "image_id", "img", "img_name", "fname", "id", "name")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "category", "target",
                 "breed", "species", "choice", "choices", "y")
SPLIT_COLUMNS = ("split", "set", "subset", "fold", "partition")
# Given as a column option, ignores a split column detection would have used.
NO_COLUMN = "none"
# Cells of one-hot label columns (`filename,cat,dog` over `a.jpg,1,0`), as
# Roboflow's classification CSVs and Kaggle's plant-pathology or ISIC ground
# truths write them: the class is the header of the column holding the 1.
ONE_HOT = {"0": False, "1": True, "0.0": False, "1.0": True}

MISSING = "listed in CSV but missing"
# A split's items before classes are numbered: (file, label).
Raw = dict[str, list[tuple[Path, str]]]


def read_csv(path: Path, file_column: str | None = None, label_column: str | None = None,
              split_column: str | None = None) -> tuple[Raw, list[tuple]]:
    """The CSV's splits, and its rows whose file is missing: (file, label, split, line)."""
    rows = _rows(path)
    base = path.parent
    given = {_norm(c) for c in (file_column, label_column, split_column) if c and not c.isdigit()}
    first = [_norm(c) for c in rows[0][1]]
    has_header = _has_header(base, rows, first, given)
    body = rows[1:] if has_header else rows
    sample = [row for _, row in body[:200]]

    def holds_photos(i: int) -> bool:
        """Whether nearly every cell of column i names a photo."""
        cells = [row[i] for row in sample if len(row) > i and row[i].strip()]
        return bool(cells) and sum(_photo_like(base, c) for c in cells) >= 0.9 * len(cells)

    def one_hot(i: int) -> bool:
        """Whether every cell of column i is a 0 or a 1."""
        cells = [row[i].strip() for row in sample if len(row) > i]
        return bool(cells) and all(c in ONE_HOT for c in cells)

    fi, li, si = _columns(path, first if has_header else None, len(rows[0][1]),
                          file_column, label_column, split_column, holds_photos, one_hot)
    width = max(max(i) if isinstance(i, tuple) else i for i in (fi, li, si) if i is not None)
    resolve = _resolver(base, [r[fi].strip() for _, r in body if len(r) > fi])

    raw: Raw = {}
    missing, seen, allowed = [], {}, set()
    for line, row in body:
        if len(row) <= width:
            raise DataError(f"{path}:{line}: expected {width + 1} columns; got {','.join(row)!r}")
        name = row[fi].strip()
        if not name:
            raise DataError(f"{path}:{line}: no file name; fill it in or delete the row")
        label = _marked(path, line, name, row, li, rows[0][1]) if isinstance(li, tuple) else row[li].strip()
        if not label:
            raise DataError(f"{path}:{line}: empty label for {name}; fill it in or delete the row")
        if label not in allowed:
            allowed.add(class_name(label, f"{path}:{line}"))
        split = "train" if si is None else _split(path, line, row[si], first[si] if has_header else si + 1)
        file = resolve(name)
        if file is None:
            missing.append((str(base / name), label, split, line))
            continue
        if file in seen:
            before, before_line, before_split = seen[file]
            if before != label:
                raise DataError(f"{path}:{line}: {name} is labelled {label!r} here and {before!r} on "
                                f"line {before_line}; keep one label per photo")
            if before_split == split:
                continue  # the same row twice
        seen[file] = (label, line, split)
        raw.setdefault(split, []).append((file, label))
    return raw, missing


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """The CSV's non-empty rows, each with the line it starts on (a quoted cell may span lines)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, _dialect(f.read(1 << 16)))
            f.seek(0)
            rows, start = [], 1
            for r in reader:
                if r and any(c.strip() for c in r):
                    rows.append((start, r))
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable CSV ({exc}); save it as UTF-8 file,label rows") from None
    if not rows:
        raise DataError(f"{path}: empty CSV; write one file,label row per photo")
    return rows


def _has_header(base: Path, rows: list, first: list[str], given: set[str]) -> bool:
    """Whether the first row is a header: it names known columns (or the ones asked for), or
    names no photo where the next row does ("photo,kind" over "cat.1.jpg,cat"); and no existing file."""
    named = any(c in FILE_COLUMNS + LABEL_COLUMNS + SPLIT_COLUMNS or c in given for c in first)
    names_photo = [any(_photo_like(base, c) for c in row) for _, row in rows[:2]]
    return ((named or names_photo == [False, True])
            and not any(c.strip() and (base / c.strip()).is_file() for c in rows[0][1]))


def _marked(path: Path, line: int, name: str, row: list[str], columns: tuple[int, ...],
            header: list[str]) -> str:
    """The class of a one-hot row: the header of its one column marked 1."""
    marked = [header[i].strip() for i in columns if ONE_HOT.get(row[i].strip())]
    if len(marked) != 1:
        found = "no class" if not marked else " and ".join(repr(m) for m in marked)
        names = ", ".join(header[i].strip() for i in columns)
        raise DataError(f"{path}:{line}: {name} is marked {found}; noodle learns one class per photo, "
                        f"so put a 1 in exactly one of the columns {names}")
    return marked[0]


def _photo_like(base: Path, cell: str) -> bool:
    """A CSV cell that names a photo: an image file name, or a file beside the CSV."""
    cell = cell.strip()
    return bool(cell) and (is_image_file(cell) or is_heif_file(cell) or (base / cell).is_file())


def _dialect(sample: str):
    """Commas, or the semicolons (and tabs) spreadsheets write where the comma is a decimal point."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _columns(path: Path, header: list[str] | None, width: int, file_column, label_column, split_column,
             holds_photos=lambda i: False, one_hot=lambda i: False):
    """Indices of the file, label and (or None) split columns.

    By header name (an option's, then a known one); the file column also by
    content (`holds_photos`), since a tool's export may call it anything.
    The label is a tuple of indices when it is one-hot: two or more columns
    left whose every cell is 0 or 1 (`one_hot`), one per class.
    """
    def given(option: str, value: str) -> int | None:
        if _norm(value) == NO_COLUMN:
            return None
        if value.isdigit() and 1 <= int(value) <= width:
            return int(value) - 1
        if header is None or _norm(value) not in header:
            raise DataError(f"{path}: --{option} {value}: no such column "
                            f"({'columns: ' + ', '.join(header) if header else 'no header row'}); "
                            f"pass a header name or a column number from 1 to {width}")
        return header.index(_norm(value))

    if header is None:  # positional: file,label[,split]
        return _positional(path, width, given, file_column, label_column, split_column, one_hot)

    # Columns named by an option first, then the first known name among the others.
    explicit = {k: given(f"{k}-column", v) for k, v in
                (("file", file_column), ("label", label_column), ("split", split_column)) if v}
    picked = dict(explicit)
    for key, names in (("file", FILE_COLUMNS), ("label", LABEL_COLUMNS), ("split", SPLIT_COLUMNS)):
        if key not in picked:
            free = [n for n in names if n in header and header.index(n) not in picked.values()]
            picked[key] = header.index(free[0]) if free else None
    fi, li, si = picked["file"], picked["label"], picked["split"]
    rest = [i for i in range(width) if i not in (fi, li, si)]
    photos = [i for i in rest if holds_photos(i)]
    if fi is None and not file_column and len(photos) == 1:
        fi = photos[0]
        rest.remove(fi)
    # Two columns, one recognised: the other is the one left.
    if fi is None and li is not None and len(rest) == 1 and not file_column:
        fi = rest.pop()
    if li is None and fi is not None and len(rest) == 1 and not label_column:
        li = rest.pop()
    hot = tuple(i for i in rest if one_hot(i))
    if li is None and fi is not None and len(hot) >= 2 and not label_column:
        li = hot
    for index, option in ((fi, "file-column"), (li, "label-column")):
        if index is None:
            what = "photos" if option == "file-column" else "labels"
            raise DataError(f"{path}: cannot tell which column holds the {what} "
                            f"(columns: {', '.join(header)}); pass --{option} NAME")
    return fi, li, si


def _positional(path: Path, width: int, given, file_column, label_column, split_column, one_hot):
    """Indices of the file, label and split columns of a CSV without a header: file,label[,split]."""
    fi = given("file-column", file_column) if file_column else 0
    li = given("label-column", label_column) if label_column else 1
    si = given("split-column", split_column) if split_column else (2 if width > 2 else None)
    if width < 2 or fi is None or li is None:
        raise DataError(f"{path}: needs a file column and a label column; write file,label rows")
    # One-hot columns name their classes only in a header; without one the
    # second of them would be read as a split column and refused for its 1s.
    hot = [i for i in range(width) if i != fi and one_hot(i)]
    if len(hot) >= 2 and len(hot) == width - 1 and not (label_column or split_column):
        raise DataError(f"{path}: columns other than the file's hold only 0 and 1, as one-hot labels do, "
                        f"but no header row names the classes; add one, e.g. "
                        f"file,{','.join(f'class{n}' for n in range(1, width))}")
    return fi, li, si


def _split(path: Path, line: int, value: str, column: str | int) -> str:
    split = next((s for s, names in SPLIT_NAMES.items() if _norm(value) in names), None)
    if split is None:
        raise DataError(f"{path}:{line}: unknown split {value.strip()!r} in column {column}; use train, "
                        f"val or test there, or pass --split-column {NO_COLUMN} to ignore the column")
    return split


def _resolver(base: Path, names: list[str]):
    """name -> existing file (resolved) or None.

    A name is a path relative to the CSV's folder. A path written on another
    machine (`C:\\Users\\me\\pets\\cats\\1.jpg`, Colab's `/content/drive/...`,
    Label Studio's `/data/upload/1/...`) is found by its longest tail that
    exists under the CSV's folder. A bare name still not there (Kaggle's `id`
    column, often without an extension), or such a path by its last part, is
    looked for as written or as `<name>.<image extension>` in the one folder,
    at most two levels under the CSV's, that holds the most of these names
    (e.g. train/).
    """
    direct = {}
    for name in set(names):
        p = base / name
        if p.is_file():
            direct[name] = p.resolve()
    cut = None  # the tail that worked last: one export writes one prefix
    for name in sorted(set(names) - set(direct)):
        parts = _parts(name)
        for i in dict.fromkeys([cut, *range(1, len(parts))]):
            if i is not None and 0 < i < len(parts) and (p := base.joinpath(*parts[i:])).is_file():
                direct[name], cut = p.resolve(), i
                break
    # By last part only a bare name or another machine's path: a missing cats/1.jpg
    # must stay missing, not become the dogs/1.jpg the index holds.
    lost = {name: _parts(name)[-1] for name in set(names) - set(direct)
            if len(_parts(name)) == 1 or re.match(r"/|[A-Za-z]:", name) or "\\" in name}
    index: dict[str, Path] = {}
    if lost:
        best = 0
        for folder in _folders(base, depth=2):
            here = _name_index(folder)
            score = sum(1 for last in lost.values() if last in here)
            if score > best:
                best, index = score, here

    def resolve(name: str) -> Path | None:
        return direct.get(name) or (index.get(lost[name]) if name in lost else None)

    return resolve


def _parts(name: str) -> list[str]:
    """A path's parts, whichever machine wrote it: / or \\ separators, no drive."""
    return [p for p in re.split(r"[\\/]+", name) if p and p != "." and not re.fullmatch(r"[A-Za-z]:", p)]


def _folders(base: Path, depth: int):
    yield base
    if depth:
        with os.scandir(base) as entries:  # d_type, not a stat per photo
            subs = sorted(e.path for e in entries if e.is_dir() and not hidden(e.name))
        for sub in subs:
            yield from _folders(Path(sub), depth - 1)


def _name_index(folder: Path) -> dict[str, Path]:
    """A folder's images by file name and by stem (x.jpg before x.png: alphabetical)."""
    with os.scandir(folder) as entries:
        files = sorted(Path(e.path) for e in entries
                       if not hidden(e.name) and e.is_file() and is_image_file(e.name))
    index: dict[str, Path] = {}
    for p in files:
        index.setdefault(p.name, p.resolve())
        index.setdefault(p.stem, p.resolve())
    return index


def skipped(missing: tuple) -> dict:
    file, label, split, line = missing
    return {"file": file, "reason": MISSING, "label": label, "line": line}
