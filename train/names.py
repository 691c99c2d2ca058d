"""What a data set's names may be: class names, split folder names, entries skipped; DataError.

Shared by the folder layouts (train.data) and the CSV reader (train.csv_reader).
"""
from __future__ import annotations

import os

from edge.captures import UNSURE
from edge.errors import NoodleError
from edge.escape import escape_name, label_problem

# Folder names people give their splits, in the order we look for them.
SPLIT_NAMES = {
    "train": ("train", "training", "training_set", "train_set"),
    "val": ("val", "valid", "validation", "validation_set", "val_set"),
    "test": ("test", "testing", "test_set"),
}


class DataError(NoodleError, ValueError):
    """A dataset that cannot be used as given; the message says how to fix it."""


def hidden(name: str) -> bool:
    """Dot files, macOS's AppleDouble `._*` files, the `__MACOSX/` folder zips add, and the frames a
    device was unsure of (`noodle pull --unsure`): unlabelled until someone moves them into a class."""
    return name.startswith(".") or name in ("__MACOSX", UNSURE)


def class_name(label: str, where: str | os.PathLike) -> str:
    """A class name, refused (naming where it came from) unless edge.escape.label_problem allows it."""
    problem = label_problem(label)
    if problem is not None:
        raise DataError(f"{escape_name(str(where))}: {problem}")
    return label
