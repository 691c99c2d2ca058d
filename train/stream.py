"""Photos to features, batch by batch: the pretrained trainer never holds a split's pixels.

A thread pool decodes a few batches ahead (Pillow releases the GIL), the
frozen model embeds each full batch, and only its outputs are kept: in
memory, or memory-mapped to the run's cache past FEATURES_IN_MEMORY_LIMIT.
Memory is then flat in the number of photos but for the outputs themselves
(5 KB a photo for lite0's pooled features). The outputs come out as
`train.data.Decoded`, with the labels, files and skipped files of the photos.

Given a `key` (the frozen model and the input size), a split's outputs are
also kept in the run's cache, under the sha256s of its photos: a rerun of a
run that stopped (a worker lost, the machine down) reads them back instead
of embedding the photos again. The cache goes when the run folder is written.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.atomic import atomic_output, write_json
from edge.manifest import sha256_file
from edge.preprocess import ImageError, load_image, return_freed_decodes
from train.data import Decoded, cores

log = logging.getLogger(__name__)

# Photos embedded a call on a CPU: 64 photos of 224x224 hold the widest map
# of the backbone in 150 MB of float32. Batches are always full (but the
# last), so the features are those of a 64-photo batch, as when the pixels
# were kept.
FEATURE_BATCH = 64
# A GPU's batch, per replica: 256 photos' widest maps are 600 MB, which any
# card TensorFlow runs on holds, and a call that long hides the copy of the
# pixels to it and the launch of each layer (a 64-photo call leaves a GPU
# mostly idle on EfficientNet-Lite0's small layers).
GPU_FEATURE_BATCH = 256
# Batches decoded ahead of the one being embedded: enough to keep the model
# busy while a slow file decodes, few enough to bound the pixels held
# (3 x 64 x 110 KB at 192x192, 21 MB).
AHEAD = 3
# On a CPU, decoding and TensorFlow share the cores: decode threads on every
# core the process may use, TensorFlow's intra-op pool on every core too and
# one inter-op thread. On 2 cores that embedded 52 photos a second against 41
# with TensorFlow's own pools (bench.stream_split, docs/experiments.md).
INTER_OP_THREADS = 1
# Above this many bytes of a split's outputs they go to a memory-mapped file in
# the run's cache instead of memory: 1 GiB holds 200,000 photos' pooled
# features (1,280 float32). Set NOODLE_FEATURES_IN_MEMORY_LIMIT (bytes) lower on
# a machine with little memory.
FEATURES_IN_MEMORY_LIMIT = int(os.environ.get("NOODLE_FEATURES_IN_MEMORY_LIMIT", 1 << 30))


def share_cores() -> str:
    """Set TensorFlow's CPU pools for streaming (before it starts them); say what was set, or why not."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "TensorFlow's own thread pools (a GPU embeds)"
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores())
        tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    except RuntimeError:  # started already (another run in this process): its pools stay
        return "TensorFlow's thread pools as this process started them"
    return (f"{cores()} decode threads, TensorFlow on {cores()} intra-op and {INTER_OP_THREADS} inter-op "
            "thread(s)")


def embed(items: list[tuple[Path, int]], size: tuple[int, int], model, *, cache_dir: Path | None = None,
          name: str = "features", limit: int | None = None, workers: int | None = None,
          batch: int | None = None, strategy=None, key: str | None = None) -> Decoded:
    """`model` (frozen, inference mode) on every readable photo of `items`; unreadable ones skipped.

    `limit`: bytes of outputs kept in memory (FEATURES_IN_MEMORY_LIMIT by
    default); past it they are memory-mapped to `cache_dir`/`name`.npy.
    `strategy`: a local MirroredStrategy splits each batch over its replicas
    (every local GPU); `batch` is then the batch of each (`feature_batch`).
    `key`: what the outputs depend on besides the photos (the model, the size):
    with `cache_dir`, outputs an earlier run left there for the same photos
    and key are read back, and these are left for a later run (`resumed`).
    """
    workers = workers or cores()
    limit = FEATURES_IN_MEMORY_LIMIT if limit is None else limit
    if key is None or cache_dir is None:
        return _embed(items, size, model, cache_dir, name, limit, workers, batch, strategy)
    key = _key(key, size, _hashes([path for path, _ in items], workers))
    got = resumed(items, cache_dir, name, key, _bytes(items, model) > limit)
    if got is None:
        got = _embed(items, size, model, cache_dir, name, limit, workers, batch, strategy)
        _keep(got, cache_dir, name, key)
    return got


def _bytes(items, model) -> int:
    return int(np.prod((len(items), *model.output_shape[1:]))) * 4


