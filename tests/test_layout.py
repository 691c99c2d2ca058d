"""The layout's rules, read from the source: edge/ is the leaf, and files stay small enough to read.

edge/ ships alone to the device, so it imports nothing of train/, export/ or
bench/; train/ imports nothing of export/ or bench/. A module over 500 lines
or a function over 60 is a sign that it does several jobs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer may not import.
BELOW = {"edge": {"train", "export", "bench"}, "train": {"export", "bench"}}
MODULE_LINES, FUNCTION_LINES = 500, 60
# Generated from MediaPipe's metadata_schema.fbs and vendored unchanged: not ours to split.
ASIDE = {"export/metadata_schema_py_generated.py"}
ASIDE_FUNCTIONS: set[tuple[str, str]] = set()


def sources(*packages: str):
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            yield path.relative_to(ROOT).as_posix(), ast.parse(text, str(path)), len(text.splitlines())


def imported(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_no_layer_imports_one_above_it(layer):
    upward = [f"{rel}:{line} imports {name}" for rel, tree, _ in sources(layer)
              for line, name in imported(tree) if name.split(".")[0] in BELOW[layer]]
    assert upward == []


def test_modules_and_functions_stay_short():
    long = []
    for rel, tree, lines in sources("train", "export", "edge"):
        if rel in ASIDE:
            continue
        if lines > MODULE_LINES:
            long.append(f"{rel}: {lines} lines")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (rel, node.name) not in ASIDE_FUNCTIONS:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name}: {node.end_lineno - first + 1} lines")
    assert long == []
