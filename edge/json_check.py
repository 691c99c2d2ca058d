"""Reading a JSON object field by field: every problem becomes one line naming its field.

The manifest's schema (edge.manifest) is written with these checks. Each
check returns the value or raises Wrong, whose str() says what was expected;
`Fields` collects the problems of a whole document, so one error lists them all.
No library: the device has numpy, Pillow and an interpreter only.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable


class Wrong(Exception):
    """A value of the wrong type or range; str() says what was expected."""


def shown(value) -> str:
    """A value as the JSON it was read from, short: "abc", 3, null, a list."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(low: int = 0, what: str = "a non-negative integer") -> Callable:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise Wrong(what)
        return value
    return check


positive = integer(1, "a positive integer")
count = integer(0)


def any_int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise Wrong("an integer")
    return value


def number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise Wrong("a non-negative number")
    return float(value)


def text(value):
    if not isinstance(value, str) or not value:
        raise Wrong("a non-empty string")
    return value


def file_name(value):
    """A model file's name: a plain name inside the export folder, never a path out of it."""
    if (not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value
            or not value.isprintable()):
        raise Wrong("a plain file name inside the export folder (no folder, no '..', no control "
                     "characters)")
    return value


def flag(value):
    if not isinstance(value, bool):
        raise Wrong("true or false")
    return value


def an_object(value):
    if not isinstance(value, dict):
        raise Wrong("an object")
    return value


def a_list(value):
    if not isinstance(value, list):
        raise Wrong("a list")
    return value


def one_of(*choices) -> Callable:
    def check(value):
        if value not in choices:
            raise Wrong(" or ".join(json.dumps(c) for c in choices))
        return value
    return check


HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256(value):
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise Wrong("64 lowercase hex digits")
    return value


def class_names(value):
    if not isinstance(value, list) or len(value) < 2:
        raise Wrong("a list of at least 2 class names")
    if not all(isinstance(v, str) and v for v in value):
        raise Wrong("class names as non-empty strings")
    if len(set(value)) != len(value):
        raise Wrong("distinct class names")
    return list(value)


def shape(value):
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise Wrong("a list of non-negative integers")
    return list(value)


class Fields:
    """One JSON object being read; every problem becomes a line naming its field."""

    def __init__(self, obj, prefix: str, problems: list[str]):
        self.obj, self.prefix, self.problems = obj, prefix, problems

    def at(self, key: str, check: Callable = lambda v: v, required: bool = True, default=None):
        if key not in self.obj:
            if required:
                self.problems.append(f"{self.prefix}{key}: missing")
            return default
        value = self.obj[key]
        if value is None and not required:
            return default
        try:
            return check(value)
        except Wrong as exc:
            self.problems.append(f"{self.prefix}{key}: expected {exc}, got {shown(value)}")
            return default

    def child(self, key: str, cls, required: bool = True):
        """A nested object read by `cls._read`, or None when absent or wrong."""
        value = self.at(key, an_object, required)
        return None if value is None else cls._read(Fields(value, f"{self.prefix}{key}.", self.problems))

    def children(self, key: str, cls) -> dict:
        value = self.at(key, an_object, default={})
        out = {}
        for name, item in value.items():
            if not isinstance(item, dict):
                self.problems.append(f"{self.prefix}{key}.{name}: expected an object, got {shown(item)}")
                continue
            out[name] = cls._read(Fields(item, f"{self.prefix}{key}.{name}.", self.problems))
        return out
