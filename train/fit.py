"""One training run: photos in, a run folder with a model and its manifest out.

Reads top to bottom: defaults, devices, input pipeline, fit, evaluate, write.
TensorFlow is imported here and nowhere near the CLI's import path.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.errors import NoodleError
from edge.manifest import FORMAT, SCHEMA, atomic_output, write_bytes, write_json
from edge.preprocess import PREPROCESSING
from train import data as datasets

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) hides the
# progress bars; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    arch: str = "noodle"
    # The seed recipe's 64x64: big enough for cats vs dogs at this data size,
    # small enough that a Pi classifies hundreds of frames a second.
    image_size: int = 64
    # None: the architecture's own count (EPOCHS). Early stopping on validation
    # loss picks the epoch whose weights are kept.
    epochs: int | None = None
    # Per replica; the global batch grows with the number of devices.
    batch_size: int = 32
    # Adam's default; both architectures train well at it. For cosine-scheduled
    # architectures (COSINE) it is the starting rate, decayed to zero by the last epoch.
    learning_rate: float = 1e-3
    # Epochs without a better validation loss before stopping (best weights kept).
    patience: int = 10
    seed: int = 0
    mixed_precision: bool = False
    # Logical CPU devices to mirror over: exercises the multi-replica path
    # without GPUs (tests, debugging). 0 = use what the machine has.
    cpu_replicas: int = 0
    # 1: a progress bar per epoch on a terminal; 2: one line per epoch (logs, CI).
    verbose: int = 1


# Per-architecture epoch counts. The seed's is a cap: it overfits fast and
# early stopping ends it. Ours runs its 30 to the end under a cosine schedule:
# on 800 cats-vs-dogs photos validation accuracy levels off in the last third,
# and 30 epochs fit the 90 s budget on two CPU cores.
EPOCHS = {"seed": 25, "noodle": 30}
# Architectures trained with a cosine-decayed learning rate instead of a
# constant one: big steps early, settled weights at the end, and no long
# patience spent waiting for a plateau. The seed keeps the classic constant rate.
COSINE = {"noodle"}


class TrainError(NoodleError):
    pass


def pick_strategy(cpu_replicas: int = 0):
    """TF_CONFIG -> multi-worker; several GPUs -> mirrored; else the default device."""
    import tensorflow as tf

    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(names)
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Grow GPU memory as needed, so one run does not lock a shared card.
        tf.config.experimental.set_memory_growth(gpu, True)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def augmentation(arch: str, seed: int):
    """The seed recipe's flip, zoom and shear, as Keras preprocessing layers.

    Applied in tf.data to training batches only, never saved in the model.
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


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int, augment=None,
             drop_remainder: bool = False):
    import tensorflow as tf

    if isinstance(x, np.memmap):
        # Too big for memory: stream index batches from the memory-mapped cache.
        def gen():
            order = np.random.default_rng(seed).permutation(len(x)) if shuffle else np.arange(len(x))
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
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict_probabilities(model, x: np.ndarray, batch: int = 256, replicas: int = 1) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 pixels, sigmoid widened to two columns.

    Padded to a multiple of `replicas` (and the padding's outputs dropped) so
    every replica gets an equal share of the last batch.
    """
    pad = -len(x) % replicas
    padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    p = np.asarray(model.predict(padded.astype(np.float32), batch_size=batch, verbose=0), np.float64)
    p = p[: len(x)]
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    pred = probs.argmax(1)
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
        ax.plot(epochs, [h[f"val_{key}"] for h in history], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, evaluate and write the run folder; return the manifest."""
    cfg.out = Path(cfg.out)
    dataset = datasets.find_dataset(cfg.data)
    size = (cfg.image_size, cfg.image_size)

    started = time.perf_counter()
    decoded = {
        split: datasets.decode(items, size, cache_dir=cfg.out / ".cache", name=split)
        for split, items in dataset.splits.items()
    }
    decode_seconds = time.perf_counter() - started
    skipped = [s for d in decoded.values() for s in d.skipped]
    for split, d in decoded.items():
        present = set(d.y.tolist())
        for i, name in enumerate(dataset.classes):
            if split == "train" and i not in present:
                raise datasets.DataError(f"{cfg.data}: class {name!r} has no readable training images")
    log(f"data: {dataset.layout} layout, classes {dataset.classes}, "
        + ", ".join(f"{s} {len(d.y)}" for s, d in decoded.items())
        + (f", skipped {len(skipped)} unreadable" if skipped else "")
        + f" (decoded in {decode_seconds:.1f}s)")

    import keras
    import tensorflow as tf

    from train.models import build

    keras.utils.set_random_seed(cfg.seed)
    strategy = pick_strategy(cfg.cpu_replicas)
    if cfg.mixed_precision:
        # float16 compute with float32 variables; the head is pinned to float32.
        keras.mixed_precision.set_global_policy("mixed_float16")
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    epochs = cfg.epochs or EPOCHS.get(cfg.arch, 50)
    num_classes = len(dataset.classes)

    cosine = cfg.arch in COSINE
    learning_rate = cfg.learning_rate
    if cosine:
        steps = epochs * max(1, len(decoded["train"].y) // global_batch)  # ragged batch dropped
        learning_rate = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)
    # While the rate is high, validation loss on a few hundred photos swings
    # by 0.1 from one epoch to the next (batch-norm statistics chase moving
    # weights), so a minimum there is luck; early stopping watches from the
    # last third of a cosine schedule, when the rate has come down.
    watch_from = epochs * 2 // 3 if cosine else 0

    with strategy.scope():
        model = build(cfg.arch, (*size, 3), num_classes)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    # Replicas must get equal shares of every batch: Keras cannot merge unequal
    # per-replica batches, and batch norm fails on a replica left with none. So
    # training drops its ragged last batch (it is reshuffled every epoch), and
    # validation is trimmed to a multiple of the replica count (< 1 image each).
    train_ds = _dataset(decoded["train"].x, decoded["train"].y, global_batch, True, cfg.seed,
                        augmentation(cfg.arch, cfg.seed), drop_remainder=True)
    n_val = len(decoded["val"].y) // replicas * replicas
    val_ds = _dataset(decoded["val"].x[:n_val], decoded["val"].y[:n_val], global_batch, False, cfg.seed)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)

    cfg.out.mkdir(parents=True, exist_ok=True)
    backup = cfg.out / ".backup"
    history_log = backup / "history.csv"
    backup.mkdir(exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup / "state")),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                      restore_best_weights=True, start_from_epoch=watch_from),
        EpochTimer(n_train=len(decoded["train"].y)),  # before CSVLogger, which writes its logs
        keras.callbacks.CSVLogger(str(history_log), append=True),
        keras.callbacks.TensorBoard(str(cfg.out / "tensorboard"), histogram_freq=0),
    ]
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    log(f"training {cfg.arch} ({model.count_params():,} params) on {replicas} {device} replica(s), "
        f"{'cosine-decayed rate over' if cosine else 'up to'} {epochs} epochs, batch {global_batch}")
    started = time.perf_counter()
    # shuffle=False: the tf.data pipeline already reshuffles every epoch.
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, shuffle=False,
              verbose=cfg.verbose)
    train_seconds = time.perf_counter() - started

    history = _read_history(history_log)
    # The epochs early stopping watched, hence the one whose weights were kept.
    watched = range(watch_from if len(history) > watch_from else 0, len(history))
    metrics = {"train_seconds": round(train_seconds, 1), "decode_seconds": round(decode_seconds, 1),
               "epochs_run": len(history),
               "best_epoch": min(watched, key=lambda i: history[i]["val_loss"]) + 1 if history else None}
    for split in ("val", "test"):
        if split in decoded and len(decoded[split].y):
            probs = predict_probabilities(model, decoded[split].x, replicas=replicas)
            metrics[split] = classification_metrics(decoded[split].y, probs, dataset.classes)

    manifest = {
        "format": FORMAT,
        "schema": SCHEMA,
        "kind": "model",
        "labels": dataset.classes,
        "input": {"height": size[0], "width": size[1], "channels": 3, "dtype": "float32",
                  "range": [0, 255]},
        "output": "sigmoid" if num_classes == 2 else "softmax",
        "preprocessing": PREPROCESSING,
        "arch": cfg.arch,
        "params": int(model.count_params()),
        "seed": cfg.seed,
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "verbose")},
                     "epochs": epochs, "global_batch": global_batch, "replicas": replicas,
                     "device": device, "tensorflow": tf.__version__, "keras": keras.__version__},
        "data": dataset.summary(),
        "skipped": skipped,
        "metrics": metrics,
        "files": {"model": "model.keras", "history": "history.csv", "curves": "curves.png",
                  "metrics": "metrics.json", "tensorboard": "tensorboard/"},
    }
    with atomic_output(cfg.out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    write_bytes(cfg.out / "history.csv", history_log.read_bytes())
    if history:
        plot_curves(history, cfg.out / "curves.png")
    write_json(cfg.out / "metrics.json", {"labels": dataset.classes, **metrics})
    # The manifest goes last: its presence says the run folder is complete.
    write_json(cfg.out / "manifest.json", manifest)
    _remove_tree(backup)
    return manifest


def EpochTimer(n_train: int):
    """A callback adding each epoch's seconds and training images/s to its logs."""
    import keras

    class _EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            if logs is not None:
                logs["epoch_seconds"] = round(seconds, 3)
                logs["images_per_second"] = round(n_train / seconds, 1)

    return _EpochTimer()


def _read_history(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
