"""Model outputs to class probabilities and decisions: the one rule everywhere.

Training metrics, export validation, compare and both runtimes on the device
call these, so the same output always gives the same label:

- a one-unit sigmoid output p becomes two columns [1 - p, p];
- the predicted class is the highest probability, and an exact tie goes to the
  lowest class index, so a sigmoid output of exactly 0.5 is labels[0];
- top-k lists classes by falling probability, ties in class order;
- an answer whose top score is under the caller's --threshold is UNKNOWN ("none of
  these"), its score and top-k left as the model gave them (answer() below: the one
  place classify, camera and serve turn scores into a label).

numpy only: this file ships to the device.
"""
from __future__ import annotations

import numpy as np

from edge.errors import NoodleError
from edge.escape import shown

# The label of an answer whose top score is under --threshold. A model with a class of this
# name (any case) is refused with a threshold: the two could not be told apart.
UNKNOWN = "unknown"


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


def answer(top: list[tuple[str, float]], threshold: float = 0.0) -> dict:
    """One image's result from its top-k (label, score) pairs, best first: its label, score and top.

    The label is UNKNOWN when the top score is under `threshold` (0: never); the score and
    the top-k stay the model's, so a caller still sees what it thought.
    """
    label, score = top[0]
    return {"label": UNKNOWN if score < threshold else label, "score": round(score, 6),
            "top": [{"label": name, "score": round(value, 6)} for name, value in top]}


def check_threshold(threshold: float, labels: list[str], where: str) -> None:
    """A threshold between 0 and 1, and no class the UNKNOWN answer would be mistaken for."""
    if not 0 <= threshold <= 1:
        raise NoodleError(f"--threshold {threshold:g}: out of range; use 0 (off) to 1")
    clash = [label for label in labels if label.strip().casefold() == UNKNOWN]
    if threshold > 0 and clash:
        raise NoodleError(f"{where}: a class of the model is named '{shown(clash[0])}', which --threshold's "
                          f"'{UNKNOWN}' answer would be mistaken for; rename that class, or leave out "
                          "--threshold")
