"""Photos at the decision boundary: counted per variant, with the label flips among them."""
from __future__ import annotations

import numpy as np

from edge.postprocess import at_boundary
from export.compare import Scores, accuracy_figures
from export.report_md import boundary_words


def test_equal_top_scores_are_at_the_boundary_whatever_the_third():
    assert at_boundary(np.array([[0.5, 0.5], [0.6, 0.4]])).tolist() == [True, False]
    three = np.array([[0.2, 0.4, 0.4], [0.4, 0.2, 0.4], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    assert at_boundary(three).tolist() == [True, True, True, False]


def test_the_report_counts_boundary_photos_and_the_flips_among_them():
    y = np.array([1, 1, 0, 1])
    float32 = np.array([[0.45, 0.55], [0.49, 0.51], [0.9, 0.1], [0.2, 0.8]])
    int8 = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])  # 128/256 twice: both to class 0
    scores = Scores(photos=None, files=[], x=np.zeros((4, 1, 1, 3), np.uint8), y=y,
                    probs={"float32": float32, "int8": int8})
    figures = accuracy_figures(scores, ["cat", "dog"])
    assert figures["float32"]["boundary"] == 0 and figures["int8"]["boundary"] == 2
    assert figures["int8"]["boundary_flips"] == 2
    words = boundary_words([{"variant": v, **f} for v, f in figures.items()])
    assert "float32 0, int8 2 (2 of them labelled otherwise than by float32)" in words

