"""edge.postprocess: the decision boundary, where the tie rule picks the label."""
from __future__ import annotations

import numpy as np

from edge.postprocess import at_boundary


def test_equal_top_scores_are_at_the_boundary_whatever_the_third():
    assert at_boundary(np.array([[0.5, 0.5], [0.6, 0.4]])).tolist() == [True, False]
    three = np.array([[0.2, 0.4, 0.4], [0.4, 0.2, 0.4], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    assert at_boundary(three).tolist() == [True, True, True, False]
