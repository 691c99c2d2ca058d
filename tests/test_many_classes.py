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


def chart_report(two_threads_ms: float = 0.6, load: float = 1.37) -> dict:
    rows = []
    for variant, accuracy, ms in (("float32", 0.98, 10.7), ("int8", 0.97, 92.0)):
        latency = {"tflite-runtime": {"1": {"p50_ms": ms}, "2": {"p50_ms": two_threads_ms}},
                   "ai-edge-litert": {"1": {"p50_ms": ms / 8}, "2": {"p50_ms": ms / 10}}}
        rows.append({"variant": variant, "bytes": 4_000_000, "accuracy": accuracy, "latency": latency,
                     "latency_ms": latency["tflite-runtime"]})
    runtimes = [{"name": "tflite-runtime", "version": "2.14.0", "pi": "Raspberry Pi OS Bookworm",
                 "slow_int8": True},
                {"name": "ai-edge-litert", "version": "2.1.0", "pi": "Raspberry Pi OS Trixie",
                 "slow_int8": False}]
    return {"test": {"count": 110}, "rows": rows,
            "statistics": {"reference": "float32"},
            "benchmark": {"threads": [1, 2], "loadavg": [load, 1.5, 1.2], "cpus": 2, "machine": "x86_64",
                          "runtime": "tflite-runtime", "runtimes": runtimes}}


def test_the_speed_words_time_each_runtime_and_never_judge_the_pi_from_a_flagged_one():
    from export.report_md import speed_words

    words = speed_words(chart_report(load=1.37))
    pis = "tflite-runtime on Raspberry Pi OS Bookworm and ai-edge-litert on Raspberry Pi OS Trixie"
    assert pis in words[0]
    (old,) = [w for w in words if w.startswith("tflite-runtime 2.14.0")]
    assert "int8 8.6x slower" in old and "FLAGGED" in old and "says nothing of int8 on the Pi" in old
    (new,) = [w for w in words if w.startswith("ai-edge-litert 2.1.0")]
    assert "int8 8.6x slower" in new and "FLAGGED" not in new
    assert "this machine's contention, not any device's" in words[-1]  # load 1.37 on 2 cores
    assert "contention" not in speed_words(chart_report(load=0.2))[-1]


def test_report_png_titles_do_not_overlap_and_the_accuracy_axis_has_intervals(tmp_path, monkeypatch):
    import export.figures as figures

    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, dest, dpi=100: saved.setdefault("fig", fig))
    figures.chart(chart_report(), tmp_path / "report.png")
    fig = saved["fig"]
    renderer = fig.canvas.get_renderer()
    axes = fig.axes[:3]
    titles = [ax.title.get_window_extent(renderer) for ax in axes]
    for left, right in zip(titles, titles[1:], strict=False):
        assert left.x1 <= right.x0, (left, right)  # side by side, never over each other
    for ax, box in zip(axes, titles, strict=True):
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and "\n" not in ax.get_title()  # one line, not cut
    (bars,) = [c for c in axes[1].collections if len(c.get_segments()) == 2]  # the CI bars
    lowest = min(seg[:, 1].min() for seg in bars.get_segments())
    low, high = axes[1].get_ylim()
    assert lowest < 93 and low < lowest - 2 and high >= 100  # 110 photos: the whole interval shows


def test_confusion_png_is_one_matrix_and_the_differences_from_float32(tmp_path, monkeypatch):
    import export.figures as figures

    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, dest, dpi=100: saved.setdefault("fig", fig))
    base = [[50, 2], [3, 45]]
    rows = [{"variant": "float32", "accuracy": 0.95, "confusion": {"counts": base}},
            {"variant": "int8", "accuracy": 0.94, "confusion": {"counts": [[49, 3], [3, 45]]}},
            {"variant": "float16", "accuracy": 0.95, "confusion": {"counts": base}}]
    figures.confusion_figure(rows, ["cat", "dog"], tmp_path / "confusion.png")
    drawn = [ax for ax in saved["fig"].axes if ax.get_title()]
    assert [ax.get_title() for ax in drawn] == ["float32 (95.0 %)", "int8 minus float32: 1 moved",
                                                "float16 minus float32: no change"]
    assert sorted(t.get_text() for t in drawn[0].texts) == ["2", "3", "45", "50"]
    assert sorted(t.get_text() for t in drawn[1].texts) == ["+1", "-1"]  # the differences only
    assert len(drawn[2].texts) == 0
