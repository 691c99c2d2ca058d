"""`noodle train` and `noodle data`: the train stage's commands.

TensorFlow is imported inside the commands, so `noodle --help` stays fast.
"""
from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import NoodleError, one_line_errors
from edge.escape import LISTED, escape_name, listed
from edge.manifest import RunManifest, load_run
from edge.usage import OneLineUsage
from train.cluster import Cluster
from train.config import ARCHITECTURES, RENAMED, TrainConfig, unused_settings
from train.csv_reader import MISSING
from train.runs import RUNS

# The defaults live in TrainConfig, with their reasons; the options repeat none of them.
DEFAULTS = TrainConfig(data=Path("."), out=Path("."))
# The architectures, named by their table (train.models would import Keras), and their former names.
ArchName = Enum("ArchName", {name: name for name in [*ARCHITECTURES, *RENAMED]}, type=str)


def _each(field: str) -> str:
    return ", ".join(f"{a.name} {getattr(a, field)}" for a in ARCHITECTURES.values())

app = typer.Typer(cls=OneLineUsage, no_args_is_help=True, add_completion=False)
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


# The options that name the run folder (and so decide whether a model is reused).
Data = Annotated[Path, typer.Argument(
    help="Photos: class folders, Kaggle flat names (cat.0.jpg), or a CSV of file and label columns.")]
Runs = Annotated[Path, typer.Option(
    help="Where run folders go: RUNS/<data name>-<arch>-<8 hex of the data and settings>.")]
Arch = Annotated[ArchName, typer.Option(
    help="; ".join(f"{a.name}: {a.summary}" for a in ARCHITECTURES.values()) + ".")]
# Ranges: a value outside one is refused before any work (one line, edge.usage), never
# trained as a default or left to fail minutes later.
Epochs = Annotated[int | None, typer.Option(
    min=1, max=100_000,
    help=f"Epochs (default {_each('epochs')}) of the whole net from scratch, or of --fine-tune's "
         "blocks; a cosine schedule's length, else an upper bound (early stopping on validation loss "
         "keeps the best). A pretrained head is solved to convergence, with no epochs.")]
ImageSize = Annotated[int | None, typer.Option(
    min=32, max=1024, help=f"Square input side in pixels (default {_each('image_size')}).")]
Weights = Annotated[str | None, typer.Option(
    help="A pretrained architecture's backbone weights: imagenet (installed with noodle, converted "
         "once into the cache folder, $NOODLE_CACHE or $XDG_CACHE_HOME/noodle), none (random; the "
         "whole net trains), or a .weights.h5 file of the backbone.")]
FineTune = Annotated[int | None, typer.Option(
    help=f"Pretrained only: after the head, also train the backbone's top N blocks (batch norm "
         f"frozen, a tenth of the rate); 0: the head alone (default {_each('fine_tune')}).")]
BatchSize = Annotated[int, typer.Option(min=1, max=65_536, help="Per device.")]
# Above 0 and at most 1; NaN, which passes every range, is refused by check_rate.
LearningRate = Annotated[float, typer.Option(
    min=1e-9, max=1,
    help="Adam's rate (cosine schedules: the start of the decay; --fine-tune: a tenth of it).")]
Patience = Annotated[int, typer.Option(
    min=0, max=100_000, help="Epochs without a better validation loss before stopping.")]
Seed = Annotated[int, typer.Option(help="Seed for weights, shuffling and augmentation.")]
TrainOnVal = Annotated[bool | None, typer.Option(
    "--train-on-val/--hold-out-val",
    help="Train on the validation photos too, or keep them out for validation curves and early "
         "stopping. Default: the cosine architectures (lite0, allconv) train on them (a fixed schedule "
         "chooses nothing on them), seed holds them out; always held out when there is no test split.")]
MixedPrecision = Annotated[bool, typer.Option(
    help="float16 compute: faster on GPUs with tensor cores (Volta or newer), slower on CPUs. "
         "model.keras is float32 either way.")]
FileColumn = Annotated[str | None, typer.Option(
    help="CSV: the column naming the photos (header name or 1-based number); "
         "default: file, filename, path, image, id, ...")]
LabelColumn = Annotated[str | None, typer.Option(
    help="CSV: the label column; default: label, class, category, target, breed, species, ...")]
SplitColumn = Annotated[str | None, typer.Option(
    help="CSV: the train/val/test column ('none' to ignore one); default: split, set, subset, fold.")]
MinPhotos = Annotated[int, typer.Option(
    min=0, max=1_000_000, metavar="N",
    help="Drop classes with fewer than N training photos (named in manifest.json, data.dropped); "
         "0 keeps every class.")]


