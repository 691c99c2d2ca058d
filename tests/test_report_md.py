"""export.report_md: report.md escapes what comes from the data and keeps its table whole.
"""
from __future__ import annotations

import re

from tests.hostile import (
    HOSTILE,
    clean,
)


def table_cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_report_md_escapes_labels_and_keeps_its_table():
    from export.report_md import to_markdown

    per_class = {label: {"accuracy": 0.5, "correct": 1, "count": 2} for label in HOSTILE}
    row = {"variant": "float32", "bytes": 1000, "size_vs_float32": 1.0, "accuracy": 0.5,
           "per_class": per_class, "latency_ms": {}, "peak_rss_mb": None, "fully_integer": False,
           "verdict": "float32: the reference"}
    hostile_row = {**row, "variant": "x|<b>\x1b[2J", "verdict": "x|<b>\x1b[2J: worse"}
    report = {"test": {"count": 2, "source": "photos|\n<i>", "split": "test", "skipped": []},
              "validation": {"count": 2, "split": "val"}, "keras_accuracy": 0.5, "calibration": {},
              "rows": [row, hostile_row], "parity": None, "runtimes": {"ai-edge-litert": True},
              "statistics": {"reference": "float32", "ci95": "x", "test": "y", "alpha": 0.05},
              "benchmark": {"threads": [1], "runs": 1, "budget_s": 1.5, "runtime": "r", "version": "v",
                            "cpus": 1, "machine": "m", "loadavg": None, "baseline_rss_mb": 1.0},
              "failed": {"int8": "<script>alert(1)</script>\x1b[2J"},
              "data_warnings": ["photos|<i>: too few photos for a trustworthy figure"],
              "disagreements": {"file": None, "summary": "none"}, "figures": {"confusion": None}}
    md = to_markdown(report)
    assert clean(md) and "<script>" not in md and "<b>" not in md and "<i>" not in md
    tables = [[line for line in t.splitlines() if line.startswith("|")] for t in md.split("\n\n")]
    tables = [t for t in tables if t]
    assert len(tables) == 2  # accuracy, then speed
    for table in tables:
        assert len(table) == 4 and len({table_cells(line) for line in table}) == 1  # no row broken
        assert max(map(len, table)) <= 120  # a terminal's width
    assert "\\|" in md and "&lt;script&gt;" in md
    # Training's warning about its data is in report.md too, and the report says what really tells.
    assert "WARNING: photos\\|&lt;i&gt;: too few photos for a trustworthy figure" in md
    assert "make export TEST=folder" in md
