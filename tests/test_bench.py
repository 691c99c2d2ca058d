"""`noodle bench` on a tiny input: every row of BENCHMARKS.md is a figure or says why not.

A smoke test of the harness, not of speed: figures are printed by `make bench`,
never asserted here beyond being measured and positive.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
from typer.testing import CliRunner

from bench import cli
from bench.cli import app, render
from bench.report import summarize, targets
from export.validate import edge_python
from tests.device_env import tflite_runtime_missing
from train.config import ARCHITECTURES, DEFAULT_ARCH

SECTIONS = ("## What was measured", "## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.")


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of every table row (header and separator lines left out)."""
    rows, header_next = [], True
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header_next = True
            continue
        if header_next or set(line) <= set("|-"):
            header_next = False
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def check_filled(markdown: str) -> None:
    for heading in SECTIONS:
        assert heading in markdown, heading
    rows = table_rows(markdown)
    assert rows
    for cells in rows:
        assert all(cells), f"empty cell in {cells}"
        if not any(c.startswith("not measured") for c in cells):
            assert any(ch.isdigit() for c in cells[1:] for ch in c), f"no figure in {cells}"


@pytest.fixture(scope="module")
def photos(sample_data, tmp_path_factory):
    """Three test photos per class."""
    out = tmp_path_factory.mktemp("bench-photos")
    for cls in sorted((sample_data / "test").iterdir()):
        (out / cls.name).mkdir()
        for f in sorted(cls.iterdir())[:3]:
            shutil.copy2(f, out / cls.name / f.name)
    return out


@pytest.mark.slow
def test_bench_smoke(exported_run, trained_run, photos, tmp_path):
    run = tmp_path / exported_run.name  # with its training history, which row 6 reads
    shutil.copytree(exported_run, run)
    shutil.copy2(trained_run / "history.csv", run / "history.csv")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--run", str(run), "--photos", str(photos),
                                      "--repeats", "1", "--out", str(out), "--only", "device"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    markdown = (out / "BENCHMARKS.md").read_text()
    check_filled(markdown)

    assert report["photos"]["count"] == 6
    rows = {t["row"] for t in report["targets"]}
    assert rows - {"22"} == {1, 2, 3, 4}  # 22: serve's rows
    for t in report["targets"]:
        assert (t["measured"] is None) == bool(t.get("not_measured")), t
    clock = next(t for t in report["targets"] if t["row"] == 1)
    assert "--run" in clock["not_measured"]

    # The sides that can run here did run, and gave positive figures.
    s = report["summary"]
    assert s["seed"]["files_per_second"]["median"] > 0
    assert s["edge"]["ai-edge-litert/int8/1"]["files_per_second"]["median"] > 0
    assert s["floor"]["ai-edge-litert"]["median"] > 0
    assert s["cold_start"]["keras"]["peak_rss_mb"]["median"] > 0
    missing = tflite_runtime_missing()
    if edge_python() is not None and missing is None:
        assert s["edge"]["tflite-runtime/int8/2"]["p99_ms"]["median"] > 0
        assert s["cold_start"]["tflite-runtime"]["seconds"]["median"] > 0
        assert report["cold_start"]["imports"]["total_ms"] > 0
    elif missing:  # a 3.12+ device environment: its cells say why, as the check below has them
        device = next(e for e in report["environments"] if e["runtime"] == "tflite-runtime")
        assert device["missing"] == missing and f"not measured: {missing}" in markdown
    assert report["training"][0]["first_epoch"]["images_per_second"] > 0
    assert report["loadavg"]["after"] is not None

    # Without the device environment every one of its cells says so instead of a figure.
    missing = copy.deepcopy(report)
    missing["environments"][0]["missing"] = "no device environment; run `make edge-env`"
    for key in [k for k in missing["sides"]["edge"] if k.startswith("tflite-runtime/")]:
        del missing["sides"]["edge"][key]
    missing["sides"]["floor"].pop("tflite-runtime", None)
    missing.get("serve", {}).pop("tflite-runtime", None)
    missing["cold_start"]["samples"]["tflite-runtime"] = [{"error": "no device environment"}]
    del missing["summary"]
    missing["summary"] = summarize(missing)
    missing["targets"] = targets(missing)
    check_filled(render(missing))
    unmeasured = [t for t in missing["targets"] if "tflite-runtime" in t["what"]]
    assert unmeasured and all(t["met"] is None for t in unmeasured)

    # The clock: row 1 is the default architecture's run on the real photos, beside the others.
    def clocked(data, arch, seconds):
        stages = {name: {"seconds": seconds, "exit": 0} for name in ("train", "export", "compare")}
        return {"data": data, "arch": arch, "run": f"runs/bench/{arch}", "stages": stages,
                "total_seconds": 3 * seconds, "accuracy": {"keras": 0.9}, "loadavg_before": [0, 0, 0],
                "loadavg_after": [0, 0, 0]}

    timed = copy.deepcopy(report)
    timed["clock"] = {"runs": [clocked("embedded default (noodle data sample)", DEFAULT_ARCH, 10),
                               *(clocked("../shared/data/cats-vs-dogs", a, 20 + i)
                                 for i, a in enumerate(reversed(list(ARCHITECTURES))))]}
    timed["targets"] = targets(timed)
    first = next(t for t in timed["targets"] if t["row"] == 1)
    assert first["measured"] == 3 * (20 + len(ARCHITECTURES) - 1)  # the default's, listed last
    clock_rows = [r for r in table_rows(render(timed)) if "cats-vs-dogs" in r[0]]
    assert sorted(r[1] for r in clock_rows) == sorted(
        f"`{a}`" + (" (default)" if a == DEFAULT_ARCH else "") for a in ARCHITECTURES)


