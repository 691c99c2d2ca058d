"""compare: paired statistics, the pictures, the --max-drop gate, --test photos, calibration, litert.

The statistics are checked against values worked out by hand and against a
paired bootstrap. The gate runs on `shifted_run`: a hand-weighted brightness
model whose "int8" is the same net with its threshold moved just past one
photo, so exactly one photo is lost (1.25 pp of 80) and the gate's
arithmetic is known in advance. `--test` is checked against `noodle-edge
classify` on the session's trained `exported_run`.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.atomic import write_json
from edge.manifest import InputSpec, Preprocessing, RunManifest, read_manifest
from edge.preprocess import PREPROCESSING
from export import stats
from export.report_md import boundary_words
from tests.device_env import device_env, skip_the_tflite_runtime_half
from train.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["bright", "dark"]
SIZE = 32


# ---------------------------------------------------------------- statistics

def test_mcnemar_exact_known_values():
    assert stats.mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * (1/2)^5
    assert stats.mcnemar_exact(5, 0) == stats.mcnemar_exact(0, 5)
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    big = stats.mcnemar_exact(400, 520)  # 2^920 overflows a float; the integer tail must not
    assert 0 < big < 0.001 and big == stats.mcnemar_exact(520, 400)


def test_identical_predictions_give_no_difference():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1] * 10)
    pred = np.where(np.arange(len(y)) % 7 == 0, 1 - y, y)
    paired = stats.paired_comparison(y, pred, pred)
    assert paired["delta_pp"] == 0 and paired["mcnemar_p"] == 1.0
    assert paired["discordant"] == {"float_only": 0, "variant_only": 0}
    lo, hi = paired["delta_ci95"]
    assert lo < 0 < hi
    assert "no detectable difference" in stats.verdict("int8", paired)


def test_interval_covers_delta_and_agrees_with_a_paired_bootstrap():
    rng = np.random.default_rng(7)
    n = 600
    y = rng.integers(0, 3, n)
    ref = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
    var = np.where(rng.random(n) < 0.06, (ref + 1) % 3, ref)  # a variant that flips ~6 % of labels
    paired = stats.paired_comparison(y, ref, var)
    table = stats.paired_table(ref == y, var == y)
    assert paired["delta_pp"] == pytest.approx(100 * ((var == y).mean() - (ref == y).mean()))
    assert paired["discordant"] == {"float_only": table["float_only"], "variant_only": table["variant_only"]}
    lo, hi = paired["delta_ci95"]
    assert lo < paired["delta_pp"] < hi
    resample = np.random.default_rng(0).integers(0, n, (10_000, n))
    deltas = 100 * ((var == y)[resample].mean(1) - (ref == y)[resample].mean(1))
    boot_lo, boot_hi = np.percentile(deltas, [2.5, 97.5])
    assert abs(lo - boot_lo) < 0.5 and abs(hi - boot_hi) < 0.5


def test_verdict_says_worse_or_better_with_the_interval():
    y = np.zeros(400, int)
    right, wrong = np.zeros(400, int), np.r_[np.zeros(390, int), np.ones(10, int)]
    worse = stats.paired_comparison(y, right, wrong)
    assert worse["delta_pp"] == pytest.approx(-2.5) and worse["mcnemar_p"] < 0.05
    lo, hi = worse["delta_ci95"]
    assert hi < 0 and f"CI {lo:+.2f}..{hi:+.2f}" in stats.verdict("int8", worse)
    assert stats.verdict("int8", worse).startswith("int8 is worse than float32 by 2.50 pp")
    better = stats.paired_comparison(y, wrong, right)
    assert stats.verdict("int8", better).startswith("int8 is better than float32 by 2.50 pp")


def test_confusion_and_per_class_counts():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 1, 1])
    counts = stats.confusion(y, pred, 4)
    assert counts.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    per = stats.per_class(counts, ["a", "b", "c", "d"])
    assert per["a"] == {"accuracy": pytest.approx(2 / 3), "correct": 2, "count": 3}
    assert per["c"] == {"accuracy": 0.0, "correct": 0, "count": 1}
    assert per["d"] == {"accuracy": None, "correct": 0, "count": 0}


def test_gate_decides_on_the_interval_not_the_point_delta():
    """Non-inferiority on the 95 % CI: passed above -PP, failed wholly below, undecided across it."""
    from export.gate import Outcome, decide, gate

    def figure(delta, lo, hi):
        return {"delta_pp": delta, "delta_ci95": [lo, hi], "discordant": {"float_only": 1, "variant_only": 0}}

    # 110 carved photos: a point gain, and a CI far too wide to tell a 0.5 pp loss from none.
    wide = decide("int8", figure(+1.8, -2.12, 5.74), 0.5)
    assert wide.outcome is Outcome.undecided and "too few photos" in wide.line and "-2.12..+5.74" in wide.line
    # A point loss over --max-drop whose CI holds 0: not "failed" (McNemar would call it undetectable).
    assert decide("int8", figure(-1.21, -3.9, 1.1), 0.5).outcome is Outcome.undecided
    assert decide("int8", figure(-0.2, -0.4, 0.3), 0.5).outcome is Outcome.passed
    assert decide("int8", figure(-0.25, -0.25, 0.0), 0.25).outcome is Outcome.passed  # exactly PP passes
    failed = decide("int8", figure(-6.0, -9.0, -3.0), 1)
    assert failed.outcome is Outcome.failed and failed.line.startswith("int8 failed: loses more than 1 pp")
    both = gate({"float32": {"delta_pp": 0.0, "delta_ci95": [0, 0]}, "int8": figure(-6.0, -9.0, -3.0),
                 "float16": figure(0, -1, 1)}, 1, 80)
    assert [d.variant for d in both.decisions] == ["int8", "float16"] and both.outcome is Outcome.failed
    assert both.summary().startswith("gate failed on 80 photos; --max-drop 1: a variant passes when")


def test_export_outcome_is_the_one_reading_of_passed():
    from export.gate import Outcome, export_outcome, validation_record

    assert export_outcome(None).outcome is Outcome.unfinished
    assert export_outcome({"passed": True}).outcome is Outcome.passed  # a manifest from before the gate
    assert export_outcome({"passed": False}).outcome is Outcome.failed
    pending = validation_record(True, 0.5)
    assert pending["passed"] is False and export_outcome(pending).outcome is Outcome.unfinished
    for outcome in ("failed", "undecided"):
        found = export_outcome({"passed": False, "checks_passed": True,
                                "gate": {"max_drop": 0.5, "outcome": outcome, "count": 110}})
        assert found.outcome is Outcome(outcome) and found.forcible and "110 photos" in found.line
    broken = export_outcome({"passed": False, "checks_passed": False, "gate": {"outcome": "passed"}})
    assert broken.outcome is Outcome.failed and not broken.forcible


# ---------------------------------------------------------------- the contact sheet

def _scores(probs: dict, y: np.ndarray, tmp_path: Path):
    from export.compare import Photos, Scores

    files = [tmp_path / f"{i}.jpg" for i in range(len(y))]
    x = np.random.default_rng(0).integers(0, 256, (len(y), 8, 8, 3), np.uint8)
    return Scores(Photos(str(tmp_path), "test", list(zip(files, y, strict=True))), files, x, y, probs)


def test_contact_sheet_only_when_labels_differ(tmp_path):
    from export.figures import disagreements

    y = np.array([0, 1, 0, 1, 0, 1])
    p_float = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.3, 0.7], [0.8, 0.2], [0.4, 0.6]])
    dest = tmp_path / "disagreements.png"
    same = disagreements(_scores({"float32": p_float, "int8": p_float + [0.01, -0.01]}, y, tmp_path),
                         LABELS, dest, "int8", "float32", top_shifts=2)
    assert same["file"] is None and not dest.exists() and same["changed"] == 0
    assert "same label on all 6 photos" in same["summary"]

    p_int8 = p_float.copy()
    p_int8[2] = [0.45, 0.55]  # the one photo whose label flips
    sheet = disagreements(_scores({"float32": p_float, "int8": p_int8}, y, tmp_path),
                          LABELS, dest, "int8", "float32", top_shifts=2)
    assert sheet["file"] == "disagreements.png" and dest.stat().st_size > 0
    assert sheet["changed"] == 1 and len(sheet["photos"]) == 3  # the flip, then 2 largest shifts
    flip = sheet["photos"][0]
    assert flip["label_changed"] and flip["float32"]["label"] == "bright" and flip["int8"]["label"] == "dark"
    assert flip["int8"]["probability"] == pytest.approx(0.55)

    # Nothing to show again: the stale sheet goes.
    disagreements(_scores({"float32": p_float, "int8": p_float}, y, tmp_path), LABELS, dest, "int8",
                  "float32", top_shifts=2)
    assert not dest.exists()


# ---------------------------------------------------------------- the gate, end to end

def brightness_photos(root: Path, per_split: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for label, (low, high) in (("bright", (160, 230)), ("dark", (25, 95))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.integers(low, high) + rng.integers(-20, 21, (SIZE, SIZE, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{label}{i}.png")


def brightness_model(bias: float = 6.0, size: int = SIZE):
    """P(dark) = sigmoid(bias - 12 * mean brightness): the threshold is brightness bias / 12."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(1, 1, activation="relu", name="grey")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("grey").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    model.get_layer("probability").set_weights([np.array([[-12.0]], np.float32),
                                                np.array([bias], np.float32)])
    return model


