"""The from-scratch trainer: a net trained end to end from random weights.

Reads top to bottom: augmentation inside the training step, the rate, the
sharded pipelines, the Stage, `fit` (resumable epochs, with the callbacks
that time them and stop on a non-finite loss), then what happens once
training ends: a float32 copy, and batch-norm statistics of un-augmented photos.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from edge.atomic import write_json
from edge.errors import NoodleError
from train.config import BATCH_NORM_PHOTOS, TrainConfig
from train.rundir import RunDir
from train.stage import DecodedSplits, Stage, compiled, device, pipeline

log = logging.getLogger(__name__)


def augmentation(seed: int):
    """The seed recipe's flip, zoom and shear, as Keras preprocessing layers.

    Run inside the training step (`for_training`), never saved in the model.
    """
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomZoom(0.2, seed=seed + 1),
            keras.layers.RandomShear(x_factor=0.2, y_factor=0.0, seed=seed + 2),
        ],
        name="augmentation",
    )


def for_training(model, augment):
    """The model as it trains: `augment`, then `model`, in one graph.

    Augmentation runs in the training step rather than in a tf.data map,
    whose threads compete with the step's for two CPU cores, which made an
    epoch slower (docs/experiments.md, "Figures behind the code"). Layers
    share weights, so training this trains `model`, and only `model` is
    saved: the exported graph holds inference ops alone.
    """
    import keras

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    return keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_training")


def _rate(cfg: TrainConfig, n_train: int, global_batch: int):
    """Adam's rate: constant, or cosine-decayed to zero over the run's steps."""
    import keras

    if cfg.architecture.schedule != "cosine":
        return cfg.learning_rate
    steps = cfg.epochs * max(1, n_train // global_batch)  # ragged batch dropped
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)


def _sharded_pipelines(x_train, y_train, splits: DecodedSplits, val_x, cfg: TrainConfig, global_batch: int,
                       replicas: int):
    """The training and validation tf.data pipelines, sharded alike over replicas.

    Replicas must get equal shares of every batch: Keras cannot merge unequal
    per-replica batches, and batch norm fails on a replica left with none. So
    training drops its ragged last batch (it is reshuffled every epoch), and
    validation is trimmed to a multiple of the replica count (< 1 image each).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = pipeline(x_train, y_train, global_batch, True, cfg.seed, drop_remainder=True)
    val_ds = None
    if splits.validating:
        n_val = len(splits.decoded["val"].y) // replicas * replicas
        val_ds = pipeline(val_x[:n_val], splits.decoded["val"].y[:n_val], global_batch, False, cfg.seed)
        val_ds = val_ds.with_options(options)
    return train_ds.with_options(options), val_ds


def make_stage(cfg: TrainConfig, splits: DecodedSplits, num_classes: int, strategy) -> Stage:
    """A net trained end to end from random weights, augmentation inside the training step."""
    from train.models import build

    train = splits.decoded["train"]
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    cosine = cfg.architecture.schedule == "cosine"
    with strategy.scope():
        model = build(cfg.arch, (cfg.image_size, cfg.image_size, 3), num_classes)
        trainer = for_training(model, augmentation(cfg.seed))
        compiled(trainer, _rate(cfg, len(train.y), global_batch))
    val_x = splits.decoded["val"].x if splits.validating else None
    train_ds, val_ds = _sharded_pipelines(train.x, train.y, splits, val_x, cfg, global_batch, replicas)
    # While the rate is high, validation loss on a few hundred photos swings
    # by 0.1 from one epoch to the next (batch-norm statistics chase moving
    # weights), so a minimum there is luck; early stopping watches from the
    # last third of a cosine schedule, when the rate has come down.
    watch_from = cfg.epochs * 2 // 3 if cosine else 0
    log.info(f"training {cfg.arch} ({model.count_params():,} params) on {replicas} {device()} replica(s), "
             f"{'cosine-decayed rate over' if cosine else 'up to' if splits.validating else 'for'} "
             f"{cfg.epochs} epochs, batch {global_batch}")
    return Stage(model, trainer, train_ds, val_ds, watch_from)


def fit(cfg: TrainConfig, stage: Stage, splits: DecodedSplits, work: RunDir, strategy,
        cluster_resolver) -> float:
    """Run the stage's epochs, resumable; return the seconds they took (across resumes)."""
    import keras

    backup = work.backup
    backup.mkdir(parents=True, exist_ok=True)
    progress = progress_callback(len(splits.decoded["train"].y), backup)
    # progress_callback and CSVLogger save an epoch's time and history row before
    # BackupAndRestore saves its state, so a kill between them leaves extra
    # rows, never missing ones, and progress_callback cuts them when the run resumes.
    callbacks = [
        progress,
        finite_loss_callback(backup, cfg.learning_rate),
        keras.callbacks.CSVLogger(str(backup / "history.csv"), append=True),
        # Its files are not written atomically; the previous epoch's copy is
        # what a run killed in the middle of writing them resumes from.
        keras.callbacks.BackupAndRestore(str(backup / "state"), double_checkpoint=True),
        keras.callbacks.TensorBoard(str(work.tensorboard), histogram_freq=0),
    ]
    if splits.validating:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True,
            start_from_epoch=stage.watch_from))
    if cluster_resolver is not None:
        # Keras 3 cannot start fit on a model built in a MultiWorkerMirroredStrategy
        # scope: it all-reduces a sample batch to build the model first, which
        # fails (keras-team/keras#20585). Without a strategy of its own the model
        # takes the one of the scope fit runs in, and builds in its first step.
        stage.model._distribute_strategy = stage.trainer._distribute_strategy = None
    started = time.perf_counter()
    with strategy.scope():
        # shuffle=False: the tf.data pipeline already reshuffles every epoch.
        stage.trainer.fit(stage.train_ds, validation_data=stage.val_ds, epochs=cfg.epochs,
                          callbacks=callbacks, shuffle=False, verbose=cfg.verbose)
    # Across resumes: the epochs an earlier, killed process finished, then this one.
    return progress.earlier_seconds + time.perf_counter() - started


