"""Photos to features, batch by batch: the pretrained trainer never holds a split's pixels.

A thread pool decodes a few batches ahead (Pillow releases the GIL), the
frozen model embeds each full batch, and only its outputs are kept: in
memory, or memory-mapped to the run's cache past FEATURES_IN_MEMORY_LIMIT.
Memory is then flat in the number of photos but for the outputs themselves
(5 KB a photo for lite0's pooled features). The outputs come out as
`train.data.Decoded`, with the labels, files and skipped files of the photos.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.preprocess import ImageError, load_image
from train.data import Decoded, cores

# Photos embedded a call: 64 photos of 224x224 hold the widest map of the
# backbone in 150 MB of float32. Batches are always full (but the last), so
# the features are those of a 64-photo batch, as when the pixels were kept.
FEATURE_BATCH = 64
# Batches decoded ahead of the one being embedded: enough to keep the model
# busy while a slow file decodes, few enough to bound the pixels held
# (3 x 64 x 110 KB at 192x192, 21 MB).
AHEAD = 3
# Above this many bytes of a split's outputs they go to a memory-mapped file in
# the run's cache instead of memory: 1 GiB holds 200,000 photos' pooled
# features (1,280 float32). Set NOODLE_FEATURES_IN_MEMORY_LIMIT (bytes) lower on
# a machine with little memory.
FEATURES_IN_MEMORY_LIMIT = int(os.environ.get("NOODLE_FEATURES_IN_MEMORY_LIMIT", 1 << 30))


def embed(items: list[tuple[Path, int]], size: tuple[int, int], model, *, cache_dir: Path | None = None,
          name: str = "features", limit: int | None = None, workers: int | None = None,
          batch: int = FEATURE_BATCH, strategy=None) -> Decoded:
    """`model` (frozen, inference mode) on every readable photo of `items`; unreadable ones skipped.

    `limit`: bytes of outputs kept in memory (FEATURES_IN_MEMORY_LIMIT by
    default); past it they are memory-mapped to `cache_dir`/`name`.npy.
    `strategy`: a local MirroredStrategy splits each batch over its replicas
    (every local GPU); `batch` is then the batch of each.
    """
    call = _caller(model, strategy)
    batch *= _replicas(strategy)
    shape = (len(items), *model.output_shape[1:])
    limit = FEATURES_IN_MEMORY_LIMIT if limit is None else limit
    if cache_dir is not None and np.prod(shape) * 4 > limit:
        cache_dir.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(cache_dir / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)
    else:
        out = np.empty(shape, np.float32)

    def one(i: int):
        try:
            return load_image(items[i][0], size)
        except ImageError as exc:
            return {"file": exc.path, "reason": exc.reason}

    kept, skipped, pending, written = [], [], [], 0

    def flush(pixels: list[np.ndarray]) -> None:
        nonlocal written
        out[written : written + len(pixels)] = call(np.stack(pixels))
        written += len(pixels)

    def drain(chunk_futures) -> None:
        nonlocal pending
        pending = _take(chunk_futures, kept, skipped, pending)
        while len(pending) >= batch:
            flush(pending[:batch])
            pending = pending[batch:]

    with ThreadPoolExecutor(workers or cores()) as pool:
        ahead: deque = deque()
        for start in range(0, len(items), batch):
            chunk = range(start, min(start + batch, len(items)))
            ahead.append((chunk, [pool.submit(one, i) for i in chunk]))
            if len(ahead) > AHEAD:
                drain(ahead.popleft())
        while ahead:
            drain(ahead.popleft())
    if pending:
        flush(pending)
    y = np.array([items[i][1] for i in kept], np.int32)
    return Decoded(x=out[:written], y=y, files=[items[i][0] for i in kept], skipped=skipped,
                   rows=np.array(kept, np.int64))


def _take(chunk_futures, kept: list, skipped: list, pending: list) -> list:
    """The decoded pixels of one chunk appended to `pending`, in order; the files noted."""
    chunk, futures = chunk_futures
    for i, future in zip(chunk, futures, strict=True):
        result = future.result()
        if isinstance(result, dict):
            skipped.append(result)
        else:
            kept.append(i)
            pending.append(result)
    return pending


def _replicas(strategy) -> int:
    """The replicas a batch is split over: those of a local MirroredStrategy, else one.

    A multi-worker strategy's workers each embed their own photos (train.shard).
    """
    import tensorflow as tf

    return strategy.num_replicas_in_sync if isinstance(strategy, tf.distribute.MirroredStrategy) else 1


def _caller(model, strategy):
    """pixels (n, h, w, 3) -> `model`'s outputs as float32 numpy, its batch split over the replicas."""
    import tensorflow as tf

    call = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    replicas = _replicas(strategy)
    if replicas == 1:
        return lambda pixels: call(tf.constant(pixels, tf.float32)).numpy()

    def mirrored(pixels):
        parts = np.array_split(pixels, replicas)  # the last batch may leave a replica none
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group], tf.float32))
        outs = strategy.experimental_local_results(strategy.run(call, args=(values,)))
        return np.concatenate([o.numpy() for o in outs])

    return mirrored