def run_manifest(model, data: Path | None, size: int = SIZE) -> dict:
    """What `noodle train` would write for a hand-made brightness model trained on DATA."""
    return RunManifest(
        labels=LABELS, input=InputSpec(height=size, width=size, dtype="float32", range=(0, 255)),
        output="sigmoid", preprocessing=Preprocessing.from_dict(PREPROCESSING), arch="brightness",
        params=int(model.count_params()), data={"root": str(data)}).to_dict()


def write_run(run: Path, model, data: Path, size: int = SIZE) -> Path:
    """A run folder as `noodle train` leaves it: the model, its splits.csv, the manifest last."""
    from train.data import find_dataset
    from train.splits import write_splits

    run.mkdir(parents=True)
    model.save(run / "model.keras")
    write_splits(RunDir(run).splits, find_dataset(data))
    write_json(run / "manifest.json", run_manifest(model, data, size))
    return run


def noodle(*args: str):
    from noodle import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory) -> Path:
    """float32 right on all 80 test photos; "int8" loses exactly the darkest bright one."""
    from export.convert import convert, export_run
    from export.extra_variants import add_variant
    from train.data import decode, find_dataset

    data = tmp_path_factory.mktemp("brightness") / "photos"
    brightness_photos(data, {"train": 20, "test": 40})
    run = write_run(data.parent / "run", brightness_model(), data)
    export_run(run, variants=["float32"])

    test = find_dataset(data).splits["test"]
    decoded = decode(test, (SIZE, SIZE))
    mean = decoded.x.reshape(len(decoded.y), -1).mean(1) / 255
    bright = np.sort(mean[decoded.y == 0])
    assert mean[decoded.y == 1].max() < bright[0]
    # A threshold between the two darkest bright photos: only the darkest turns "dark".
    threshold = (bright[0] + bright[1]) / 2
    add_variant(run, "int8", convert(brightness_model(12 * threshold), "float32"))
    return run