def _embed(items, size, model, cache_dir, name, limit, workers, batch, strategy) -> Decoded:
    """`embed` itself: decoded a few batches ahead by `workers` threads, embedded a full batch at a time."""
    # Each batch's pixels are freed after its call: with glibc's moving mmap threshold their blocks
    # would stay in the heap and in the decode threads' arenas, and memory creep with the photos.
    return_freed_decodes()
    call = _caller(model, strategy)
    devices = _devices(strategy)
    batch = (batch or feature_batch(devices)) * _replicas(strategy)
    log.info(f"{name}: embedding {len(items)} photos in batches of {batch} on {len(devices)} "
             f"{'GPU' if feature_batch(devices) == GPU_FEATURE_BATCH else 'CPU'} device(s), "
             f"decoded by {workers} threads")
    shape = (len(items), *model.output_shape[1:])
    if cache_dir is not None and _bytes(items, model) > limit:
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

    with ThreadPoolExecutor(workers) as pool:
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


def _hashes(paths: list[Path], workers: int) -> list[str]:
    """Each photo's sha256 (what splits.csv records), None for one that cannot be read."""
    def one(path):
        try:
            return sha256_file(path)
        except OSError:
            return None

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def _key(key: str, size: tuple[int, int], digests: list[str | None]) -> str:
    return hashlib.sha256(json.dumps([key, list(size), digests]).encode()).hexdigest()


def _keep(got: Decoded, cache_dir: Path, name: str, key: str) -> None:
    """The outputs and what they are of, in the cache for a rerun; the .json last: its presence says whole."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(got.x, np.memmap):
        got.x.flush()  # the memory-mapped file is the cache's copy
    else:
        with atomic_output(cache_dir / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, got.x)
    write_json(cache_dir / f"{name}.json", {"key": key, "rows": got.rows.tolist(), "outputs": len(got.x),
                                            "skipped": [{"file": str(s["file"]), "reason": s["reason"]}
                                                        for s in got.skipped]})


def resumed(items: list[tuple[Path, int]], cache_dir: Path, name: str, key: str,
            mapped: bool) -> Decoded | None:
    """The outputs an earlier run kept for these photos and this key, else None (the log says which)."""
    try:
        kept = json.loads((cache_dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None  # none kept (or half-written): embed
    if kept.get("key") != key:
        log.info(f"{name}: the cache's features are of other photos or another model: embedding again")
        (cache_dir / f"{name}.json").unlink(missing_ok=True)  # never to be read with the new ones
        return None
    try:
        x = np.load(cache_dir / f"{name}.npy", mmap_mode="r" if mapped else None)
        if len(x) < kept["outputs"]:
            return None
        x = x[: kept["outputs"]]
    except (OSError, ValueError, KeyError):
        return None
    rows = np.array(kept["rows"], np.int64)
    log.info(f"{name}: features of {len(rows)} photos read back from the run's cache (the photos' sha256s, "
             "the backbone and the size as before): 0 photos embedded")
    return Decoded(x=x, y=np.array([items[i][1] for i in rows], np.int32), files=[items[i][0] for i in rows],
                   skipped=kept["skipped"], rows=rows)


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


def feature_batch(devices: list[str]) -> int:
    """Photos a replica embeds a call: GPU_FEATURE_BATCH on GPUs, else FEATURE_BATCH."""
    return GPU_FEATURE_BATCH if devices and all("GPU" in d.upper() for d in devices) else FEATURE_BATCH


def _devices(strategy) -> list[str]:
    """The devices a batch runs on: the strategy's replicas', else the default (a GPU when there is one)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return list(strategy.extended.worker_devices)
    return [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU"]


def _replicas(strategy) -> int:
    """The replicas a batch is split over: those of a local MirroredStrategy, else one.

    A multi-worker strategy's workers each embed their own photos (train.shard).
    """
    import tensorflow as tf

    return strategy.num_replicas_in_sync if isinstance(strategy, tf.distribute.MirroredStrategy) else 1


@functools.lru_cache(maxsize=4)
def _caller(model, strategy):
    """pixels (n, h, w, 3) -> `model`'s outputs as float32 numpy, its batch split over the replicas."""
    import tensorflow as tf

    # Traced once a model for the whole run, every split and batch length alike: a trace of
    # EfficientNet-Lite0 costs about 0.4 s of a core, and tracing each split and its short last
    # batch anew was 3 s of a 2,000-photo run, as much in one worker as in each of two.
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    call = tf.function(lambda inputs: model(inputs, training=False), input_signature=[spec])
    replicas = _replicas(strategy)
    if replicas == 1:
        return lambda pixels: call(tf.constant(pixels, tf.float32)).numpy()

    def mirrored(pixels):
        parts = np.array_split(pixels, replicas)  # the last batch may leave a replica none
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group], tf.float32))
        # Each replica calls the traced function with its own part: given the tf.function itself,
        # strategy.run would call it once with the distributed values, which its signature refuses.
        outs = strategy.experimental_local_results(strategy.run(lambda part: call(part), args=(values,)))
        return np.concatenate([o.numpy() for o in outs])

    return mirrored
