"""`noodle train` and `noodle data`: the train stage's commands.

TensorFlow is imported inside the commands, so `noodle --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import one_line_errors
from train.fit import TrainConfig

# The defaults live in TrainConfig, with their reasons; the options repeat none of them.
DEFAULTS = TrainConfig(data=Path("."), out=Path("."))

app = typer.Typer(no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Datasets: make the embedded default.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("sample")
@one_line_errors
def data_sample(
    out: Annotated[Path, typer.Argument(help="Folder to write train/ and test/ into.")],
    seed: Annotated[int, typer.Option(help="Same seed, same pixels.")] = 0,
    train_per_class: Annotated[int, typer.Option(help="Training photos per class.")] = 300,
    test_per_class: Annotated[int, typer.Option(help="Test photos per class.")] = 100,
) -> None:
    """Write the embedded default dataset: two classes of synthetic JPEGs."""
    from train.sample import write_sample

    counts = write_sample(out, seed, train_per_class, test_per_class)
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    typer.echo(f"wrote {sum(counts.values())} JPEGs to {out} ({detail})")


def default_run_dir(data: Path, arch: str) -> Path:
    return Path("runs") / f"{data.resolve().stem}-{arch}"


@app.command("train")
@one_line_errors
def train_command(
    data: Annotated[Path, typer.Argument(
        help="Photos: class folders, Kaggle flat names (cat.0.jpg), or a file,label CSV.")],
    out: Annotated[Path | None, typer.Option(
        help="Run folder to write (default: runs/<data>-<arch>).")] = None,
    arch: Annotated[str, typer.Option(
        help="noodle (small, int8-friendly) or seed (the classic recipe).")] = DEFAULTS.arch,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs (noodle: the length of its cosine schedule, 30; seed: an upper bound, 25). "
             "Early stopping on validation loss keeps the best.")] = None,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = DEFAULTS.image_size,
    batch_size: Annotated[int, typer.Option(help="Per device.")] = DEFAULTS.batch_size,
    learning_rate: Annotated[float, typer.Option(
        help="Adam's rate (noodle: the start of its cosine decay).")] = DEFAULTS.learning_rate,
    patience: Annotated[int, typer.Option(
        help="Epochs without a better validation loss before stopping.")] = DEFAULTS.patience,
    seed: Annotated[int, typer.Option(
        help="Seed for weights, shuffling and augmentation.")] = DEFAULTS.seed,
    mixed_precision: Annotated[bool, typer.Option(
        help="float16 compute on GPUs (Volta or newer).")] = False,
    cpu_replicas: Annotated[int, typer.Option(
        help="Mirror over N logical CPU devices (testing).", hidden=True)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch progress.")] = False,
) -> None:
    """Train a classifier on DATA and write model.keras with its manifest."""
    from train.models import ARCHITECTURES

    if arch not in ARCHITECTURES:
        from train.data import DataError

        raise DataError(f"--arch {arch}: unknown architecture; choose {' or '.join(ARCHITECTURES)}")
    run_dir = out or default_run_dir(data, arch)
    from train.fit import TrainConfig, train

    cfg = TrainConfig(data=data, out=run_dir, arch=arch, epochs=epochs, image_size=image_size,
                      batch_size=batch_size, learning_rate=learning_rate, patience=patience,
                      seed=seed, mixed_precision=mixed_precision, cpu_replicas=cpu_replicas,
                      verbose=0 if quiet else (1 if sys.stdout.isatty() else 2))
    manifest = train(cfg, log=typer.echo)
    typer.echo(summary(manifest, run_dir))


def summary(manifest: dict, run_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    m = manifest["metrics"]
    lines = [
        "",
        f"run folder   {run_dir}",
        f"model        {manifest['arch']}, {manifest['params']:,} params, "
        f"{manifest['input']['height']}x{manifest['input']['width']} RGB, labels {manifest['labels']}",
        f"training     {m['epochs_run']} epochs (best {m['best_epoch']}) in {m['train_seconds']}s "
        f"on {manifest['training']['replicas']} {manifest['training']['device']} replica(s)",
    ]
    for split, title in (("val", "validation"), ("test", "test")):
        if split in m:
            per_class = ", ".join(f"{k} {v:.1%}" for k, v in m[split]["per_class_accuracy"].items()
                                  if v is not None)
            lines.append(f"{title:<12} {m[split]['accuracy']:.1%} of {m[split]['count']} ({per_class})")
    if manifest["skipped"]:
        lines.append(f"skipped      {len(manifest['skipped'])} unreadable file(s), listed in manifest.json")
    return "\n".join(lines)