@pytest.mark.slow
def test_max_drop_gate_exit_codes(shifted_run, capsys):
    import typer

    from export.cli import _gate
    from export.config import ExportConfig
    from export.gate import run_outcome

    cfg = ExportConfig()

    def gate(max_drop):  # the gate `noodle export --max-drop` runs, on the export with the shifted int8
        _gate(shifted_run, max_drop, None, None, None, False, cfg.calibration_samples, cfg.calibration_split,
              cfg.io)
        return capsys.readouterr()

    manifest = shifted_run / "export" / "manifest.json"  # as validation leaves it: its checks passed
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "validation": {"passed": True, "checks_passed": True}}))
    # One photo of 80 lost: a CI of about -6.7..+3.4 pp cannot tell a 1.25 pp loss from none.
    with pytest.raises(typer.Exit) as exit_:
        gate(1.25)
    assert exit_.value.exit_code == 3
    said = capsys.readouterr()
    (line,) = [s for s in said.err.splitlines() if s.startswith("gate: ")]
    assert "int8 undecided: too few photos" in line and "95 % CI" in line
    assert "1 photo(s) only float32" in line
    assert "not shippable" in said.err and "FORCE=1" in said.err
    assert "gate     undecided on 80 photos; --max-drop 1.25: a variant passes" in said.out
    found = run_outcome(shifted_run)
    assert found.outcome.value == "undecided" and found.forcible
    assert json.loads(manifest.read_text())["validation"]["passed"] is False
    # The gate did not pass on int8, so int8 was diagnosed without being asked.
    assert (shifted_run / "export" / "diagnosis.md").is_file()
    assert json.loads((shifted_run / "export" / "diagnosis.json").read_text())["reason"].startswith(
        "the gate tripped")

    assert "gate     passed on 80 photos" in gate(7).out  # the whole CI above -7 pp
    assert run_outcome(shifted_run).outcome.value == "passed"


