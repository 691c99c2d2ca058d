"""edge.escape: text from the data made safe for terminals, CSV and Markdown; the class-name rule.
"""
from __future__ import annotations

from edge.escape import LABEL_MAX, csv_cell, csv_value, label_problem, markdown, shown
from tests.hostile import (
    BIDI,
    C0,
    C1,
    ESCAPES,
    HOSTILE,
    LONG,
    PRINTABLE,
    clean,
)


def test_label_rule_refuses_unprintable_and_long_names_and_keeps_the_rest():
    # Named by hand, not by the rule: what must be refused, and what a class may be called.
    refused = ([f"c{ch}x" for ch in C0 + C1 + BIDI] + [f"e{i}{s}" for i, s in enumerate(ESCAPES)]
               + ["\tx", "\rx", "multi\nline", LONG, "L" * (LABEL_MAX + 1), ""])
    kept = ["cat", "=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "'quoted", *PRINTABLE,
            "L" * LABEL_MAX, "chat noir", "Ünïcödé 猫", "a.b-c_d"]
    assert set(refused) | set(kept) >= set(HOSTILE)  # every fuzz label is one or the other
    for label in refused:
        problem = label_problem(label)
        assert problem is not None, repr(label)
        assert clean(problem) and "\n" not in problem and len(problem) < 400, repr(problem)
    for label in kept:
        assert label_problem(label) is None, repr(label)


def test_csv_cells_round_trip_and_neutralize():
    for text in [*HOSTILE, "", "plain", "'", "''x", "\\", "b\udcff.jpg"]:
        cell = csv_cell(text)
        assert clean(cell) and csv_value(cell) == text, text
        assert not cell.startswith(("=", "+", "-", "@"))
    assert csv_cell("=1+2") == "'=1+2" and csv_cell("'x") == "''x" and csv_cell("cat") == "cat"


def test_markdown_and_table_forms():
    assert markdown("a|b<script>") == "a\\|b&lt;script&gt;"
    assert markdown("x\ny\x1b[2J") == "x\\ny\\033\\[2J"
    assert shown("L" * 500) == "L" * 37 + "..." and shown("cat") == "cat"
