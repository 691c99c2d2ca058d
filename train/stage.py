"""What both trainers work on and hand back: the decoded splits, the Stage, tf.data pipelines.

The from-scratch trainer (train.scratch) and the pretrained one
(train.pretrained) each make a `Stage` from the run's `DecodedSplits`; train.fit
runs it and train.results scores and writes what it made.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from train import data as datasets


@dataclass
class DecodedSplits:
    """The decoded splits a run trains and scores on (the validation photos folded in when trained on).

    Pixels from scratch; a pretrained backbone's features (or maps) of them
    for the pretrained trainer, which never holds the pixels (train.stream).
    """

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
    bottom: object = None  # fine-tuning without `maps` (too many): the frozen blocks, run every epoch
    scorer: object = None  # pretrained: a split's `x` (features or maps) -> probabilities

    @property
    def restores_best(self) -> bool:
        """Whether the weights kept are early stopping's best epoch (from scratch), not the last."""
        return self.trainer is not None


def pipeline(x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int,
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

        spec = (tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype)), tf.TensorSpec((None,), tf.int32))
        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch, drop_remainder=drop_remainder and len(x) >= batch)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def compiled(trainer, learning_rate) -> None:
    import keras

    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy" if units(trainer) == 1 else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def units(model) -> int:
    """The model's output units: 1 is a sigmoid over two classes, else a softmax."""
    return int(model.output_shape[-1])


def device() -> str:
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