@pytest.mark.slow
def test_a_gate_tripped_by_float16_alone_says_why_int8_is_not_diagnosed(shifted_run, tmp_path, capsys):
    """The diagnosis ranks int8's layers: a float16 loss is the weights' rounding, not int8's ranges."""
    import shutil

    import typer

    from export.cli import _gate
    from export.config import ExportConfig
    from export.extra_variants import add_variant

    run = shutil.copytree(shifted_run, tmp_path / "run")
    (run / "export" / "diagnosis.md").unlink(missing_ok=True)
    (run / "export" / "diagnosis.json").unlink(missing_ok=True)
    add_variant(run, "float16", (run / "export" / "int8.tflite").read_bytes())  # the shifted model
    add_variant(run, "int8", (run / "export" / "float32.tflite").read_bytes())  # int8 loses nothing
    cfg = ExportConfig()
    with pytest.raises(typer.Exit) as exit_:
        # int8 (float32's file: CI -4.58..+4.58 on 80 photos) passes 5 pp; float16's CI straddles -5.
        _gate(run, 5, None, None, None, False, cfg.calibration_samples, cfg.calibration_split, cfg.io)
    assert exit_.value.exit_code == 3
    said = capsys.readouterr()
    failed = [line for line in said.err.splitlines() if line.startswith("gate: ")]
    assert len(failed) == 1 and failed[0].startswith("gate: float16 undecided")
    assert ("gate     no int8 diagnosis: float16 tripped, and the diagnosis ranks int8's layers; float16 and "
            "dynamic-range keep activations float") in said.out
    assert not (run / "export" / "diagnosis.md").exists() and not (run / "export" / "diagnosis.json").exists()


@pytest.mark.slow
def test_report_keys_verdicts_and_pictures(shifted_run):
    from export.compare import compare_run

    report = compare_run(shifted_run, latency_runs=2)
    rows = {r["variant"]: r for r in report["rows"]}
    int8 = rows["int8"]
    assert int8["delta_pp"] == pytest.approx(-1.25) and int8["mcnemar_p"] == 1.0
    assert int8["discordant"] == {"float_only": 1, "variant_only": 0}
    lo, hi = int8["delta_ci95"]
    assert lo < -1.25 < hi
    assert int8["per_class"]["bright"] == {"accuracy": 39 / 40, "correct": 39, "count": 40}
    assert int8["confusion"]["counts"] == [[39, 1], [0, 40]]
    assert report["test"]["count"] == 80 and report["test"]["split"] == "test"
    md = (shifted_run / "export" / "report.md").read_text()
    assert "int8: no detectable difference from float32 (delta -1.25 pp" in md
    assert "](disagreements.png)" in md and "](confusion.png)" in md
    assert report["disagreements"]["changed"] == 1
    for name in ("disagreements.png", "confusion.png", "report.png"):
        assert (shifted_run / "export" / name).stat().st_size > 0


# ---------------------------------------------------------------- --test photos

