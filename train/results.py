"""What a run's model scores and what its folder holds: metrics, the manifest, the files.

Called by train.fit once training ends; `predict_probabilities` and
`read_history` are also export's and the benchmark's.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.atomic import atomic_output, write_bytes, write_json
from edge.manifest import InputSpec, Preprocessing, RunManifest
from edge.postprocess import predicted_index, widen
from train import data as datasets
from train import runs
from train.config import TrainConfig
from train.rundir import RunDir
from train.splits import write_splits
from train.stage import DecodedSplits, Stage, device, units

log = logging.getLogger(__name__)


def predict_probabilities(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 pixels, sigmoid widened to two columns.

    A batch at a time, so a memory-mapped split is never held in memory as
    float32 whole. `model` is not distributed (see `float32_copy`).
    """
    p = [model.predict_on_batch(x[i : i + batch].astype(np.float32)) for i in range(0, len(x), batch)]
    return widen(np.concatenate(p).astype(np.float64) if p else np.zeros((0, 1)))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    pred = predicted_index(probs)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, pred), 1)
    per_class = {
        c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, c in enumerate(classes)
    }
    return {
        "count": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else None,
        "per_class_accuracy": per_class,
        "confusion_matrix": {"rows": "true", "cols": "predicted", "labels": classes,
                             "counts": confusion.tolist()},
    }


def evaluate(model, splits: DecodedSplits, classes: list[str], stage: Stage, history: list[dict],
             train_seconds: float, bn_photos: int, head: dict | None = None) -> dict:
    """The run's figures: timing, the epoch kept, and accuracy on the validation and test splits."""
    # The epochs early stopping watched, hence the one whose weights were kept; without validation
    # (or a solved head, which keeps its last iteration), the last.
    watched = range(stage.watch_from if len(history) > stage.watch_from else 0, len(history))
    early_stopped = splits.validating and stage.restores_best
    best = min(watched, key=lambda i: history[i]["val_loss"]) + 1 if early_stopped else len(history)
    metrics = {"train_seconds": round(train_seconds, 1), "decode_seconds": round(splits.seconds, 1),
               "epochs_run": len(history), "best_epoch": best if history else None,
               # What training saw: the train split, with the validation one when trained on.
               "train_images": int(len(splits.decoded["train"].y)),
               # The photos exact_batch_norm measured (0: none, or the backbone's own statistics kept).
               "batch_norm_photos": bn_photos,
               **({"head": head} if head else {})}
    for split in ("val", "test"):
        if split in splits.decoded and len(splits.decoded[split].y):
            # A pretrained run's splits hold features: its scorer is the model past the backbone.
            probs = predict_probabilities(stage.scorer or model, splits.decoded[split].x)
            metrics[split] = classification_metrics(splits.decoded[split].y, probs, classes)
    return metrics


def run_manifest(cfg: TrainConfig, dataset: datasets.Dataset, model, splits: DecodedSplits, metrics: dict,
                 strategy) -> dict:
    import keras
    import tensorflow as tf

    from train.models import preprocessing

    replicas = strategy.num_replicas_in_sync
    run = RunDir(cfg.out)
    return RunManifest(
        labels=dataset.labels,
        # Keras sees float32 0-255 pixels; the model rescales them itself.
        input=InputSpec(height=cfg.image_size, width=cfg.image_size, dtype="float32", range=(0, 255)),
        output="sigmoid" if units(model) == 1 else "softmax",
        preprocessing=Preprocessing.from_dict(preprocessing(model), "train.models.preprocessing"),
        arch=cfg.arch,
        params=int(model.count_params()),
        seed=cfg.seed,
        training={**{k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "verbose")},
                  "train_on_val": splits.on_val, "global_batch": cfg.batch_size * replicas,
                  "replicas": replicas, "device": device(), "tensorflow": tf.__version__,
                  "keras": keras.__version__},
        data=dataset.summary(),
        # What the run folder's name and reuse are decided by (train.runs).
        identity=runs.identity(dataset, cfg),
        skipped=splits.skipped,
        metrics=metrics,
        files={"model": run.model.name, "splits": run.splits.name, "history": run.history.name,
               "curves": run.curves.name, "metrics": run.metrics.name,
               "tensorboard": f"{run.tensorboard.name}/"},
    ).to_dict()


def write_run(run: RunDir, work: RunDir, model, manifest: dict, history: list[dict], metrics: dict,
              dataset: datasets.Dataset) -> None:
    """The run folder's files, each atomic; the manifest last, as its presence says the run is complete."""
    with atomic_output(run.model, suffix=".keras") as tmp:
        model.save(tmp)
    write_bytes(run.history, (work.backup / "history.csv").read_bytes())
    if history:
        plot_curves(history, run.curves)
    write_json(run.metrics, {"labels": dataset.labels, **metrics})
    # Which photo is in which split: export reads its photos from here (train.splits).
    write_splits(run.splits, dataset)
    write_json(run.manifest, manifest)
    _remove_tree(work.backup)
    _remove_tree(work.cache)


def plot_curves(history: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, [h[key] for h in history], label=f"train {key}")
        val = [h.get(f"val_{key}", float("nan")) for h in history]
        if not all(np.isnan(val)):  # NaN (CSVLogger's "NA") when trained on the validation photos
            ax.plot(epochs, val, label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def read_history(path: Path) -> list[dict]:
    """history.csv as one dict of numbers per epoch (training, and the benchmark's throughput row).

    Keras' CSVLogger writes "NA" for a value an epoch did not log; that is NaN here.
    """
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float("nan") if v in ("", "NA") else float(v))
             for k, v in row.items()} for row in rows]


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
