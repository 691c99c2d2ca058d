"""One training run: photos in, a run folder with a model and its manifest out.

Reads top to bottom: defaults, devices, input pipeline, fit, evaluate, write.
TensorFlow is imported here and nowhere near the CLI's import path.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.errors import NoodleError
from edge.manifest import (
    InputSpec,
    Preprocessing,
    RunDir,
    RunManifest,
    atomic_output,
    write_bytes,
    write_json,
)
from edge.postprocess import predicted_index, widen
from train import cluster as clusters
from train import data as datasets
from train import runs
from train.config import BATCH_NORM_PHOTOS, HEAD_ITERATIONS, HEAD_L2, TrainConfig, resolved, trains_on_val
from train.quiet import quiet_tensorflow

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) hides the
# progress bars; warnings and errors still show.
quiet_tensorflow()
log = logging.getLogger(__name__)

# A pretrained backbone's features are computed this many photos a call:
# 64 photos of 224x224 hold the widest map in 150 MB of float32.
FEATURE_BATCH = 64
# Fine-tuning (--fine-tune N) runs at this fraction of --learning-rate: a
# tenth keeps the ImageNet features from being washed out by a few hundred
# photos. Its epochs are the architecture's (a few: what the clock affords on CPU).
FINE_TUNE_RATE = 0.1


def pick_strategy(cpu_replicas: int = 0, cluster_resolver=None):
    """A cluster -> multi-worker; several GPUs -> mirrored; else the default device.

    cluster_resolver: from train.cluster, made before TensorFlow first looks at
    the GPUs (Slurm's assigns this task its share of them).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Grow GPU memory as needed, so one run does not lock a shared card.
        tf.config.experimental.set_memory_growth(gpu, True)
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(names)
    if cluster_resolver is not None:
        clusters.patch_keras_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
    whose threads compete with the step's for two CPU cores: an epoch of the
    default on 1,000 photos took 2.00 s against 2.31 s with the map (four
    interleaved rounds of 5 epochs; on this machine epochs swing between
    1.6 and 2.6 s either way). Layers share weights, so
    training this trains `model`, and only `model` is saved: the exported
    graph holds inference ops alone.
    """
    import keras

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    return keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_training")


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int,
             drop_remainder: bool = False):
    import tensorflow as tf

    if isinstance(x, np.memmap):
        # Too big for memory: stream index batches from the memory-mapped cache,
        # in a new order every epoch (each epoch calls gen again).
        epochs = itertools.count()

        def gen():
            rng = np.random.default_rng([seed, next(epochs)])
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            stop = len(order) - (len(order) % batch if drop_remainder and len(order) >= batch else 0)
            for i in range(0, stop, batch):
                idx = np.sort(order[i : i + batch])
                yield x[idx], y[idx]

        spec = (tf.TensorSpec((None, *x.shape[1:]), tf.uint8), tf.TensorSpec((None,), tf.int32))
        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch, drop_remainder=drop_remainder and len(x) >= batch)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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


def train(cfg: TrainConfig, dataset: datasets.Dataset | None = None,
          identity: dict | None = None) -> dict | None:
    """Train, evaluate and write the run folder; return the manifest.

    `dataset`: found already (with CSV column options); else found from cfg.data.
    `identity`: train.runs' record of the data and settings, kept with the resume state.
    In a cluster only the chief writes the run folder and returns the manifest;
    the other workers train in a scratch folder, delete it and return None.
    """
    cfg.out = Path(cfg.out)
    kind = clusters.choose(cfg.cluster)
    resolver = None if kind is clusters.Cluster.none else clusters.resolver(kind)
    chief = clusters.is_chief(resolver)
    run = RunDir(cfg.out)
    # Where this process writes while it trains: the run folder, or a scratch one off the chief.
    work = run if chief else RunDir(tempfile.mkdtemp(prefix=f"noodle-{clusters.task_name(resolver)}-"))
    if not chief and run.backup.is_dir():
        # The run folder is shared with the chief: resume from its state, as it will.
        shutil.copytree(run.backup, work.backup)
    if chief and identity is not None:
        runs.record_start(cfg.out, identity)
    if cfg.mixed_precision:
        import keras

        policy = keras.mixed_precision.global_policy()
    try:
        return _train(cfg, dataset, resolver, work, chief)
    finally:
        if cfg.mixed_precision:
            # Global state: later models in this process (tests, export) are float32 again.
            keras.mixed_precision.set_global_policy(policy)
        if not chief:
            shutil.rmtree(work.root, ignore_errors=True)


@dataclass
class Splits:
    """The decoded splits a run trains and scores on (the validation photos folded in when trained on)."""

    decoded: dict[str, datasets.Decoded]
    on_val: bool
    skipped: list[dict]
    seconds: float

    @property
    def validating(self) -> bool:
        return "val" in self.decoded and len(self.decoded["val"].y) > 0


@dataclass
class Stage:
    """What one `fit` trains: the trainer, its data, and the model the run saves."""

    model: object  # the classifier saved as model.keras
    trainer: object = None  # what fit trains: the model under augmentation (from scratch)
    train_ds: object = None
    val_ds: object = None
    watch_from: int = 0  # the first epoch early stopping watches
    features: dict | None = None  # pretrained: the backbone's features of each photo, per split
    maps: dict | None = None  # fine-tuning: what the frozen blocks make of each photo, per split
    top: object = None  # fine-tuning: the backbone's top blocks, trained on `maps`

    @property
    def restores_best(self) -> bool:
        """Whether the weights kept are early stopping's best epoch (from scratch), not the last."""
        return self.trainer is not None


def _train(cfg: TrainConfig, dataset: datasets.Dataset | None, cluster_resolver,
           work: RunDir, chief: bool) -> dict | None:
    """`train` in `work`: the run folder on the chief, a scratch folder on other workers."""
    import keras

    dataset = dataset or datasets.find_dataset(cfg.data)
    cfg = resolved(cfg)
    splits = decode_splits(cfg, dataset, work)
    keras.utils.set_random_seed(cfg.seed)
    strategy = pick_strategy(cfg.cpu_replicas, cluster_resolver)
    if _device() == "CPU":
        # The cores this process may use: a container or taskset may allow fewer than the machine has.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        log.info(f"no GPU found: training on {cores} CPU cores")
    if cfg.mixed_precision:
        # float16 compute with float32 variables; the head is pinned to float32.
        # `train` restores the previous policy.
        keras.mixed_precision.set_global_policy("mixed_float16")
    if cfg.pretrained:
        stage = pretrained_stage(cfg, splits, len(dataset.labels))
        train_seconds, head = solve_head(stage, splits, work, len(dataset.labels))
    else:
        stage = scratch_stage(cfg, splits, len(dataset.labels), strategy)
        train_seconds, head = fit(cfg, stage, splits, work, strategy, cluster_resolver), None
    if not chief:
        log.info(f"{clusters.task_name(cluster_resolver)} done; the chief writes the run folder")
        return None
    model = stage.model
    if cfg.pretrained:
        if cfg.fine_tune:
            train_seconds += fine_tune(cfg, model, stage, splits)
    else:
        model = float32_copy(model, cfg.arch, (cfg.image_size, cfg.image_size, 3), len(dataset.labels))
    bn_photos = 0 if cfg.pretrained else exact_batch_norm(model, splits.decoded["train"].x, seed=cfg.seed)
    if bn_photos:
        log.info(f"batch-norm statistics set to those of {bn_photos} training photos, un-augmented")
    history = read_history(work.backup / "history.csv")
    metrics = evaluate(model, splits, dataset.labels, stage, history, train_seconds, bn_photos, head)
    manifest = run_manifest(cfg, dataset, model, splits, metrics, strategy)
    write_run(RunDir(cfg.out), work, model, manifest, history, metrics, dataset.labels)
    return manifest


def decode_splits(cfg: TrainConfig, dataset: datasets.Dataset, work: RunDir) -> Splits:
    """Every split's pixels at the run's input side, the validation photos folded in when trained on."""
    on_val = trains_on_val(cfg, dataset)
    splits = dict(dataset.splits)
    if on_val:
        # One training array: the pipeline and a memory map see one set.
        splits = {"train": splits["train"] + splits["val"], "test": splits["test"]}
    started = time.perf_counter()
    size = (cfg.image_size, cfg.image_size)
    decoded = {split: datasets.decode(items, size, cache_dir=work.cache, name=split)
               for split, items in splits.items()}
    seconds = time.perf_counter() - started
    unreadable = [s for d in decoded.values() for s in d.skipped]
    present = set(decoded["train"].y.tolist())
    for i, name in enumerate(dataset.labels):
        if i not in present:
            raise datasets.DataError(f"{cfg.data}: class {name!r} has no readable training images")
    log.info(f"data: {dataset.layout} layout, classes {dataset.labels}, "
             + ", ".join(f"{s} {len(d.y)}" for s, d in decoded.items())
             + (f", skipped {len(unreadable)} unreadable" if unreadable else "")
             + (f", {len(dataset.skipped)} listed but missing" if dataset.skipped else "")
             + f" (decoded in {seconds:.1f}s)")
    if on_val:
        log.info(f"training on the {len(dataset.splits['val'])} validation photos too: nothing is chosen "
                 "on them (--hold-out-val keeps them out, for validation curves); the test split scores the "
                 "model")
    for warning in dataset.warnings:
        log.warning(warning)
    mapped = [split for split, d in decoded.items() if isinstance(d.x, np.memmap)]
    if mapped:
        log.info(f"pixels of {', '.join(mapped)} memory-mapped from {work.cache}, "
                 f"being over {datasets.IN_MEMORY_LIMIT:,} bytes (NOODLE_IN_MEMORY_LIMIT)")
    # Missing listed files, then unreadable ones.
    return Splits(decoded, on_val, dataset.skipped + unreadable, seconds)


def _compiled(trainer, learning_rate) -> None:
    import keras

    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy" if _units(trainer) == 1 else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _units(model) -> int:
    """The model's output units: 1 is a sigmoid over two classes, else a softmax."""
    return int(model.output_shape[-1])


def _rate(cfg: TrainConfig, n_train: int, global_batch: int):
    """Adam's rate: constant, or cosine-decayed to zero over the run's steps."""
    import keras

    if cfg.architecture.schedule != "cosine":
        return cfg.learning_rate
    steps = cfg.epochs * max(1, n_train // global_batch)  # ragged batch dropped
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)


def _pipelines(x_train, y_train, splits: Splits, val_x, cfg: TrainConfig, global_batch: int, replicas: int):
    """The training and validation tf.data pipelines, sharded alike over replicas.

    Replicas must get equal shares of every batch: Keras cannot merge unequal
    per-replica batches, and batch norm fails on a replica left with none. So
    training drops its ragged last batch (it is reshuffled every epoch), and
    validation is trimmed to a multiple of the replica count (< 1 image each).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = _dataset(x_train, y_train, global_batch, True, cfg.seed, drop_remainder=True)
    val_ds = None
    if splits.validating:
        n_val = len(splits.decoded["val"].y) // replicas * replicas
        val_ds = _dataset(val_x[:n_val], splits.decoded["val"].y[:n_val], global_batch, False, cfg.seed)
        val_ds = val_ds.with_options(options)
    return train_ds.with_options(options), val_ds


def scratch_stage(cfg: TrainConfig, splits: Splits, num_classes: int, strategy) -> Stage:
    """A net trained end to end from random weights, augmentation inside the training step."""
    from train.models import build

    train = splits.decoded["train"]
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    cosine = cfg.architecture.schedule == "cosine"
    with strategy.scope():
        model = build(cfg.arch, (cfg.image_size, cfg.image_size, 3), num_classes)
        trainer = for_training(model, augmentation(cfg.seed))
        _compiled(trainer, _rate(cfg, len(train.y), global_batch))
    val_x = splits.decoded["val"].x if splits.validating else None
    train_ds, val_ds = _pipelines(train.x, train.y, splits, val_x, cfg, global_batch, replicas)
    # While the rate is high, validation loss on a few hundred photos swings
    # by 0.1 from one epoch to the next (batch-norm statistics chase moving
    # weights), so a minimum there is luck; early stopping watches from the
    # last third of a cosine schedule, when the rate has come down.
    watch_from = cfg.epochs * 2 // 3 if cosine else 0
    log.info(f"training {cfg.arch} ({model.count_params():,} params) on {replicas} {_device()} replica(s), "
             f"{'cosine-decayed rate over' if cosine else 'up to' if splits.validating else 'for'} "
             f"{cfg.epochs} epochs, batch {global_batch}")
    return Stage(model, trainer, train_ds, val_ds, watch_from)


def pretrained_stage(cfg: TrainConfig, splits: Splits, num_classes: int) -> Stage:
    """A pretrained backbone, frozen, with its features of each photo for a new head (`solve_head`).

    The backbone stays in inference mode, so a photo's features never change:
    they are computed once, un-augmented (augmented copies did not pay for
    their time, docs/experiments.md). With --fine-tune N the backbone is cut
    before its top N blocks: what the photos bring there is computed once
    too, and the top blocks make the head's features from it (`fine_tune`
    then trains them).
    """
    import keras

    from train.models import build

    keras.mixed_precision.set_global_policy("float32")  # the backbone's features, exact
    model = build(cfg.arch, (cfg.image_size, cfg.image_size, 3), num_classes, cfg.weights)
    backbone = model.layers[1]
    backbone.trainable = False
    bottom, top = split_backbone(backbone, cfg.fine_tune)
    started = time.perf_counter()
    maps = {split: outputs(bottom, d.x) for split, d in splits.decoded.items() if split != "test"}
    features = maps if top is None else {split: outputs(top, m) for split, m in maps.items()}
    log.info(f"{backbone.name} ({backbone.count_params():,} params, {cfg.weights} weights, frozen): "
             f"features of {sum(map(len, features.values()))} photos at {cfg.image_size}x{cfg.image_size} in "
             f"{time.perf_counter() - started:.1f}s on {_device()}")
    return Stage(model, features=features, **({"maps": maps, "top": top} if top is not None else {}))


def solve_head(stage: Stage, splits: Splits, work: RunDir, num_classes: int) -> tuple[float, dict]:
    """Solve the classifier's head on the features (train.head), set it, and return (seconds, the solve).

    Its iterations are the run's history.csv rows: each is a full pass over
    the features, as an epoch is. Deterministic: no rate, batch or seed.
    """
    from train import head

    y = splits.decoded["train"].y
    val = (stage.features["val"], splits.decoded["val"].y) if splits.validating else None
    started = time.perf_counter()
    solution = head.solve(stage.features["train"], y, num_classes, HEAD_L2, HEAD_ITERATIONS, val)
    seconds = time.perf_counter() - started
    dense = stage.model.layers[-1].layers[-1]  # the head model's class layer
    dense.set_weights([solution.kernel, solution.bias])
    work.backup.mkdir(parents=True, exist_ok=True)
    _write_history(work.backup / "history.csv", solution.history)
    _tensorboard(work.tensorboard, solution.history)
    log.info(f"head ({solution.kernel.size + solution.bias.size:,} weights) solved by L-BFGS, "
             f"L2 {HEAD_L2:g}, in {solution.iterations} iterations, {seconds:.1f}s"
             + ("" if solution.converged else f"; not converged ({solution.message}): the weights of "
                                              f"the last of {HEAD_ITERATIONS} iterations are kept"))
    return seconds, {"solver": "L-BFGS", "l2": HEAD_L2, "iterations": solution.iterations,
                     "converged": solution.converged}


def _tensorboard(folder: Path, history: list[dict]) -> None:
    """The solve's curves where Keras' TensorBoard callback puts an epoch's: train/ and validation/."""
    import tensorflow as tf

    for name, prefix in (("train", ""), ("validation", "val_")):
        rows = [row for row in history if f"{prefix}loss" in row]
        if rows:
            with tf.summary.create_file_writer(str(folder / name)).as_default():
                for row in rows:
                    for key in ("loss", "accuracy"):
                        tf.summary.scalar(f"epoch_{key}", row[prefix + key], step=row["epoch"])


