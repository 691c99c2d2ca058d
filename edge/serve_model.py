"""serve's one interpreter, shared by the camera loop and every request: one invoke at a time.

numpy and an interpreter (through edge.runtime): this file ships to the device.
"""
from __future__ import annotations

import hashlib
import threading
import time

import numpy as np

from edge.postprocess import UNKNOWN, answer, check_threshold


class SharedModel:
    """The one interpreter: an invoke at a time, for the camera and every request."""

    def __init__(self, clf, k: int, threshold: float = 0.0):
        """threshold: under it an answer is `unknown` (--threshold); a model, taught ones too, with a
        class of that name is refused here, so a teach that would make one fails in words."""
        from edge.escape import escape_name
        from edge.runtime import embedded_metadata, package_version, read_checked

        check_threshold(threshold, clf.labels, escape_name(str(getattr(clf, "folder", None) or clf.path)))
        self.clf, self.k, self.threshold = clf, min(k, len(clf.labels)), threshold
        self.lock = threading.Lock()
        model = read_checked(clf.path)
        self.sha256 = hashlib.sha256(model.data).hexdigest()
        embedded = embedded_metadata(model, clf.path)
        details = {"input": clf.interpreter.get_input_details()[0],
                   "output": clf.interpreter.get_output_details()[0]}
        self.info = {
            "file": clf.path.name, "sha256": self.sha256, "variant": clf.variant, "labels": clf.labels,
            "input": {"height": clf.size[0], "width": clf.size[1], "channels": 3,
                      "dtype": np.dtype(details["input"]["dtype"]).name},
            "quantization": {side: {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                                    "zero_point": int(d["quantization"][1])} for side, d in details.items()},
            "runtime": {"name": clf.runtime, "version": package_version(clf.runtime)},
            "described_by": clf.described_by, "validation": clf.validation, "top_k": self.k,
            "threshold": threshold,
            "metadata": embedded.to_dict() if embedded is not None else None,
        }
        # A model that loads but cannot run fails here, in one line, not at the first request.
        self.classify(np.zeros((*clf.size, 3), np.uint8))

    def classify(self, pixels: np.ndarray) -> dict:
        with self.lock:
            start = time.perf_counter()
            probs = self.clf.probabilities(pixels[None])
            invoke_ms = (time.perf_counter() - start) * 1000
        return {**answer(self.clf.top_k(probs, self.k)[0], self.threshold), "invoke_ms": round(invoke_ms, 3)}

    def said_unknown(self, result: dict) -> bool:
        """Whether `result` is the threshold's `unknown` (with one, no class of the model has that name)."""
        return self.threshold > 0 and result["label"] == UNKNOWN
