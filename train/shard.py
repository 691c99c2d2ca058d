"""The pretrained trainer in a cluster: each worker embeds its own shard, the chief gets them all.

Worker k of W (the chief first, as MultiWorkerMirroredStrategy numbers them)
decodes and embeds photos k, k+W, k+2W... of each split (train.stream); the
features, the rows they came from and the rows unreadable are then gathered
to every worker by the strategy's collectives (no shared file system), and
put back in the split's order, so the head solved on them is the one a
single worker solves. Only the chief solves it and writes the run.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from edge.preprocess import ImageError, load_image
from train.cluster import ClusterError
from train.data import Decoded

log = logging.getLogger(__name__)


def rank(cluster_resolver) -> tuple[int, int]:
    """(this worker's number, the number of workers), the chief first."""
    jobs = cluster_resolver.cluster_spec().as_dict()
    tasks = [(job, i) for job in ("chief", "worker") for i in range(len(jobs.get(job, [])))]
    return tasks.index((cluster_resolver.task_type, cluster_resolver.task_id)), len(tasks)


def embedder(strategy, cluster_resolver, embed):
    """`embed(items, name)` (train.stream) on this worker's shard, gathered from every worker."""
    me, workers = rank(cluster_resolver)

    def sharded(items, name):
        mine = np.arange(me, len(items), workers, dtype=np.int64)
        # Each shard is kept in the cache under its own name, for a rerun of this worker.
        got = embed([items[i] for i in mine], shard_name(name, me, workers))
        log.info(f"{name}: {len(mine)} of {len(items)} photos embedded by worker {me} of {workers}")
        rows, read, x = gather(strategy, workers, len(items), mine, got)
        kept, lost = rows[read], np.sort(rows[~read])
        order = np.argsort(kept, kind="stable")
        kept = kept[order]
        return Decoded(x=x[read][order], y=np.array([items[i][1] for i in kept], np.int32),
                       files=[items[i][0] for i in kept], skipped=[_reason(items[i][0]) for i in lost],
                       rows=kept)

    return sharded


def shard_name(name: str, me: int, workers: int) -> str:
    return f"{name}.shard-{me}-of-{workers}"


def forget(cache, cluster_resolver) -> None:
    """This worker's shards out of the cache, once the chief has them all."""
    me, workers = rank(cluster_resolver)
    for path in cache.glob(f"*.shard-{me}-of-{workers}.*"):
        path.unlink(missing_ok=True)
    for folder in (cache, cache.parent):  # made for the shard alone: left empty, they go too
        try:
            folder.rmdir()
        except OSError:
            break


def gather(strategy, workers: int, photos: int, mine: np.ndarray, got: Decoded):
    """(rows, read, features) of every worker's shard, on every worker, in one collective.

    Every worker knows every shard's length (photos k, k+W, ...), so each sends a
    block of the longest's rows, no counts exchanged first: a collective costs
    a second or more to trace and run, and one a split keeps two workers near
    half of one's time. A block's row is [photo's row, read or not, features]
    in float64 (a row number is exact to 2**53); padding rows are -1.
    """
    # The collective takes equal shapes, and never an empty one (TensorFlow 2.21 crashes on it).
    most = max(1, -(-photos // workers))
    shape = got.x.shape[1:]
    block = np.full((most, 2 + int(np.prod(shape))), -1.0)
    block[: len(mine), 0], block[: len(mine), 1] = mine, 0.0
    block[got.rows, 1] = 1.0
    block[got.rows, 2:] = np.asarray(got.x, np.float32).reshape(len(got.rows), block.shape[1] - 2)
    every = _all_gather(strategy, workers, block)
    every = every[every[:, 0] >= 0]
    x = every[:, 2:].astype(np.float32).reshape(len(every), *shape)
    return every[:, 0].astype(np.int64), every[:, 1] == 1.0, x


def _all_gather(strategy, workers: int, value: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    values = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(value))
    try:
        got = strategy.gather(values, axis=0).numpy()
    except tf.errors.OpError as exc:
        # A worker that died: the strategy's health check aborts the collective, naming it.
        peer = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", str(exc.message))
        who = f"{peer[1]}-{peer[2]}" if peer else "a worker"
        raise ClusterError(f"{who} stopped answering while the features were gathered; "
                           "start every worker again") from None
    # Each of a worker's replicas (its GPUs) sent the same rows: keep its first's.
    per_worker = strategy.num_replicas_in_sync // workers
    step, first = len(value), [w * per_worker for w in range(workers)]
    return np.concatenate([got[r * step : (r + 1) * step] for r in first])


def _reason(path) -> dict:
    """A file another worker could not read, as decode lists it: read again here for its reason."""
    try:
        load_image(path, (8, 8))
    except ImageError as exc:
        return {"file": exc.path, "reason": exc.reason}
    return {"file": str(path), "reason": "unreadable on another worker"}
