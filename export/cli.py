"""`noodle export` and `noodle compare`: the export stage's commands.

TensorFlow is imported inside the commands, so `noodle --help` stays fast.
"""
from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import one_line_errors
from edge.usage import OneLineUsage
from export.config import CALIBRATION_SPLITS, DEFAULTS, IO_TYPES, QUANTIZERS
from train.quiet import show_progress

app = typer.Typer(cls=OneLineUsage, no_args_is_help=True, add_completion=False)

RunDir = Annotated[Path, typer.Argument(help="Run folder written by `noodle train`.")]
DataOption = Annotated[Path | None, typer.Option(
    help="The training data, if it moved since training (default: the path in the run's manifest).")]
EdgeOption = Annotated[Path | None, typer.Option(
    help="Python of the device environment with tflite-runtime 2.14 (default: .venv-edge/bin/python).")]
TestOption = Annotated[Path | None, typer.Option(
    "--test", help="A labelled folder or CSV nobody trained on, to score every variant on "
                   "(default: the training data's test split).")]
TestMapOption = Annotated[str | None, typer.Option(
    "--test-map", metavar="CLASS=LABEL,...",
    help="--test's classes that are named otherwise than the model's labels (cats=cat is matched "
         "without it: case and a plural s, when one to one).")]


def parse_test_map(text: str | None) -> dict[str, str] | None:
    """--test-map's CLASS=LABEL pairs; a malformed one is refused in one line."""
    if not text:
        return None
    pairs = [p.partition("=") for p in text.split(",") if p.strip()]
    bad = [a + s + b for a, s, b in pairs if not (s and a.strip() and b.strip())]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)}: give CLASS=LABEL pairs, comma-separated",
                                 param_hint="--test-map")
    return {a.strip(): b.strip() for a, _, b in pairs}


# The choices, and every default below, are export.config's.
Quantizer = Enum("Quantizer", {name: name for name in QUANTIZERS}, type=str)
IOType = Enum("IOType", {name: name for name in IO_TYPES}, type=str)
CalibrationSplit = Enum("CalibrationSplit", {name: name for name in CALIBRATION_SPLITS}, type=str)


@app.command("export")
@one_line_errors
def export_command(
    run_dir: RunDir,
    variants: Annotated[list[str] | None, typer.Option(
        help="Variants to write, comma-separated or repeated (default: all four).")] = None,
    calibration_samples: Annotated[int, typer.Option(
        help="Shuffled photos to calibrate int8 on "
             f"(a warning below {DEFAULTS.calibration_warn_below}).")] = DEFAULTS.calibration_samples,
    calibration_split: Annotated[CalibrationSplit, typer.Option(
        help="The split those photos come from; never the test split, which scores the variants.")]
    = CalibrationSplit(DEFAULTS.calibration_split),
    io: Annotated[IOType, typer.Option(
        help="int8 model's input/output type: uint8 (raw camera pixels) or int8.")] = IOType(DEFAULTS.io),
    quantizer: Annotated[Quantizer, typer.Option(
        help="litert: also write int8-litert.tflite with the LiteRT Quantizer's static int8 recipe, "
             "on the same calibration photos, to compare with the converter's int8.")]
    = Quantizer(DEFAULTS.quantizer),
    max_drop: Annotated[float | None, typer.Option(
        help="Gate each variant against float32 on the CI of their paired accuracy delta (export.gate): "
             "exit 1 when it surely loses more than this many points, 3 when too few photos decide; "
             "either leaves an export `noodle bundle` refuses without --force. 0 or more.")] = None,
    diagnose: Annotated[bool, typer.Option(
        "--diagnose", help="Rank int8's layers by quantization error: export/diagnosis.md.")] = False,
    float_layers: Annotated[str | None, typer.Option(
        help="Also write int8-mixed.tflite with these layers kept float: auto (the suspect ones), "
             "N (the N worst), or layer names, comma-separated.")] = None,
    drop_extras: Annotated[bool, typer.Option(
        "--drop-extras", help="Remove the last export's int8-mixed, int8-litert and diagnosis instead of "
                              "keeping them (kept when made from this same model).")] = False,
    test: TestOption = None,
    test_map_: TestMapOption = None,
    data: DataOption = None,
    edge: EdgeOption = None,
) -> None:
    """Convert RUN_DIR/model.keras to TFLite files in RUN_DIR/export/ and validate each."""
    from export.convert import ExportFailed, export_run, record_validation
    from export.extra_variants import make_extras, previous_extras
    from export.validate import raise_for, validate_export

    show_progress()
    check_max_drop(max_drop)
    mapping = parse_test_map(test_map_)  # a malformed one now, not after the conversions
    io = io.value
    previous = (None, {}) if drop_extras else previous_extras(run_dir)
    export_run(run_dir, variants=variants, calibration_samples=calibration_samples,
               calibration_split=calibration_split.value, io=io, data=data)
    diagnosis = make_extras(run_dir, litert=quantizer is Quantizer.litert, float_layers=float_layers,
                            diagnose=diagnose, samples=calibration_samples, split=calibration_split.value,
                            io=io, data=data, previous=previous)
    report = validate_export(run_dir, data=data, edge=edge)
    manifest = record_validation(run_dir, report, max_drop)
    raise_for(report)
    if max_drop is not None:
        _gate(run_dir, max_drop, test, mapping, data, diagnosis is not None, calibration_samples,
              calibration_split.value, io)
    if manifest.failed:
        raise ExportFailed("; ".join(f"{v}: {m}" for v, m in manifest.failed.items()))


