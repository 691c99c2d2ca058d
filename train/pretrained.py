"""The pretrained trainer: a frozen ImageNet backbone, its features computed once, a head solved on them.

Reads top to bottom: the Stage (the backbone's features of every photo),
the head solved by L-BFGS (train.head) and written as the run's history,
the backbone cut for --fine-tune, and the fine-tuning of its top blocks.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from edge.atomic import write_bytes
from train import stream
from train.config import HEAD_ITERATIONS, HEAD_L2, TrainConfig
from train.rundir import RunDir
from train.stage import DecodedSplits, Stage, compiled, device, pipeline

log = logging.getLogger(__name__)

# Fine-tuning (--fine-tune N) runs at this fraction of --learning-rate: a
# tenth keeps the ImageNet features from being washed out by a few hundred
# photos. Its epochs are the architecture's (a few: what the clock affords on CPU).
FINE_TUNE_RATE = 0.1
# --fine-tune N trains the top N blocks on what the frozen blocks below make of
# each photo. Those maps are computed once and kept (in memory, memory-mapped
# to the run's cache past FEATURES_IN_MEMORY_LIMIT) only when all of them fit
# in this many bytes: 27 KB a photo where lite0 is cut at 192 px (6x6x192), so
# 8 GiB keeps 310,000 photos'. Past it every epoch decodes the photos and runs
# the frozen blocks again: slower, but no disk and no memory grow with them.
# NOODLE_MAPS_LIMIT (bytes) moves it.
MAPS_LIMIT = int(os.environ.get("NOODLE_MAPS_LIMIT", 8 << 30))


def frozen(cfg: TrainConfig, num_classes: int):
    """(model, bottom, top): the classifier, its backbone frozen, cut for --fine-tune (`split_backbone`)."""
    import keras

    from train.models import build

    keras.mixed_precision.set_global_policy("float32")  # the backbone's features, exact
    model = build(cfg.arch, (cfg.image_size, cfg.image_size, 3), num_classes, cfg.weights)
    backbone = model.layers[1]
    backbone.trainable = False
    return (model, *split_backbone(backbone, cfg.fine_tune))


def embedder(cfg: TrainConfig, parts, cache: Path, strategy=None, photos: int = 0):
    """A split's photos -> what the frozen model makes of them (train.stream), for train.fit.decode_splits.

    With --fine-tune N those are the maps the top blocks train on, every
    epoch, when `photos` maps fit in MAPS_LIMIT (`keeps_maps`): kept in memory
    under FEATURES_IN_MEMORY_LIMIT, else memory-mapped to the run's cache.
    Otherwise they are the whole backbone's features, for the head, and
    fine-tuning streams the maps again (the log says which). Under a local
    MirroredStrategy (several GPUs) each batch is split over its replicas.
    What is computed stays in `cache` until the run is written, keyed by the
    photos' sha256s, the backbone (its weights, where it is cut) and the size,
    so a rerun after a stop embeds only what was not done (train.stream).
    """
    from train.runs import _weights_id as weights_id

    model, bottom, top = parts
    cut = cfg.fine_tune
    if top is not None and not keeps_maps(bottom, photos):
        bottom, cut = model.layers[1], 0
        log.info(f"--fine-tune {cfg.fine_tune}: the frozen blocks' maps of {photos} photos would take "
                 f"{map_bytes(parts[1], photos):,} bytes, over {MAPS_LIMIT:,} (NOODLE_MAPS_LIMIT): each "
                 "epoch streams them again from the photos")
    size = (cfg.image_size, cfg.image_size)
    key = json.dumps({"arch": cfg.arch, "weights": weights_id(cfg.weights), "fine_tune": cut,
                      "size": cfg.image_size})
    return lambda items, name: stream.embed(items, size, bottom, cache_dir=cache, name=name,
                                            strategy=strategy, key=key)


def map_bytes(bottom, photos: int) -> int:
    return photos * int(np.prod(bottom.output_shape[1:])) * 4


def keeps_maps(bottom, photos: int) -> bool:
    """Whether --fine-tune keeps the frozen blocks' maps of `photos` photos (MAPS_LIMIT)."""
    return map_bytes(bottom, photos) <= MAPS_LIMIT


