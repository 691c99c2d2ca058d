"""export.figures: the figures draw whatever the labels are.
"""
from __future__ import annotations

import numpy as np

from tests.hostile import (
    LONG,
)


def test_figures_draw_hostile_labels(tmp_path):
    from export.figures import confusion_figure

    labels = ["$x^$", "$\\frac$", "c\x1b[2Jx", LONG]
    rows = [{"variant": "float32", "accuracy": 0.5, "confusion": {"counts": np.eye(4, dtype=int).tolist()}}]
    assert confusion_figure(rows, labels, tmp_path / "confusion.png") == "confusion.png"
    assert (tmp_path / "confusion.png").stat().st_size > 0