def check_max_drop(max_drop: float | None) -> None:
    """--max-drop: None, or a finite number of points, 0 or more (NaN would pass every variant)."""
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        from export.convert import ExportError

        raise ExportError(f"--max-drop {max_drop:g}: out of range; give the points a variant may lose "
                          "against float32, a number 0 or more (e.g. --max-drop 1)")


def _gate(run_dir: Path, max_drop: float, test, mapping, data, diagnosed: bool, samples: int, split: str,
          io: str) -> None:
    """Decide every variant against float32 (export.gate), record the outcome in the manifest, and exit
    with its status: 1 failed, 3 undecided (too few photos). An int8 that did not pass is diagnosed."""
    from export.compare import paired_figures
    from export.convert import ExportError
    from export.extra_variants import calibration, diagnose_run
    from export.gate import EXIT, REFERENCE, Outcome, gate, record_gate

    check_max_drop(max_drop)
    scores, figures = paired_figures(run_dir, data, test, test_map=mapping)
    if REFERENCE not in figures:
        raise ExportError(f"--max-drop compares with {REFERENCE}.tflite, which this export lacks; "
                          f"export {REFERENCE} too")
    result = gate(figures, max_drop, len(scores.y))
    record_gate(run_dir, result)
    for decision in result.decisions:
        typer.echo(f"gate     {decision.line}")
    outcome = result.outcome
    typer.echo(f"gate     {result.summary().removeprefix('gate ')}")
    if outcome is Outcome.passed:
        return
    # The diagnosis ranks int8's layers by quantization error: it is about a variant that tripped
    # only when an int8 one did (float16 and dynamic-range have no activation ranges to blame).
    tripped = [d for d in result.decisions if d.outcome is not Outcome.passed]
    tripped_int8 = [d.line for d in tripped if d.variant == "int8"]
    if not diagnosed and "int8" in figures and tripped_int8:
        pixels, info = calibration(run_dir, samples, split, data)
        diagnose_run(run_dir, pixels, info, f"the gate tripped: {tripped_int8[0]}", io)
    elif not tripped_int8:
        typer.echo(f"gate     no int8 diagnosis: {', '.join(d.variant for d in tripped)} tripped, and the "
                   "diagnosis ranks int8's layers; float16 and dynamic-range keep activations float, so "
                   "their loss is the weights' rounding")
    for d in tripped:
        typer.echo(f"gate: {d.line}", err=True)
    typer.echo(f"gate {outcome.value}: this export is not shippable: `make bundle` refuses it unless "
               f"FORCE=1 (`noodle bundle --force`)"
               + ("; more test photos (TEST=...) narrow the CI" if outcome is Outcome.undecided else ""),
               err=True)
    raise typer.Exit(EXIT[outcome])


@app.command("compare")
@one_line_errors
def compare_command(
    run_dir: RunDir,
    test: TestOption = None,
    test_map_: TestMapOption = None,
    data: DataOption = None,
    edge: EdgeOption = None,
    latency_runs: Annotated[int, typer.Option(
        help="Timed invokes per model and thread count.")] = DEFAULTS.latency_runs,
    shifts: Annotated[int, typer.Option(
        min=0, help="Photos whose label int8 kept but whose probability moved most, added to "
                    "disagreements.png.")] = DEFAULTS.top_shifts,
) -> None:
    """Compare the exported variants: size, accuracy with paired statistics, latency, memory."""
    from export.compare import compare_run
    from export.report_md import to_markdown

    show_progress()
    report = compare_run(run_dir, data=data, edge=edge, latency_runs=latency_runs, test=test,
                         top_shifts=shifts, test_map=parse_test_map(test_map_))
    typer.echo("")
    typer.echo(to_markdown(report))
    typer.echo(f"report: {report['report']} (and report.json, report.png, confusion.png"
               + (", disagreements.png" if report["disagreements"]["file"] else "") + ")")