def test_bench_refuses_a_run_without_export(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"")
    result = CliRunner().invoke(app, ["--run", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "manifest" in result.output and str(tmp_path / "export") in result.output
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_bench_refuses_empty_photos(exported_run, tmp_path):
    result = CliRunner().invoke(app, ["--run", str(exported_run), "--photos", str(tmp_path),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--photos" in result.output and "no images" in result.output
    assert not (tmp_path / "bench.json").exists()


def test_a_failed_child_is_said_in_words_with_its_log(tmp_path, monkeypatch):
    import subprocess
    import sys

    import pytest

    from export.child import ChildFailed, reason, run_json

    crash = ("import os, sys; sys.stderr.write('F0000 check failed: tensor shape\\n"
             "*** Check failure stack trace: ***\\n    @     0x7f5f7b3a6ce3  cfunction_call\\n'); "
             "sys.stderr.flush(); os.abort()")
    with pytest.raises(ChildFailed) as err:
        run_json([sys.executable, "-c", crash], timeout=60)
    assert str(err.value) == "killed by SIGABRT (exit -6): F0000 check failed: tensor shape"
    assert "cfunction_call" in err.value.log
    assert reason("") == "no output"

    def refused(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "run", refused)
    with pytest.raises(ChildFailed, match="could not start python.*Resource temporarily unavailable.*out of "
                                          "processes or memory"):
        run_json([sys.executable, "-c", "pass"], timeout=60)


GROWTH = {"rows": [{"photos": n, "seconds": 10.0 * n / 1000 + 5, "peak_rss_mb": 1300.0 + n / 1000,
                    "embed_seconds": n / 100, "peak_disk_bytes": 14_000_000 + 5000 * n,
                    "disk_bytes": 14_000_000, "seconds_a_photo": (10.0 * n / 1000 + 5) / n,
                    "disk_bytes_a_photo": 14_000_000 / n + 5000,
                    "features_per_second": 100.0, "loadavg_before": [1.0, 1.0, 1.0],
                    "loadavg_after": [1.5, 1.0, 1.0]} for n in (1000, 4000)]}


def test_only_measures_the_sections_named_and_keeps_the_others(tmp_path, monkeypatch):
    """--only growth: the growth section measured and dated; the teach section kept from bench.json."""
    from bench.growth import checks

    growth = {**GROWTH, "checks": checks(GROWTH["rows"])}
    kept = {"generated": "2026-01-01 00:00 UTC", "command": "python -m bench --only teach",
            "machine": cli.machine(), "loadavg": {"before": [0, 0, 0], "after": [0, 0, 0]},
            "skipped": "the shared photos are not beside the checkout"}
    (tmp_path / "bench.json").write_text(json.dumps({"sections": {"teach": kept}}))
    called = []
    section = cli.SECTIONS["growth"]
    monkeypatch.setitem(cli.SECTIONS, "growth", cli.Section(
        section.what, lambda opts: called.append(opts) or growth, section.render))
    result = CliRunner().invoke(app, ["--only", "growth", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(called) == 1
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["sections"]["teach"] == kept
    assert report["sections"]["growth"]["rows"] == growth["rows"]
    assert report["sections"]["growth"]["command"] == "python -m bench --only growth"
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## 8. Cost growth" in markdown and "## 10. Enrolment" in markdown
    assert "Measured 2026-01-01 00:00 UTC" in markdown  # each section keeps its own date
    assert "Time grows linearly (each wall ratio at most 1.15× the photo ratio): yes" in markdown
    assert "Memory stays flat (peak RSS grows by at most 10 KB a photo): yes" in markdown
    for name in cli.SECTIONS:
        assert f"`{name}`" in markdown  # the list of sections comes from the table
    result = CliRunner().invoke(app, ["--only", "growth,nothing", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no section nothing" in result.output


def test_the_workers_and_teach_sections_render_their_figures():
    from bench.report import render_teach, render_workers

    stamp = {"generated": "2026-01-01 00:00 UTC", "command": "c", "machine": cli.machine(),
             "loadavg": {"before": [0, 0, 0], "after": [0, 0, 0]}}
    one = {"seconds": 100.0, "peak_rss_mb": 1300.0, "photos_per_second": 20.0}
    two = {"seconds": 60.0, "photos_per_second": 33.3, "chief": {"peak_rss_mb": 1300.0},
           "worker": {"peak_rss_mb": 1200.0}}
    workers = {**stamp, "photos": 2000, "one": one, "two": two, "ratio": 0.6, "met": True,
               "same": {"head_max_difference": 1e-7, "test_accuracy": [1.0, 1.0], "same": True}}
    text = "\n".join(render_workers(workers))
    assert "Two workers at most 0.65× one's wall: yes (0.60× of the medians)" in text
    text = "\n".join(render_workers({**workers, "ratio": 0.7, "met": False, "ratios": [0.62, 0.7, 0.71]}))
    assert "Two workers at most 0.65× one's wall: **no** (0.70× of the medians; each turn's: 0.62×, 0.70×, " \
           "0.71×)" in text
    side = {"export_int8": 0.97, "taught": 0.97, "teach_seconds": 0.9, "captures_embedded": 40, "invokes": 3,
            "solve": {"iterations": 16}}
    teach = {**stamp, "data": "cats-vs-dogs", "test_photos": 400,
             "rows": [{"per_class": 20, "train_seconds": 38.0, "export_seconds": 90.0,
                       "ai-edge-litert": side, "tflite-runtime": side}]}
    rows = table_rows("\n".join(render_teach(teach)))
    assert rows == [["20", "38 + 90", "97.00 %", "97.00 %", "97.00 %", "97.00 %", "0.9 / 0.9", "40 / 3",
                     "16"]]
