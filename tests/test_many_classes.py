"""Many classes keep every output readable: lines and cells are cut, the confusion figure is capped.

The full figures stay in manifest.json and report.json; what is printed or
drawn names the worst classes first and ends with "... and N more".
"""
from __future__ import annotations

import json

from PIL import Image

from edge.escape import LISTED
from edge.manifest import RunManifest
from export.figures import CONFUSION_CLASSES, confusion_figure
from export.report_md import per_class_cell
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
    cell = per_class_cell({c: {"accuracy": (i % 10) / 10, "correct": i % 10, "count": 10}
                            for i, c in enumerate(CLASSES)})
    assert cell.startswith("worst: breed\\_000 0.0 % (0/10)")
    assert cell.endswith(f"... and {117 - LISTED} more")
    few = per_class_cell({"cats": {"accuracy": 1.0, "correct": 2, "count": 2},
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


def test_the_contact_sheets_captions_clear_the_photos_above_them():
    from types import SimpleNamespace

    import numpy as np

    from export.figures import SHEET_COLUMNS, sheet_figure

    n = 2 * SHEET_COLUMNS  # two rows
    labels = ["a_rather_long_class_name_of_forty_chars_", "short"]
    scores = SimpleNamespace(x=np.zeros((n, 32, 32, 3), np.uint8), y=np.zeros(n, int),
                             files=[f"photo_with_a_long_name_{i}.jpg" for i in range(n)])
    p = np.tile([[0.6, 0.4]], (n, 1))
    pred = np.zeros(n, int)
    fig = sheet_figure(scores, labels, list(range(n)), set(), p, p, pred, pred, np.zeros(n), "int8",
                       "float32")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for i in range(SHEET_COLUMNS, n):
        title = axes[i].title.get_window_extent(renderer)
        above = axes[i - SHEET_COLUMNS].get_window_extent(renderer)
        assert title.y1 <= above.y0, (i, title, above)  # below the photo above it
        pitch = axes[1].get_window_extent(renderer).x0 - axes[0].get_window_extent(renderer).x0
        assert title.width < pitch, (i, title.width, pitch)  # clear of the captions beside it


def test_the_latency_chart_shows_the_load_and_says_when_more_threads_were_slower():
    from export.figures import latency_title

    def report(two_threads_ms):
        return {"benchmark": {"threads": [1, 2], "loadavg": [1.37, 1.5, 1.2]},
                "rows": [{"variant": "int8",
                          "latency_ms": {"1": {"p50_ms": 1.0}, "2": {"p50_ms": two_threads_ms}}}]}

    assert latency_title(report(0.6)) == "invoke latency p50 (ms), load average 1.37"
    assert "2 threads slower than 1 for int8: other load" in latency_title(report(23.0))