def _classify(model: Path, folder: Path) -> dict[str, dict[Path, str]]:
    """predictions.csv column suffix -> file -> label from `noodle-edge classify --csv`:
    ai-edge-litert in this environment (""), tflite-runtime 2.14 in the device one where it has it."""
    from edge.cli import app as edge_app

    outputs = {"": CliRunner().invoke(edge_app, ["classify", str(model), str(folder), "--csv"]).stdout}
    env = device_env()
    if env.missing is None:
        done = subprocess.run([str(env.python), "-m", "edge", "classify", str(model), str(folder), "--csv"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        outputs["@tflite-runtime"] = done.stdout
    return {suffix: {Path(r["file"]).resolve(): r["label"] for r in csv.DictReader(io.StringIO(out))}
            for suffix, out in outputs.items()}


@pytest.mark.slow
def test_compare_on_a_test_folder_matches_noodle_edge_classify(exported_run, tmp_path):
    import shutil

    folder = tmp_path / "held-out"
    source = Path(read_manifest(exported_run)["data"]["root"]) / "test"
    shutil.copytree(source, folder)
    last = read_manifest(exported_run)["labels"][-1]
    (folder / last).rename(folder / last.upper())  # named otherwise, but for case: matched, and said
    own = exported_run / "export" / "report.md"  # the training data's test split's report, if any
    before = own.read_bytes() if own.exists() else None
    result = noodle("compare", exported_run, "--test", folder, "--latency-runs", "2")
    assert result.exit_code == 0, result.output
    assert f"its classes read as the model's labels: {last.upper()} as {last}" in result.output
    # Its own report, named by the set: the split's report stays as it was.
    files = RunDir(exported_run).reports(folder)
    assert files.folder.name.startswith("test-held-out-") and f"report: {files.md}" in result.output
    assert (own.read_bytes() if own.exists() else None) == before
    assert "test photos, another set than this report's, as training scored it" in files.md.read_text()
    report = json.loads(files.json.read_text())
    photos = sorted(p.resolve() for p in folder.rglob("*.jpg"))
    assert report["test"] == {"source": str(folder), "split": "external", "count": len(photos),
                              "skipped": [], "mapping": {last.upper(): last}}
    rows = {r["variant"]: r for r in report["rows"]}
    with open(files.predictions) as f:
        predicted = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).resolve() for r in predicted) == photos
    truth = {p: last if p.parent.name == last.upper() else p.parent.name for p in photos}
    for variant in ("float32", "int8"):
        # Each runtime's classify gives, photo for photo, compare's column for that runtime.
        edge = _classify(exported_run / "export" / f"{variant}.tflite", folder)
        for suffix, labels in edge.items():
            ours = {Path(r["file"]).resolve(): r[variant + suffix] for r in predicted}
            assert ours == labels, variant + suffix
        assert rows[variant]["accuracy"] == pytest.approx(np.mean([edge[""][p] == truth[p] for p in photos]))
        device = rows[variant].get("device_runtime")
        if "@tflite-runtime" in edge:
            assert device["accuracy"] == pytest.approx(
                np.mean([edge["@tflite-runtime"][p] == truth[p] for p in photos]))
        else:  # a 3.12+ device environment: no tflite-runtime column or figure, and the report says why
            assert device is None and not any("@" in column for column in predicted[0])
            assert "(tflite-runtime 2.14 NOT checked)" in files.md.read_text()
    skip_the_tflite_runtime_half("ai-edge-litert's half")


