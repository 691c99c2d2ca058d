"""Where a training run's workers come from: this machine, or a cluster.

`noodle train --cluster` chooses how the workers of a multi-machine run find
each other. Each is a TensorFlow cluster resolver; all of them end in
MultiWorkerMirroredStrategy, one worker process per host (or per Slurm task):
  auto       TF_CONFIG when it is set, else Slurm when the job step has several
             tasks, else this machine alone
  tf-config  TF_CONFIG, one per host, written by hand or by a Kubernetes
             operator (Kubeflow's TFJob sets it in every pod)
  slurm      the environment `srun` gives each task (SlurmClusterResolver)
  none       this machine alone, whatever the environment says

The chief (the `chief` task, else worker 0) writes the run folder; the other
workers keep their logs and backups in a temporary folder and delete it.
TensorFlow is imported inside the functions, so the CLI can import the choices.
"""
from __future__ import annotations

import os
import shutil
from enum import Enum

from edge.errors import NoodleError

# The first port the Slurm tasks of one node listen on (one port per task
# after it); TensorFlow's own default.
SLURM_PORT_BASE = 8888


class Cluster(str, Enum):
    auto = "auto"
    tf_config = "tf-config"
    slurm = "slurm"
    none = "none"


class ClusterError(NoodleError):
    pass


def choose(mode: Cluster | str, environ=os.environ) -> Cluster:
    """The resolver to use (tf_config, slurm or none) for `mode` in `environ`."""
    mode = Cluster(mode)
    if mode is Cluster.auto:
        if environ.get("TF_CONFIG"):
            return Cluster.tf_config
        # SLURM_JOB_ID alone is any batch job, often one task on one node: only
        # a job step with several tasks (srun --ntasks N) is a cluster.
        if environ.get("SLURM_JOB_ID") and _int(environ.get("SLURM_STEP_NUM_TASKS")) > 1:
            return Cluster.slurm
        return Cluster.none
    if mode is Cluster.tf_config and not environ.get("TF_CONFIG"):
        raise ClusterError("--cluster tf-config: TF_CONFIG is not set; set it on every host "
                           "(see the README's 'Several machines'), or use --cluster auto")
    if mode is Cluster.slurm and not environ.get("SLURM_PROCID"):
        raise ClusterError("--cluster slurm: no Slurm task environment (SLURM_PROCID); "
                           "start one `noodle train` per task with srun")
    return mode


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def resolver(kind: Cluster, environ=os.environ):
    """The TensorFlow cluster resolver for a `choose` result other than none."""
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if kind is Cluster.tf_config:
        return resolvers.TFConfigClusterResolver()
    if "CUDA_VISIBLE_DEVICES" in environ or shutil.which("nvidia-smi"):
        # One task per GPU share; it sets CUDA_VISIBLE_DEVICES for this task.
        return resolvers.SlurmClusterResolver(port_base=SLURM_PORT_BASE)
    # CPU-only nodes: the resolver still divides GPUs among a node's tasks (and
    # fails without nvidia-smi), so give each task a nominal one and let it set nothing.
    return resolvers.SlurmClusterResolver(port_base=SLURM_PORT_BASE, gpus_per_node=1 << 10,
                                          gpus_per_task=1, auto_set_gpu=False)


def is_chief(cluster_resolver) -> bool:
    """The task that writes the run folder: `chief`, else worker 0 (Slurm has no chief)."""
    if cluster_resolver is None:
        return True
    task_type, task_id = cluster_resolver.task_type, cluster_resolver.task_id
    jobs = cluster_resolver.cluster_spec().as_dict()
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in jobs)


def task_name(cluster_resolver) -> str:
    return f"{cluster_resolver.task_type}-{cluster_resolver.task_id}"


def patch_keras_multi_worker() -> None:
    """Let Keras 3's fit average step results over workers.

    Under MultiWorkerMirroredStrategy, Keras (3.15 and earlier, keras-team/keras#20585)
    reduces every scalar loss and metric with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on a scalar. Reducing over replicas only (axis=None) is the mean
    it means. Installed only for multi-worker runs; other strategies keep Keras' path.
    """
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    original = getattr(trainer.reduce_per_replica, "__wrapped__", trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    trainer.reduce_per_replica = reduce_per_replica
