"""The embedded default dataset: two classes of synthetic photos, made here.

A fresh machine has no photos, so `noodle data sample` draws them: plain
discs against striped discs (stripes at any angle and pitch), in random
colours on noisy gradient backgrounds, at random sizes and positions, saved as
JPEGs of varied size in the seed's folder layout. Deterministic for a given seed, so every machine
trains on the same pixels; hard enough that augmentation matters, easy enough
that a small CNN reaches well over 95 %.
"""
from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edge.atomic import DISK_FULL, OutputError, make_folder

CLASSES = ("discs", "stripes")
# Per class: enough for a stable validation figure, few enough to train in seconds.
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
DEFAULT_SEED = 0


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    c0 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    c1 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(4, 20), img.shape)
    return Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8), "RGB")


def _contrasting_colour(rng: random.Random, background: Image.Image) -> tuple[int, int, int]:
    mean = np.asarray(background).reshape(-1, 3).mean(0)
    while True:
        colour = np.array([rng.randrange(256) for _ in range(3)])
        if np.abs(colour - mean).sum() > 150:
            return tuple(int(c) for c in colour)


def draw_sample(rng: random.Random, label: int) -> Image.Image:
    width, height = rng.randint(72, 220), rng.randint(72, 220)
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.18, 0.34) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    colour = _contrasting_colour(rng, img)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if CLASSES[label] == "discs":
        draw.ellipse(box, fill=colour)
    else:
        # Two-colour stripes inside the disc: the same silhouette, other texture.
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        angle = rng.uniform(0, math.pi)
        pitch = rng.uniform(0.25, 0.45) * radius
        yy, xx = np.mgrid[0 : img.size[1], 0 : img.size[0]].astype(np.float32)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / pitch
        second = _contrasting_colour(rng, Image.new("RGB", (1, 1), colour))
        stripes = np.where((phase % 1.0)[..., None] < 0.5, colour, second).astype(np.uint8)
        img.paste(Image.fromarray(stripes, "RGB"), (0, 0), mask)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return img


def write_sample(out: Path, seed: int = DEFAULT_SEED, train_per_class: int = TRAIN_PER_CLASS,
                 test_per_class: int = TEST_PER_CLASS) -> dict[str, int]:
    """Write OUT/train/<class>/*.jpg and OUT/test/<class>/*.jpg; return counts.

    Written into a temporary folder and renamed, so an interrupted run never
    leaves a half-made dataset that a later `make` would take as complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: a file is where the dataset folder should be; move it away, "
                          "or give another folder")
    make_folder(out.parent)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    counts = {}
    try:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for label, name in enumerate(CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(per_class):
                    img = draw_sample(rng, label)
                    img.save(folder / f"{name.rstrip('s')}.{i}.jpg", quality=rng.randint(75, 95))
                counts[f"{split}/{name}"] = per_class
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # no half dataset left to take for one
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise OutputError(f"{out}: cannot write the photos (No space left on device); free some "
                              "space and run it again") from None
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return counts
