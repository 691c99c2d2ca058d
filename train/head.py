"""A pretrained backbone's new head, solved: L2-regularized softmax regression by L-BFGS.

The backbone is frozen, so its features of each photo are fixed numbers and
the head is a convex problem with one best answer. It is solved to
convergence, full batch, as linear probes of pretrained features are (CLIP's
protocol, scikit-learn's LogisticRegression), rather than run for a fixed
number of Adam epochs: no learning rate, batch or seed to choose, the same
weights on every machine, and on 5-fold cross-validation of the training
photos it scored above every Adam head tried (docs/experiments.md, the
linear-probe round). numpy and scipy only, in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Solution:
    kernel: np.ndarray  # (features, classes), the dense layer's
    bias: np.ndarray  # (classes,), unregularized
    iterations: int
    converged: bool
    message: str
    history: list[dict] = field(default_factory=list)  # per iteration: loss, accuracy, and val_* with val


def solve(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, max_iterations: int,
          val: tuple[np.ndarray, np.ndarray] | None = None) -> Solution:
    """Minimize mean cross-entropy + l2/2 * |kernel|^2 over softmax(x @ kernel + bias).

    `val` (features, labels): scored after every iteration, for the curves only; nothing is chosen on it.
    """
    from scipy.optimize import minimize

    # The features stay float32 (as computed); each block of rows is widened to
    # float64 only while it is multiplied, so memory holds no float64 copy of them.
    x = np.asarray(x, np.float32)
    n, d = x.shape
    onehot = np.eye(num_classes)[np.asarray(y)]

    def loss_and_grad(theta):
        kernel, bias = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
        loss, g_kernel, g_bias = 0.5 * l2 * (kernel * kernel).sum(), l2 * kernel, np.zeros(num_classes)
        for rows in _blocks(n):
            xb = x[rows].astype(np.float64)
            logp = _log_softmax(xb @ kernel + bias)
            loss -= (onehot[rows] * logp).sum() / n
            g = (np.exp(logp) - onehot[rows]) / n
            g_kernel += xb.T @ g
            g_bias += g.sum(0)
        return loss, np.concatenate([g_kernel.ravel(), g_bias])

    history: list[dict] = []

    def record(theta):
        kernel, bias = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
        row = {"epoch": len(history), **_scores(x, onehot, kernel, bias)}
        if val is not None and len(val[1]):
            scores = _scores(val[0], np.eye(num_classes)[val[1]], kernel, bias)
            row.update({f"val_{k}": v for k, v in scores.items()})
        history.append(row)

    result = minimize(loss_and_grad, np.zeros(d * num_classes + num_classes), jac=True, method="L-BFGS-B",
                      callback=record, options={"maxiter": max_iterations})
    theta = result.x
    return Solution(theta[: d * num_classes].reshape(d, num_classes).astype(np.float32),
                    theta[d * num_classes :].astype(np.float32), int(result.nit), bool(result.success),
                    str(result.message), history)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _blocks(n: int, rows: int = 1024):
    """Slices of `rows` rows: 1,024 rows of 1,280 features widened to float64 are 10 MB."""
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def _scores(x, onehot, kernel, bias) -> dict:
    """Unregularized mean cross-entropy and accuracy, as Keras logs them."""
    loss, right = 0.0, 0
    for rows in _blocks(len(x)):
        logp = _log_softmax(np.asarray(x[rows], np.float64) @ kernel + bias)
        loss -= (onehot[rows] * logp).sum()
        right += int((logp.argmax(1) == onehot[rows].argmax(1)).sum())
    return {"loss": float(loss / len(x)), "accuracy": float(right / len(x)) if len(x) else float("nan")}
