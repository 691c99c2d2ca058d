"""Many classes keep every output readable: lines and cells are cut, the confusion figure is capped.

The full figures stay in manifest.json and report.json; what is printed or
drawn names the worst classes first and ends with "... and N more".
"""
from __future__ import annotations

import json

from PIL import Image

from edge.manifest import RunManifest
from edge.text import LISTED
from export.compare import _per_class_cell
from export.figures import CONFUSION_CLASSES, confusion_figure
from train.cli import summary

CLASSES = [f"breed_{i:03d}" for i in range(117)]


def test_the_run_summary_names_the_worst_classes_and_how_many_more(trained_run):
    data = json.loads((trained_run / "manifest.json").read_text())
    data.update(labels=CLASSES, output="softmax")
    accuracy = {c: (i % 10) / 10 for i, c in enumerate(CLASSES)}  # breed_000, _010, ... at 0 %
    data["metrics"]["test"].update(per_class_accuracy=accuracy, count=234)
    text = summary(RunManifest.from_dict(data), trained_run)
    for line in text.splitlines():
        assert len(line) < 400, line
    test = next(line for line in text.splitlines() if line.startswith("test "))
    assert "worst: breed_000 0.0%, breed_010 0.0%" in test and f"... and {117 - LISTED} more" in test
    model = next(line for line in text.splitlines() if line.startswith("model "))
    assert "117 labels (breed_000, breed_001" in model and f"... and {117 - LISTED} more" in model


def test_a_few_classes_are_listed_whole_in_their_order(trained_run):
    data = json.loads((trained_run / "manifest.json").read_text())
    text = summary(RunManifest.from_dict(data), trained_run)
    assert "worst" not in text and "more" not in text


def test_the_reports_per_class_cell_is_cut_worst_first():
    cell = _per_class_cell({c: {"accuracy": (i % 10) / 10, "correct": i % 10, "count": 10}
                            for i, c in enumerate(CLASSES)})
    assert cell.startswith("worst: breed\\_000 0.0 % (0/10)")
    assert cell.endswith(f"... and {117 - LISTED} more")
    few = _per_class_cell({"cats": {"accuracy": 1.0, "correct": 2, "count": 2},
                           "dogs": {"accuracy": 0.5, "correct": 1, "count": 2}})
    assert few == "cats 100.0 % (2/2), dogs 50.0 % (1/2)"


def test_the_confusion_figure_shows_the_classes_with_the_most_errors_at_a_bounded_size(tmp_path):
    k = len(CLASSES)
    counts = [[0] * k for _ in range(k)]
    for i in range(k):
        counts[i][i] = 5
    counts[40][41] = counts[41][40] = 3  # the two classes most confused
    rows = [{"variant": v, "accuracy": 0.9, "confusion": {"counts": counts}} for v in ("float32", "int8")]
    dest = tmp_path / "confusion.png"
    assert confusion_figure(rows, CLASSES, dest) == "confusion.png"
    with Image.open(dest) as img:
        width, height = img.size
    assert width * height < 4_000_000, img.size  # 117 classes drew 118 Mpx before
    assert CONFUSION_CLASSES < k