def progress_callback(n_train: int, backup: Path):
    """A callback that times epochs, and keeps the times and history across a kill.

    Adds each epoch's seconds and training images/s to its logs, and writes the
    seconds of every finished epoch to BACKUP/epoch_seconds.json. When a run
    resumes, the epoch Keras restarts at (from BackupAndRestore's state) says
    how many epochs count: later times and BACKUP/history.csv rows, written
    before the kill but after the last saved state, are dropped and run again.
    """
    import keras

    path = backup / "epoch_seconds.json"

    class _Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = json.loads(path.read_text()) if path.exists() else []
            self.first = None  # the epoch this process starts at

        @property
        def earlier_seconds(self) -> float:
            """What the epochs before this process's first one took."""
            return sum(self.seconds[: self.first])

        def on_epoch_begin(self, epoch, logs=None):
            if self.first is None:
                self.first = epoch
                del self.seconds[epoch:]
                _keep_rows(backup / "history.csv", epoch)
                if epoch:
                    log.info(f"resuming from epoch {epoch + 1}: {epoch} epoch(s) done before, "
                             f"in {sum(self.seconds):.1f}s")
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            if logs is not None:
                logs["epoch_seconds"] = round(seconds, 3)
                logs["images_per_second"] = round(n_train / seconds, 1)
            self.seconds.append(round(seconds, 3))
            write_json(path, self.seconds)

    return _Progress()


class LossNotFinite(NoodleError):
    """Training whose loss became NaN or infinite: nothing is written, and the resume state goes."""


def finite_loss_callback(backup: Path, learning_rate: float):
    """A callback that stops training on a non-finite loss, in one line, before any epoch is saved.

    Its weights are garbage from then on: the run folder never gets a
    manifest, and the resume state, which could hold them, is removed.
    """
    import keras

    class _FiniteLoss(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                shutil.rmtree(backup, ignore_errors=True)
                raise LossNotFinite(f"training loss became {float(loss)} (batch {batch + 1}); nothing was "
                                    f"written: lower --learning-rate (now {learning_rate:g}), or check the "
                                    "photos for unreadable or constant images")

    return _FiniteLoss()


def _keep_rows(path: Path, rows: int) -> None:
    """Cut a CSV to its header and first `rows` rows, in place: CSVLogger has it open to append."""
    if path.exists():
        lines = path.read_bytes().splitlines(keepends=True)
        if len(lines) > rows + 1:
            os.truncate(path, sum(map(len, lines[: rows + 1])))


def float32_copy(model, arch: str, input_shape: tuple[int, int, int], num_classes: int):
    """The trained weights in a new float32 model outside any distribution strategy.

    What is evaluated and saved. Mixed precision keeps float32 weights, so
    nothing is lost, and the converter and the device get float32 ops only. A
    model of mirrored variables would make predict a step every worker must
    join; the copy predicts on the chief alone.
    """
    import keras

    from train.models import build

    keras.mixed_precision.set_global_policy("float32")
    copy = build(arch, input_shape, num_classes)
    copy.set_weights(model.get_weights())
    return copy


def exact_batch_norm(model, x: np.ndarray, limit: int = BATCH_NORM_PHOTOS, seed: int = 0,
                     batch: int = 64) -> int:
    """Give every batch-norm layer the mean and variance it meets at inference; return the photos used.

    Training leaves each layer a moving average over its last few dozen
    batches of augmented photos (momentum 0.9), while the device feeds it
    un-augmented ones: zoomed-out and sheared photos carry reflected borders,
    which biased the trained model towards one class. Here each layer in
    turn, those before it already set and in inference mode, takes the exact
    statistics of what the training photos (`x`, or a seeded sample of
    `limit`) bring it: what pays is matching what inference sees, not the
    statistics of augmented photos (docs/experiments.md, round 7). `batch`
    photos a call keep the features in hand small.
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers or not len(x):
        return 0
    rows = np.arange(len(x))
    if len(x) > limit:
        # Sorted: a memory-mapped split reads forward.
        rows = np.sort(np.random.default_rng(seed).choice(len(x), limit, replace=False))
    for layer in layers:
        features = keras.Model(model.input, layer.input)
        count, total, squares = 0, 0.0, 0.0
        for i in range(0, len(rows), batch):
            # Called, not predict_on_batch: one traced function per layer and
            # batch shape would fill the log with retracing warnings.
            f = np.asarray(features(x[rows[i : i + batch]].astype(np.float32), training=False), np.float64)
            f = f.reshape(-1, f.shape[-1])
            count, total, squares = count + len(f), total + f.sum(0), squares + (f * f).sum(0)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(squares / count - mean * mean, 0.0).astype(np.float32))
    return len(rows)
