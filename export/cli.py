"""`noodle export` and `noodle compare`: the export stage's commands.

TensorFlow is imported inside the commands, so `noodle --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.errors import one_line_errors

app = typer.Typer(no_args_is_help=True, add_completion=False)

RunDir = Annotated[Path, typer.Argument(help="Run folder written by `noodle train`.")]
DataOption = Annotated[Path | None, typer.Option(
    help="The training data, if it moved since training (default: the path in the run's manifest).")]
EdgeOption = Annotated[Path | None, typer.Option(
    help="Python of the device environment with tflite-runtime 2.14 (default: .venv-edge/bin/python).")]


@app.command("export")
@one_line_errors
def export_command(
    run_dir: RunDir,
    variants: Annotated[list[str] | None, typer.Option(
        help="Variants to write, comma-separated or repeated (default: all four).")] = None,
    calibration_samples: Annotated[int, typer.Option(
        help="Shuffled training photos to calibrate int8 on.")] = 300,
    io: Annotated[str, typer.Option(
        help="int8 model's input/output type: uint8 (raw camera pixels) or int8.")] = "uint8",
    data: DataOption = None,
    edge: EdgeOption = None,
) -> None:
    """Convert RUN_DIR/model.keras to TFLite files in RUN_DIR/export/ and validate each."""
    from export.convert import ExportFailed, export_run
    from export.validate import validate_export

    manifest = export_run(run_dir, variants=variants, calibration_samples=calibration_samples,
                          io=io, log=typer.echo, data=data)
    validate_export(run_dir, data=data, edge=edge, log=typer.echo)
    if manifest["failed"]:
        raise ExportFailed("; ".join(f"{v}: {m}" for v, m in manifest["failed"].items()))


@app.command("compare")
@one_line_errors
def compare_command(
    run_dir: RunDir,
    data: DataOption = None,
    edge: EdgeOption = None,
    latency_runs: Annotated[int, typer.Option(help="Timed invokes per model and thread count.")] = 200,
) -> None:
    """Compare the exported variants: size, accuracy, latency, memory. Prints the table."""
    from export.compare import compare_run, to_markdown

    report = compare_run(run_dir, data=data, edge=edge, latency_runs=latency_runs, log=typer.echo)
    typer.echo("")
    typer.echo(to_markdown(report))
    typer.echo(f"report: {Path(run_dir) / 'export' / 'report.md'} (and report.json, report.png)")
