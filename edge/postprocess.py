"""Model outputs to class probabilities and decisions: the one rule everywhere.

Training metrics, export validation, compare and both runtimes on the device
call these, so the same output always gives the same label:

- a one-unit sigmoid output p becomes two columns [1 - p, p];
- the predicted class is the highest probability, and an exact tie goes to the
  lowest class index, so a sigmoid output of exactly 0.5 is labels[0];
- top-k lists classes by falling probability, ties in class order.

numpy only: this file ships to the device.
"""
from __future__ import annotations

import numpy as np


def widen(outputs: np.ndarray) -> np.ndarray:
    """(n, 1) sigmoid outputs to (n, 2) probabilities; softmax outputs unchanged."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=1)
    return outputs


def predicted_index(probs: np.ndarray) -> np.ndarray:
    """(n,) class indices; numpy's argmax returns the first maximum, the lowest index."""
    return np.asarray(probs).argmax(axis=1)


def at_boundary(probs: np.ndarray) -> np.ndarray:
    """(n,) True where the two highest scores are equal: the label is the tie rule's, the lower class.

    Quantized outputs land there (a uint8 sigmoid of 128 is exactly 0.5), so
    a report counts them: ties all going to one class bias int8 toward it.
    """
    top = np.sort(np.asarray(probs), axis=1)[:, -2:]
    return top[:, 0] == top[:, 1]


def ranked(probs: np.ndarray, k: int) -> np.ndarray:
    """(n, k) class indices by falling probability; a stable sort keeps ties in class order."""
    return np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