def _config_and_data(data, out, runs, arch, columns, **settings):
    """The TrainConfig, the dataset, its identity and the run folder for these options."""
    from train.data import find_dataset
    from train.runs import default_run_dir, identity

    arch = ArchName(arch).value
    if arch in RENAMED:
        typer.echo(f"note: --arch {arch} is now called {RENAMED[arch]}; training {RENAMED[arch]}", err=True)
        arch = RENAMED[arch]
    cfg = TrainConfig(data=data, out=Path("."), arch=arch, **settings)
    check_rate(cfg.learning_rate)
    check_weights(cfg)
    dataset = find_dataset(data, **columns, min_photos=cfg.min_photos)
    ident = identity(dataset, cfg)
    cfg.out = out or default_run_dir(data, arch, ident, runs)
    return cfg, dataset, ident


class SettingError(NoodleError):
    """A training option that is no number; one line naming it."""


def check_rate(rate: float) -> None:
    """NaN passes every range (each comparison with it is false): refused here, in the range's words."""
    if not math.isfinite(rate):
        raise SettingError(f"--learning-rate {rate:g}: out of range; give a number above 0 and at most 1 "
                           "(Adam's default is 0.001)")


def check_weights(cfg: TrainConfig) -> None:
    """--weights and --fine-tune only where they mean something, before any pixel is read."""
    from train.lite0 import BLOCKS, WeightsError

    arch = cfg.architecture
    if cfg.weights not in (None, "none") and not arch.pretrained:
        raise WeightsError(f"--weights {cfg.weights}: {arch.name} trains from scratch; pass --arch "
                           + " or ".join(a.name for a in ARCHITECTURES.values() if a.pretrained)
                           + " for a pretrained backbone, or leave --weights out")
    if cfg.weights not in (None, "none", "imagenet") and not Path(cfg.weights).is_file():
        raise WeightsError(f"--weights {cfg.weights}: no such file; pass imagenet, none or a "
                           ".weights.h5 file of the backbone")
    if cfg.fine_tune and not cfg.pretrained:
        raise WeightsError(f"--fine-tune {cfg.fine_tune}: only a pretrained backbone is fine-tuned "
                           f"(--arch {arch.name} --weights {cfg.weights or arch.weights})")
    if cfg.fine_tune is not None and not 0 <= cfg.fine_tune <= BLOCKS:
        raise WeightsError(f"--fine-tune {cfg.fine_tune}: out of range; the backbone has {BLOCKS} blocks, "
                           f"give 0 to {BLOCKS}")


def _columns(file_column, label_column, split_column) -> dict:
    return {"file_column": file_column, "label_column": label_column, "split_column": split_column}


