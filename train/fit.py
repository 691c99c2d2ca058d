"""One training run: photos in, a run folder with a model and its manifest out.

Reads top to bottom: `train` sets up the cluster role and the precision,
`_train` decodes the splits, makes the stage of the architecture's trainer
(train.pretrained or train.scratch), runs it, then scores and writes the run
folder (train.results). TensorFlow is imported here and nowhere near the
CLI's import path.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from train import cluster as clusters
from train import data as datasets
from train import pretrained, results, runs, scratch, shard, stream
from train.config import TrainConfig, resolved, trains_on_val
from train.quiet import quiet_tensorflow
from train.rundir import RunDir
from train.stage import DecodedSplits, device

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) hides the
# progress bars; warnings and errors still show.
quiet_tensorflow()
log = logging.getLogger(__name__)


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


def _train(cfg: TrainConfig, dataset: datasets.Dataset | None, cluster_resolver,
           work: RunDir, chief: bool) -> dict | None:
    """`train` in `work`: the run folder on the chief, a scratch folder on other workers."""
    import keras

    dataset = dataset or datasets.find_dataset(cfg.data)
    cfg = resolved(cfg)
    classes = len(dataset.labels)
    if cfg.pretrained:
        # Before TensorFlow starts its thread pools: decoding and the frozen model share the cores.
        log.info(f"streaming the photos: {stream.share_cores()}")
    keras.utils.set_random_seed(cfg.seed)
    # Before anything touches a GPU: the strategy sets their memory growth.
    strategy = pick_strategy(cfg.cpu_replicas, cluster_resolver)
    parts = pretrained.frozen(cfg, classes) if cfg.pretrained else None
    # Pretrained: each photo's features (or maps) as it is decoded, never a split's pixels;
    # in a cluster each worker embeds its shard, and every worker gets them all (train.shard).
    # Every worker keeps what it embedded in the run folder's cache (on its own host) until the run
    # is written, so a rerun after a stop resumes from it.
    cache = RunDir(cfg.out).cache
    photos = sum(len(items) for items in dataset.splits.values())
    embed = parts and pretrained.embedder(cfg, parts, cache, strategy, photos)
    if embed and cluster_resolver is not None:
        embed = shard.embedder(strategy, cluster_resolver, embed)
    splits = decode_splits(cfg, dataset, work, embed)
    if embed and not chief:
        shard.forget(cache, cluster_resolver)
        log.info(f"{clusters.task_name(cluster_resolver)} done: its shard embedded; the chief solves the "
                 "head and writes the run folder")
        return None
    if device() == "CPU":
        # The cores this process may use: a container or taskset may allow fewer than the machine has.
        log.info(f"no GPU found: training on {datasets.cores()} CPU cores")
    if cfg.mixed_precision:
        # float16 compute with float32 variables; the head is pinned to float32.
        # `train` restores the previous policy.
        keras.mixed_precision.set_global_policy("mixed_float16")
    if cfg.pretrained:
        stage = pretrained.make_stage(cfg, parts, splits)
        train_seconds, head = pretrained.solve_head(stage, splits, work, classes)
    else:
        stage = scratch.make_stage(cfg, splits, classes, strategy)
        train_seconds, head = scratch.fit(cfg, stage, splits, work, strategy, cluster_resolver), None
    if not chief:
        log.info(f"{clusters.task_name(cluster_resolver)} done; the chief writes the run folder")
        return None
    model, bn_photos = stage.model, 0
    if cfg.pretrained and cfg.fine_tune:
        train_seconds += pretrained.fine_tune(cfg, model, stage, splits)
    elif not cfg.pretrained:
        model = scratch.float32_copy(model, cfg.arch, (cfg.image_size, cfg.image_size, 3), classes)
        bn_photos = scratch.exact_batch_norm(model, splits.decoded["train"].x, seed=cfg.seed)
        if bn_photos:
            log.info(f"batch-norm statistics set to those of {bn_photos} training photos, un-augmented")
    history = results.read_history(work.backup / "history.csv")
    metrics = results.evaluate(model, splits, dataset.labels, stage, history, train_seconds, bn_photos, head)
    manifest = results.run_manifest(cfg, dataset, model, splits, metrics, strategy)
    results.write_run(RunDir(cfg.out), work, model, manifest, history, metrics, dataset)
    return manifest


def decode_splits(cfg: TrainConfig, dataset: datasets.Dataset, work: RunDir, embed=None) -> DecodedSplits:
    """Every split's pixels at the run's input side, the validation photos folded in when trained on.

    `embed(items, split)`: what a frozen model makes of the pixels, kept instead of them (train.stream).
    """
    on_val = trains_on_val(cfg, dataset)
    splits = dict(dataset.splits)
    if on_val:
        # One training array: the pipeline and a memory map see one set.
        splits = {"train": splits["train"] + splits["val"], "test": splits["test"]}
    started = time.perf_counter()
    size = (cfg.image_size, cfg.image_size)
    decoded = {split: embed(items, split) if embed else datasets.decode(items, size, cache_dir=work.cache,
                                                                         name=split)
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
             + f" ({'decoded and embedded' if embed else 'decoded'} in {seconds:.1f}s)")
    if on_val:
        log.info(f"training on the {len(dataset.splits['val'])} validation photos too: nothing is chosen "
                 "on them (--hold-out-val keeps them out, for validation curves); the test split scores the "
                 "model")
    for warning in dataset.warnings:
        log.warning(warning)
    mapped = [split for split, d in decoded.items() if isinstance(d.x, np.memmap)]
    if mapped and not embed:
        log.info(f"pixels of {', '.join(mapped)} memory-mapped from {work.cache}, "
                 f"being over {datasets.IN_MEMORY_LIMIT:,} bytes (NOODLE_IN_MEMORY_LIMIT)")
    # Missing listed files, then unreadable ones.
    return DecodedSplits(decoded, on_val, dataset.skipped + unreadable, seconds)


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