def _write_history(path: Path, rows: list[dict]) -> None:
    """history.csv as Keras' CSVLogger writes it: a header of the keys, one row per epoch."""
    import csv
    import io

    keys = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch", "loss", "accuracy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, restval="NA", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, out.getvalue().encode())


def split_backbone(backbone, blocks: int):
    """(bottom, top): the backbone cut before its last `blocks` blocks; (backbone, None) for 0.

    Both share the backbone's layers, so training `top` trains the backbone.
    """
    import keras

    if not blocks:
        return backbone, None
    numbers = sorted({int(layer.name[5:].split("_")[0]) for layer in backbone.layers
                      if layer.name.startswith("block")})
    first = numbers[-min(blocks, len(numbers))]
    cut = next(layer for layer in backbone.layers if layer.name.startswith(f"block{first}_"))
    return keras.Model(backbone.input, cut.input), keras.Model(cut.input, backbone.output)


def outputs(model, x: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """`model` in inference mode on `x` (pixels or feature maps), a batch at a time, as float32.

    Batched so that a memory-mapped split streams; called, not predict_on_batch,
    so one traced function serves every batch.
    """
    import tensorflow as tf

    call = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    out = [call(tf.constant(x[i : i + batch], tf.float32)).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def _device() -> str:
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def fit(cfg: TrainConfig, stage: Stage, splits: Splits, work: RunDir, strategy, cluster_resolver) -> float:
    """Run the stage's epochs, resumable; return the seconds they took (across resumes)."""
    import keras

    backup = work.backup
    backup.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(splits.decoded["train"].y), backup)
    # Progress and CSVLogger save an epoch's time and history row before
    # BackupAndRestore saves its state, so a kill between them leaves extra
    # rows, never missing ones, and Progress cuts them when the run resumes.
    callbacks = [
        progress,
        FiniteLoss(backup, cfg.learning_rate),
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


def fine_tune(cfg: TrainConfig, model, stage: Stage, splits: Splits) -> float:
    """Train the backbone's top `cfg.fine_tune` blocks with the trained head; return the seconds.

    On what the frozen blocks below them made of each photo (computed once, so
    un-augmented), at a tenth of --learning-rate for the run's epochs. Batch
    norm stays frozen, in inference mode with its ImageNet statistics: a few
    hundred photos would move them far from what the layers after it learnt.
    One device: the model was built outside any distribution strategy.
    """
    import keras

    top, classifier_head = stage.top, model.layers[-1]
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input(top.input_shape[1:], name="maps")
    tuner = keras.Model(inputs, classifier_head(top(inputs)), name="fine_tune")
    trained = sum(int(np.prod(w.shape)) for w in tuner.trainable_weights)
    y = splits.decoded["train"].y
    steps = cfg.epochs * max(1, len(y) // cfg.batch_size)
    _compiled(tuner, keras.optimizers.schedules.CosineDecay(cfg.learning_rate * FINE_TUNE_RATE, steps))
    started = time.perf_counter()
    tuner.fit(_dataset(stage.maps["train"], y, cfg.batch_size, True, cfg.seed, drop_remainder=True),
              epochs=cfg.epochs, shuffle=False, verbose=cfg.verbose)
    for layer in top.layers:
        layer.trainable = False
    seconds = time.perf_counter() - started
    log.info(f"fine-tuned the top {cfg.fine_tune} blocks ({trained:,} weights) for {cfg.epochs} epochs "
             f"in {seconds:.1f}s")
    return seconds


def evaluate(model, splits: Splits, classes: list[str], stage: Stage, history: list[dict],
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
            probs = predict_probabilities(model, splits.decoded[split].x)
            metrics[split] = classification_metrics(splits.decoded[split].y, probs, classes)
    return metrics


def run_manifest(cfg: TrainConfig, dataset: datasets.Dataset, model, splits: Splits, metrics: dict,
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
        output="sigmoid" if _units(model) == 1 else "softmax",
        preprocessing=Preprocessing.from_dict(preprocessing(model), "train.models.preprocessing"),
        arch=cfg.arch,
        params=int(model.count_params()),
        seed=cfg.seed,
        training={**{k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "verbose")},
                  "train_on_val": splits.on_val, "global_batch": cfg.batch_size * replicas,
                  "replicas": replicas, "device": _device(), "tensorflow": tf.__version__,
                  "keras": keras.__version__},
        data=dataset.summary(),
        # What the run folder's name and reuse are decided by (train.runs).
        identity=runs.identity(dataset, cfg),
        skipped=splits.skipped,
        metrics=metrics,
        files={"model": run.model.name, "history": run.history.name, "curves": run.curves.name,
               "metrics": run.metrics.name, "tensorboard": f"{run.tensorboard.name}/"},
    ).to_dict()


def write_run(run: RunDir, work: RunDir, model, manifest: dict, history: list[dict], metrics: dict,
              classes: list[str]) -> None:
    """The run folder's files, each atomic; the manifest last, as its presence says the run is complete."""
    with atomic_output(run.model, suffix=".keras") as tmp:
        model.save(tmp)
    write_bytes(run.history, (work.backup / "history.csv").read_bytes())
    if history:
        plot_curves(history, run.curves)
    write_json(run.metrics, {"labels": classes, **metrics})
    write_json(run.manifest, manifest)
    _remove_tree(work.backup)
    _remove_tree(work.cache)


def Progress(n_train: int, backup: Path):
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


def FiniteLoss(backup: Path, learning_rate: float):
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
    and on the shared cats-vs-dogs photos the trained model called 52-58 % of
    the balanced test photos dogs (47-50 % after this). Here each layer in
    turn, those before it already set and in inference mode, takes the exact
    statistics of what the training photos (`x`, or a seeded sample of
    `limit`) bring it. There it raised test accuracy from 78.2 to 79.3 % over
    seeds 0-7, better on 7 of 8 (docs/experiments.md, round 7). Statistics of augmented
    photos instead scored 78.0 %: what pays is matching what inference sees.
    About 2 s for 1,000 photos at 56x56 on two cores; `batch` photos a call
    keep the features in hand small (100 MB at 224x224).
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