def make_stage(cfg: TrainConfig, parts, splits: DecodedSplits) -> Stage:
    """A pretrained backbone, frozen, with its features of each photo for a new head (`solve_head`).

    The backbone stays in inference mode, so a photo's features never change:
    they were computed once, as the photos were decoded (`embedder`),
    un-augmented (augmented copies did not pay for their time,
    docs/experiments.md). With --fine-tune N the backbone was cut before its
    top N blocks: what the photos bring there was computed once, and the top
    blocks make the head's features from it (`fine_tune` then trains them).
    The stage's `scorer` takes a split's `x` (features or maps) to probabilities.
    """
    import keras

    model, bottom, top = parts
    backbone, head_model = model.layers[1], model.layers[-1]
    started = time.perf_counter()
    computed = {split: d.x for split, d in splits.decoded.items() if split != "test"}
    # The splits hold maps when fine-tuning keeps them (`embedder`), else the backbone's features.
    maps = top is not None and tuple(splits.decoded["train"].x.shape[1:]) == tuple(top.input_shape[1:])
    features = {split: outputs(top, m) for split, m in computed.items()} if maps else computed
    mapped = [split for split, d in splits.decoded.items() if isinstance(d.x, np.memmap)]
    log.info(f"{backbone.name} ({backbone.count_params():,} params, {cfg.weights} weights, frozen): "
             f"{'maps of the frozen blocks' if maps else 'features'} of "
             f"{sum(len(d.y) for d in splits.decoded.values())} photos at {cfg.image_size}x{cfg.image_size} "
             f"computed as decoded, on {device()}"
             + (f"; top blocks' features in {time.perf_counter() - started:.1f}s" if maps else "")
             + (f"; {', '.join(mapped)} memory-mapped from the run's cache, over "
                f"{stream.FEATURES_IN_MEMORY_LIMIT:,} bytes (NOODLE_FEATURES_IN_MEMORY_LIMIT)" if mapped
                else "; kept in memory"))
    if not maps:
        return Stage(model, features=features, scorer=head_model, top=top, bottom=bottom)
    inputs = keras.Input(top.input_shape[1:], name="maps")
    scorer = keras.Model(inputs, head_model(top(inputs)), name="scorer")
    return Stage(model, features=features, scorer=scorer, maps=computed, top=top)


def solve_head(stage: Stage, splits: DecodedSplits, work: RunDir, num_classes: int) -> tuple[float, dict]:
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


def outputs(model, x: np.ndarray, batch: int = stream.FEATURE_BATCH) -> np.ndarray:
    """`model` in inference mode on `x` (pixels or feature maps), a batch at a time, as float32.

    Batched so that a memory-mapped split streams; called, not predict_on_batch,
    so one traced function serves every batch.
    """
    import tensorflow as tf

    call = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    out = [call(tf.constant(x[i : i + batch], tf.float32)).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def fine_tune(cfg: TrainConfig, model, stage: Stage, splits: DecodedSplits) -> float:
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
    train = splits.decoded["train"]
    if stage.maps is not None:
        inputs = keras.Input(top.input_shape[1:], name="maps")
        tuner = keras.Model(inputs, classifier_head(top(inputs)), name="fine_tune")
        data = pipeline(stage.maps["train"], train.y, cfg.batch_size, True, cfg.seed, drop_remainder=True)
    else:  # the maps did not fit (MAPS_LIMIT): the frozen blocks run on the photos every epoch
        stage.bottom.trainable = False
        inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="pixels")
        tuner = keras.Model(inputs, classifier_head(top(stage.bottom(inputs))), name="fine_tune")
        data = _photo_batches(train, (cfg.image_size, cfg.image_size), cfg.batch_size, cfg.seed)
    trained = sum(int(np.prod(w.shape)) for w in tuner.trainable_weights)
    steps = cfg.epochs * max(1, len(train.y) // cfg.batch_size)
    compiled(tuner, keras.optimizers.schedules.CosineDecay(cfg.learning_rate * FINE_TUNE_RATE, steps))
    started = time.perf_counter()
    tuner.fit(data, epochs=cfg.epochs, shuffle=False, verbose=cfg.verbose)
    for layer in top.layers:
        layer.trainable = False
    if stage.maps is None:
        _embed_again(cfg, model.layers[1], stage, splits)
    seconds = time.perf_counter() - started
    log.info(f"fine-tuned the top {cfg.fine_tune} blocks ({trained:,} weights) for {cfg.epochs} epochs "
             f"in {seconds:.1f}s" + ("" if stage.maps is not None else ", the maps streamed from the photos "
                                     "each epoch, then each split's features computed again"))
    return seconds


def _photo_batches(split, size: tuple[int, int], batch: int, seed: int):
    """The split's photos, decoded again every epoch in a new seeded order: full batches of pixels, labels."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    from edge.preprocess import load_image
    from train.data import cores

    epochs = itertools.count()

    def gen():
        order = np.random.default_rng([seed, next(epochs)]).permutation(len(split.y))
        with ThreadPoolExecutor(cores()) as pool:
            for i in range(0, len(order) - len(order) % batch if len(order) >= batch else len(order), batch):
                rows = order[i : i + batch]
                pixels = list(pool.map(lambda r: load_image(split.files[r], size), rows))
                yield np.stack(pixels), split.y[rows]

    spec = (tf.TensorSpec((None, *size, 3), tf.uint8), tf.TensorSpec((None,), tf.int32))
    data = tf.data.Dataset.from_generator(gen, output_signature=spec)
    # Its length told, so that Keras knows where each epoch ends.
    data = data.apply(tf.data.experimental.assert_cardinality(max(1, len(split.y) // batch)))
    return data.map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(2)


def _embed_again(cfg: TrainConfig, backbone, stage: Stage, splits: DecodedSplits) -> None:
    """Each split's features through the fine-tuned backbone, for scoring: the ones kept are from before."""
    size = (cfg.image_size, cfg.image_size)
    for name, split in splits.decoded.items():
        split.x = stream.embed(list(zip(split.files, split.y.tolist(), strict=True)), size, backbone,
                               name=name).x
        if name in stage.features:
            stage.features[name] = split.x