@pytest.mark.slow
def test_test_folder_with_other_classes_is_one_line(shifted_run, tmp_path):
    for name in ("bright", "birds"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / name / "a.png")
    result = noodle("compare", shifted_run, "--test", tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "birds" in lines[0]


# ---------------------------------------------------------------- calibration and the LiteRT Quantizer

@pytest.mark.slow
def test_calibration_options_reach_the_manifest_and_report(tmp_path):
    from export.compare import compare_run

    data = tmp_path / "photos"
    brightness_photos(data, {"train": 20, "val": 10, "test": 10}, seed=3)
    run = write_run(tmp_path / "run", brightness_model(), data)
    result = noodle("export", run, "--variants", "float32,int8", "--calibration-samples", "12",
                    "--calibration-split", "val")
    assert result.exit_code == 0, result.output
    assert "warning: int8 calibrated on only 12 photos" in result.output
    calibration = read_manifest(run / "export")["models"]["int8"]["calibration"]
    assert calibration["samples"] == 12 and calibration["split"] == "val"
    compare_run(run, latency_runs=2)
    assert "int8 calibrated on 12 photos from the val split" in (run / "export" / "report.md").read_text()
    bad = noodle("export", run, "--calibration-split", "test")
    assert bad.exit_code == 2


@pytest.mark.slow
def test_litert_quantizer_variant_side_by_side(tmp_path, monkeypatch):
    pytest.importorskip("litert_quantizer")
    from export import convert, litert_quant
    from export.compare import compare_run

    seen = {}
    real_convert, real_quantize = convert.convert, litert_quant.quantize

    def converter(model, variant, calibration=None, io="uint8"):
        if variant == "int8":
            seen["converter"] = np.array(calibration)
        return real_convert(model, variant, calibration, io)

    def quantizer(float_model, calibration):
        seen["litert"] = np.array(calibration)
        return real_quantize(float_model, calibration)

    monkeypatch.setattr(convert, "convert", converter)
    monkeypatch.setattr(litert_quant, "quantize", quantizer)
    data = tmp_path / "photos"
    brightness_photos(data, {"train": 20, "test": 10}, seed=5)
    run = write_run(tmp_path / "run", brightness_model(), data)
    result = noodle("export", run, "--quantizer", "litert")
    assert result.exit_code == 0, result.output
    models = read_manifest(run / "export")["models"]
    entry = models["int8-litert"]
    assert entry["made_by"]["recipe"] == "static_wi8_ai8"
    same = {k: models["int8"]["calibration"][k] for k in ("samples", "split", "shuffle_seed")}
    assert {k: entry["calibration"][k] for k in same} == same
    # The very pixels the converter's int8 calibrated on.
    assert len(seen["litert"]) == same["samples"] and np.array_equal(seen["litert"], seen["converter"])
    validation = json.loads((run / "export" / "validation.json").read_text())
    checked = validation["variants"]["int8-litert"]["runtimes"]
    assert checked["ai-edge-litert"]["ok"]
    if validation["runtimes"]["tflite-runtime"]:
        assert checked["tflite-runtime"]["ok"]
    report = compare_run(run, latency_runs=2)
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["int8-litert"]["accuracy"] == rows["float32"]["accuracy"] == 1.0
    assert "| int8-litert |" in (run / "export" / "report.md").read_text()
    # An export that does not ask for it again keeps it (the same model made it); --drop-extras removes it.
    assert noodle("export", run, "--variants", "float32").exit_code == 0
    assert "int8-litert" in read_manifest(run / "export")["models"]
    assert noodle("export", run, "--variants", "float32", "--drop-extras").exit_code == 0
    assert not (run / "export" / "int8-litert.tflite").exists()
    assert "int8-litert" not in read_manifest(run / "export")["models"]


@pytest.mark.slow
def test_an_export_keeps_the_last_ones_extras_of_the_same_model(shifted_run, tmp_path):
    """diagnosis.md and int8-litert.tflite survive an export that does not redo them; --drop-extras not."""
    import shutil

    from export.convert import export_run
    from export.extra_variants import add_variant, make_extras, previous_extras

    run = shutil.copytree(shifted_run, tmp_path / "run")
    out = run / "export"
    add_variant(run, "int8-litert", (out / "int8.tflite").read_bytes())
    (out / "diagnosis.md").write_text("# int8 quantization diagnosis\n")
    for drop in (False, True):
        previous = (None, {}) if drop else previous_extras(run)
        export_run(run, variants=["float32"])
        make_extras(run, litert=False, float_layers=None, diagnose=False, samples=10, split="train",
                    previous=previous)
        listed = json.loads((out / "manifest.json").read_text())["models"]
        assert ("int8-litert" in listed) is not drop and (out / "int8-litert.tflite").is_file() is not drop
        assert (out / "diagnosis.md").is_file() is not drop


# Photos at the decision boundary: counted per variant, with the label flips among them.
def test_the_report_counts_boundary_photos_and_the_flips_among_them():
    from export.compare import Scores, accuracy_figures

    y = np.array([1, 1, 0, 1])
    float32 = np.array([[0.45, 0.55], [0.49, 0.51], [0.9, 0.1], [0.2, 0.8]])
    int8 = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])  # 128/256 twice: both to class 0
    scores = Scores(photos=None, files=[], x=np.zeros((4, 1, 1, 3), np.uint8), y=y,
                    probs={"float32": float32, "int8": int8})
    figures = accuracy_figures(scores, ["cat", "dog"])
    assert figures["float32"]["boundary"] == 0 and figures["int8"]["boundary"] == 2
    assert figures["int8"]["boundary_flips"] == 2
    words = boundary_words([{"variant": v, **f} for v, f in figures.items()])
    assert "float32 0, int8 2 (2 of them labelled otherwise than by float32)" in words
