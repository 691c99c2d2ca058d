"""The pretrained head's solver (train.head): the optimum of its stated objective, found alike every time."""
from __future__ import annotations

import numpy as np

from train import head


def _problem(n=300, d=20, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)) * 6  # ReLU6-pooled features lie in 0-6
    y = (x @ rng.normal(size=(d, k)) + rng.normal(size=(n, k))).argmax(1)
    return x, y


def _gradient(x, y, k, l2, kernel, bias):
    """The objective's gradient, written out here apart from the solver's."""
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(k)[y]) / len(x)
    return x.T @ g + l2 * kernel, g.sum(0)


def test_the_solution_zeroes_the_objectives_gradient():
    x, y = _problem()
    s = head.solve(x, y, 3, 1e-2, 1000)
    assert s.converged and 0 < s.iterations < 1000
    g_kernel, g_bias = _gradient(x, y, 3, 1e-2, s.kernel.astype(np.float64), s.bias.astype(np.float64))
    assert np.abs(g_kernel).max() < 1e-4 and np.abs(g_bias).max() < 1e-4
    # Far from zero at the start: the test would see a solver that did not move.
    g0, _ = _gradient(x, y, 3, 1e-2, np.zeros((20, 3)), np.zeros(3))
    assert np.abs(g0).max() > 1e-2


def test_the_bias_is_unregularized_and_a_strong_penalty_leaves_the_class_priors():
    x, y = _problem(k=2)
    y[:240] = 0  # 80 % of one class
    y[240:] = 1
    s = head.solve(x, y, 2, 1e3, 1000)
    assert np.abs(s.kernel).max() < 1e-4
    priors = np.exp(s.bias) / np.exp(s.bias).sum()
    np.testing.assert_allclose(priors, [0.8, 0.2], atol=1e-3)


def test_the_same_features_give_the_same_weights_and_one_history_row_per_iteration():
    x, y = _problem()
    a, b = (head.solve(x, y, 3, 1e-4, 50, val=(x[:30], y[:30])) for _ in range(2))
    np.testing.assert_array_equal(a.kernel, b.kernel)
    assert len(a.history) == a.iterations and [r["epoch"] for r in a.history] == list(range(a.iterations))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(a.history[-1])
    assert a.history[-1]["loss"] < a.history[0]["loss"]


def test_an_iteration_cap_is_reported_as_not_converged():
    x, y = _problem()
    s = head.solve(x, y, 3, 1e-6, 3)
    assert s.iterations == 3 and not s.converged


def test_blocks_of_rows_give_the_one_block_solution(monkeypatch):
    """The features are widened to float64 a block of rows at a time: the same head as all at once."""
    x, y = _problem(n=2500)
    blocked = head.solve(x.astype(np.float32), y, 3, 1e-2, 1000)
    monkeypatch.setattr(head, "_blocks", lambda n: [slice(0, n)])
    whole = head.solve(x.astype(np.float32), y, 3, 1e-2, 1000)
    # The same objective to rounding: the optimum's loss agrees, and the weights as far as
    # L-BFGS's stopping tolerance lets rounding move where it stops on this ill-conditioned problem.
    assert abs(blocked.history[-1]["loss"] - whole.history[-1]["loss"]) < 1e-4
    assert np.abs(blocked.kernel - whole.kernel).max() < 1e-2