@app.command("train")
@one_line_errors
def train_command(
    data: Data,
    out: Annotated[Path | None, typer.Option(
        help="Run folder to write (default: RUNS/<data name>-<arch>-<8 hex>, see --print-run-dir).")] = None,
    runs: Runs = RUNS,
    arch: Arch = ArchName(DEFAULTS.arch),
    epochs: Epochs = None,
    image_size: ImageSize = DEFAULTS.image_size,
    weights: Weights = DEFAULTS.weights,
    fine_tune: FineTune = DEFAULTS.fine_tune,
    batch_size: BatchSize = DEFAULTS.batch_size,
    learning_rate: LearningRate = DEFAULTS.learning_rate,
    patience: Patience = DEFAULTS.patience,
    seed: Seed = DEFAULTS.seed,
    train_on_val: TrainOnVal = DEFAULTS.train_on_val,
    mixed_precision: MixedPrecision = False,
    file_column: FileColumn = None,
    label_column: LabelColumn = None,
    split_column: SplitColumn = None,
    min_photos: MinPhotos = DEFAULTS.min_photos,
    reuse: Annotated[bool, typer.Option(
        help="Keep the run folder's model when it was trained on this data with these settings.")] = False,
    force: Annotated[bool, typer.Option(
        help="Replace a run folder that holds a model of other data or settings.")] = False,
    cluster: Annotated[Cluster, typer.Option(
        help="How the workers of a several-machine run find each other: TF_CONFIG, Slurm's "
             "srun tasks, or none (this machine alone). auto: TF_CONFIG if set, else a Slurm "
             "step of several tasks, else none.")] = Cluster.auto,
    cpu_replicas: Annotated[int, typer.Option(
        help="Mirror over N logical CPU devices (testing).", hidden=True)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch progress.")] = False,
    print_run_dir: Annotated[bool, typer.Option(
        "--print-run-dir", help="Print the run folder these data and settings get, and stop "
                                "(reads no pixels; the Makefile names RUN with it).")] = False,
) -> None:
    """Train a classifier on DATA and write model.keras with its manifest."""
    from train.fit import train
    from train.quiet import show_progress

    cfg, dataset, ident = _config_and_data(
        data, out, runs, arch, _columns(file_column, label_column, split_column), epochs=epochs,
        image_size=image_size, weights=weights, fine_tune=fine_tune, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, seed=seed, train_on_val=train_on_val,
        mixed_precision=mixed_precision, cluster=cluster.value, min_photos=min_photos,
        cpu_replicas=cpu_replicas, verbose=0 if quiet else (1 if sys.stdout.isatty() else 2))
    if print_run_dir:
        typer.echo(cfg.out)
        return
    state = _before_training(cfg, ident, force)
    if state == "complete" and reuse:
        typer.echo(f"reusing {cfg.out}: its model was trained on this data with these settings "
                   "(`noodle train` without --reuse trains again)")
        typer.echo(summary(load_run(cfg.out), cfg.out))
        return
    show_progress()
    if train(cfg, dataset=dataset, identity=ident) is not None:
        # None: a cluster worker other than the chief, which writes the manifest
        typer.echo(summary(load_run(cfg.out), cfg.out))


def _before_training(cfg: TrainConfig, ident: dict, force: bool) -> str:
    """Say which settings change nothing; refuse a file in the run folder's place; the folder's state."""
    from edge.atomic import OutputError
    from train.runs import check_run_dir

    unused = unused_settings(cfg)
    if unused:
        typer.echo(f"warning: {', '.join(unused)}: ignored, and not part of the run's identity: a pretrained "
                   "head alone is solved to convergence (no epochs, rate, batch or seed, float32 features); "
                   "--fine-tune N also trains the backbone's top N blocks, by gradient")
    if cfg.out.exists() and not cfg.out.is_dir():  # one line now, not a traceback once training starts
        raise OutputError(f"{cfg.out}: a file is where a folder should be; move it away, or write "
                          "somewhere else (--out)")
    return check_run_dir(cfg.out, ident, force=force)


def summary(manifest: RunManifest, run_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    m, training, data = manifest.metrics or {}, manifest.training or {}, manifest.data or {}
    lines = [
        "",
        f"run folder   {run_dir}",
        f"model        {manifest.arch}, {manifest.params:,} params, "
        f"{manifest.input.height}x{manifest.input.width} RGB, {len(manifest.labels)} labels "
        f"({listed([escape_name(label) for label in manifest.labels])})",
        "training     " + (f"head solved by L-BFGS in {m['head']['iterations']} iterations" if "head" in m
                            else f"{m['epochs_run']} epochs")
        + (" on training and validation photos" if training.get("train_on_val")
           else "" if "head" in m else f" (best {m['best_epoch']})")
        + f" in {m['train_seconds']}s "
        f"on {training['replicas']} {training['device']} replica(s)",
    ]
    sources = data.get("splits", {})
    for split, title in (("val", "validation"), ("test", "test")):
        if split in m:
            scored = [(k, v) for k, v in m[split]["per_class_accuracy"].items() if v is not None]
            worst = len(scored) > LISTED  # then the worst first: manifest.json has them all
            scored.sort(key=lambda kv: kv[1] if worst else 0)
            per_class = ("worst: " if worst else "") + listed(
                [f"{escape_name(k)} {v:.1%}" for k, v in scored])
            source = f"; {sources[split]}" if sources.get(split, "given") != "given" else ""
            shared = (data.get("shared_bursts") or {}).get(split)
            if shared:  # a figure of frames training saw the twins of is memory, not accuracy
                lines.append(f"{title:<12} not reported: {shared} of its {m[split]['count']} photos share "
                             "a burst with training photos (warning below); TEST=folder scores new photos")
                continue
            lines.append(f"{title:<12} {m[split]['accuracy']:.1%} of {m[split]['count']} "
                         f"({per_class}{source})")
    skipped = manifest.skipped or []
    missing = [s for s in skipped if s.get("reason") == MISSING]
    unreadable = len(skipped) - len(missing)
    if skipped:
        parts = ([f"{unreadable} unreadable file(s)"] if unreadable else []) + (
            [f"{len(missing)} listed in the CSV but missing"] if missing else [])
        lines.append(f"skipped      {', '.join(parts)}; listed in manifest.json")
    dropped = data.get("dropped") or {}
    if dropped:
        below = data.get("options", {}).get("min_photos")
        names = listed([f"'{escape_name(c)}' {n}" for c, n in dropped.items()])
        lines.append(f"dropped      {len(dropped)} class(es) of fewer than {below} training photos "
                     f"({names}); listed in manifest.json")
    lines += [f"warning      {w}" for w in data.get("warnings", [])]
    return "\n".join(lines)
