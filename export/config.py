"""The export stage's settings, each default stated once, with its reason.

`noodle export` and `noodle compare` (export/cli.py) build their options and
choices from `ExportConfig`, as `noodle train` does from train.config's
TrainConfig; export/convert.py and export/compare.py take their defaults from
it. Nothing here imports numpy or TensorFlow, so `noodle --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass

# In this order: float32 is the reference every other variant is measured against.
VARIANTS = ("float32", "float16", "dynamic", "int8")
# uint8 input takes raw camera pixels unchanged (scale 1, zero point 0);
# int8 is for accelerators that only take signed tensors.
IO_TYPES = ("uint8", "int8")
# Training photos by default; val is there to check that calibrating on photos
# the weights never saw changes nothing. Never test: those score the variants.
CALIBRATION_SPLITS = ("train", "val")
# tflite: the converter's own int8; litert: also the LiteRT Quantizer's (int8-litert.tflite).
QUANTIZERS = ("tflite", "litert")


@dataclass(frozen=True)
class ExportConfig:
    variants: tuple[str, ...] = VARIANTS
    # A few hundred shuffled training photos pin every activation range; more
    # changes the int8 model very little and costs conversion time.
    calibration_samples: int = 300
    # Fewer photos than this may miss the tails of some activation's range.
    calibration_warn_below: int = 100
    calibration_split: str = CALIBRATION_SPLITS[0]
    # A fixed shuffle: the same model and data always convert to the same int8 file.
    calibration_seed: int = 0
    io: str = IO_TYPES[0]
    quantizer: str = QUANTIZERS[0]
    # compare: timed invokes per model and thread count, enough for a stable p99
    # of a millisecond-scale model, a second or two per row...
    latency_runs: int = 200
    # ...and the photos whose label held but whose probability moved most, shown
    # on the contact sheet beside every photo whose label changed.
    top_shifts: int = 8


DEFAULTS = ExportConfig()
