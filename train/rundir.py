"""Where everything of a run folder lives, named once: what `noodle train` and `noodle export` write.

The host's layout; the device reads a manifest and a model file, never a run folder.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge.manifest import MANIFEST_NAME


@dataclass(frozen=True)
class Reports:
    """compare's files for one set of photos (RunDir.reports)."""

    folder: Path
    json = property(lambda self: self.folder / "report.json")
    md = property(lambda self: self.folder / "report.md")
    png = property(lambda self: self.folder / "report.png")
    predictions = property(lambda self: self.folder / "predictions.csv")
    confusion = property(lambda self: self.folder / "confusion.png")
    disagreements = property(lambda self: self.folder / "disagreements.png")


@dataclass(frozen=True)
class RunDir:
    """Every path of a run folder, named once: what `noodle train` and `noodle export` write.

        RUN/  model.keras manifest.json splits.csv history.csv curves.png metrics.json tensorboard/
              .backup/ (resume state)  .cache/ (memory-mapped pixels)
        RUN/export/  <variant>.tflite manifest.json validation.{json,npz} saved_model/
                     report.{md,json,png} predictions.csv confusion.png disagreements.png
                     diagnosis.{md,json}
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # written by `noodle train`
    model = property(lambda self: self.root / "model.keras")
    manifest = property(lambda self: self.root / MANIFEST_NAME)
    history = property(lambda self: self.root / "history.csv")
    curves = property(lambda self: self.root / "curves.png")
    metrics = property(lambda self: self.root / "metrics.json")
    # Each photo's split, label and sha256 (train.splits): what export reads the photos from.
    splits = property(lambda self: self.root / "splits.csv")
    tensorboard = property(lambda self: self.root / "tensorboard")
    backup = property(lambda self: self.root / ".backup")
    cache = property(lambda self: self.root / ".cache")
    # written by `noodle export` and `noodle compare`
    export = property(lambda self: self.root / "export")
    export_manifest = property(lambda self: self.export / MANIFEST_NAME)
    validation = property(lambda self: self.export / "validation.json")
    # Validation's probabilities per photo, which compare reuses on the same photos and files.
    validation_scores = property(lambda self: self.export / "validation.npz")
    saved_model = property(lambda self: self.export / "saved_model")
    # compare's report of the training data's own test split (`reports` names another set's)
    report_json = property(lambda self: self.reports().json)
    report_md = property(lambda self: self.reports().md)
    report_png = property(lambda self: self.reports().png)
    predictions = property(lambda self: self.reports().predictions)
    confusion = property(lambda self: self.reports().confusion)
    disagreements = property(lambda self: self.reports().disagreements)
    diagnosis_json = property(lambda self: self.export / "diagnosis.json")
    diagnosis_md = property(lambda self: self.export / "diagnosis.md")

    def tflite(self, variant: str) -> Path:
        return self.export / f"{variant}.tflite"

    def reports(self, test: str | os.PathLike | None = None) -> Reports:
        """Where compare writes its report of one set of photos, so that each set keeps its own.

        export/ for the training data's test split; export/test-<name>-<8 hex of
        its full path>/ for a labelled set given with --test.
        """
        if test is None:
            return Reports(self.export)
        path = Path(os.path.abspath(test))
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:40] or "test"
        return Reports(self.export / f"test-{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}")

    def __str__(self) -> str:
        return str(self.root)
