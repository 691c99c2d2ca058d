"""embed.tflite and features.npz: what `noodle-edge teach` needs to teach a class on the device.

For a frozen pretrained backbone under a solved head (lite0) only: there the
head is a convex problem on fixed features, which numpy solves on a Pi in
seconds. A net trained whole (noodle, seed) or a fine-tuned backbone has no
fixed features to teach on, and `write` says so in one line.

Same weights and calibration as int8.tflite, by construction and by check:
the model converted is the trained Keras model's own backbone and head layers
(the same weight objects), rewired with two outputs [features, probabilities],
and int8-converted with int8.tflite's converter settings on the very
calibration pixels int8.tflite was calibrated on. Every tensor int8.tflite
has therefore gets the same range. The check: on CHECK_PHOTOS training
photos embed.tflite's probabilities must equal int8.tflite's, byte for byte;
otherwise the export says so and writes neither file.

features.npz holds embed.tflite's features (dequantized, float16) of at most
PER_CLASS training photos a class, seeded, with their labels: the shipped
classes a taught head keeps. Never the photos.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np

from edge.atomic import OutputError, atomic_output
from edge.errors import first_line
from edge.manifest import RunManifest, sha256_file
from edge.runtime import find_runtime
from edge.taught import EMBED_NAME, FEATURES_KIND, FEATURES_NAME, Embedder, ShippedFeatures
from train.rundir import RunDir

log = logging.getLogger("export.convert")

# Training photos a class whose features ship: 200 pins a class's mean and spread on
# 1280 features, and keeps features.npz near 0.5 MB a class (float16).
PER_CLASS = 200
SEED = 0
# Photos int8.tflite and embed.tflite must agree on, byte for byte.
CHECK_PHOTOS = 32


def why_not(trained: RunManifest, model) -> str | None:
    """Why this run gets no embed.tflite, or None when it does."""
    from train.config import ARCHITECTURES

    arch = ARCHITECTURES.get(trained.arch)
    settings = (trained.identity or {}).get("settings", {})
    if arch is None or not arch.pretrained or settings.get("weights") == "none":
        return f"{trained.arch} trains its whole net, so it has no frozen features to teach a head on"
    if settings.get("fine_tune"):
        return "its backbone was fine-tuned, so its head is not solved on frozen features"
    names = [layer.name for layer in model.layers]
    if "head" not in names or len(model.layers) != 3:
        return "the model is not a backbone under a `head` model, as train.models.lite0 builds it"
    return None


def two_outputs(model):
    """The trained model's backbone and head (the same layer objects), outputs [features, probabilities]."""
    import keras

    _, backbone, head = model.layers
    inputs = keras.Input(model.inputs[0].shape[1:], name="pixels")
    features = backbone(inputs)
    return keras.Model(inputs, [features, head(features)], name="embed")


def write(run: RunDir, model, trained: RunManifest, pixels: np.ndarray | None, io: str, data=None) -> None:
    """RUN/export/embed.tflite and features.npz, or one line saying why not (and neither file).

    Its failure fails neither the export nor int8.tflite: it is said in one line, as a variant's is.
    """
    reason = why_not(trained, model) or (None if pixels is not None else "int8 was not asked for")
    if reason is None and not run.tflite("int8").is_file():
        reason = "int8.tflite failed, and embed.tflite is checked against it"
    if reason is None:
        try:
            reason = _write(run, model, trained, pixels, io, data)
        except OutputError:  # a full disk: the export stops, in one line
            raise
        except Exception as exc:  # the converter's many types
            reason = f"{type(exc).__name__}: {first_line(exc)}"
    if reason is not None:
        for name in (EMBED_NAME, FEATURES_NAME):
            (run.export / name).unlink(missing_ok=True)
        log.info(f"skipped  {EMBED_NAME}: {reason}")


def _write(run: RunDir, model, trained: RunManifest, pixels: np.ndarray, io: str, data) -> str | None:
    from export.convert import calibration_pixels, convert

    out = run.export
    blob = convert(two_outputs(model), "int8", pixels, io)
    dest = out / EMBED_NAME
    with atomic_output(dest) as tmp:
        tmp.write_bytes(blob)
    width = int(model.layers[1].outputs[0].shape[-1])
    embedder = Embedder(dest, width, trained.input.size, runtime=_runtime())
    check = calibration_pixels(run.root, CHECK_PHOTOS, data=data)
    agree = _agree(run.tflite("int8"), dest, embedder, check)
    if agree is not None:
        return agree
    log.info(f"wrote    {dest}  ({dest.stat().st_size:,} bytes; its probabilities equal int8.tflite's "
             f"on {len(check)} photos)")
    shipped = _features(run, trained, embedder, data)
    shipped.meta.update({"embed_sha256": sha256_file(dest), "check": f"probabilities equal int8.tflite's "
                         f"on {len(check)} training photos"})
    with atomic_output(out / FEATURES_NAME) as tmp:
        shipped.save(tmp)
    log.info(f"wrote    {out / FEATURES_NAME}  ({len(shipped.y)} photos' features, "
             f"{(out / FEATURES_NAME).stat().st_size:,} bytes)")
    return None


def _runtime() -> str:
    return find_runtime(None)[0]


def _agree(int8: Path, embed: Path, embedder: Embedder, pixels: np.ndarray) -> str | None:
    """None when int8.tflite and embed.tflite give the same probabilities; else how they differ."""
    from edge.runtime import Classifier

    clf = Classifier(int8, runtime=embedder.runtime)
    ours = pixels.astype(np.uint8)
    want = clf.interpreter
    got = embedder.interpreter
    worst = 0
    for row in ours:
        clf.invoke(row[None])
        embedder.invoke(row[None])
        a = want.get_tensor(clf._output["index"])
        probs = [d for i, d in enumerate(got.get_output_details()) if i != embedder._which][0]
        b = got.get_tensor(probs["index"])
        worst = max(worst, int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max()))
    if worst:
        return (f"its probabilities differ from int8.tflite's by up to {worst} quantization steps on "
                f"{len(ours)} photos, so it is not the same graph; report it")
    return None


def _features(run: RunDir, trained: RunManifest, embedder: Embedder, data) -> ShippedFeatures:
    """embed.tflite's features of at most PER_CLASS training photos a class (train and val splits)."""
    from export.convert import evaluation_data
    from train.config import HEAD_ITERATIONS, HEAD_L2
    from train.data import decode
    from train.splits import unchanged

    recorded = evaluation_data(run.root, trained, data)
    items = [item for split in ("train", "val") for item in unchanged(recorded, split)]
    random.Random(SEED).shuffle(items)
    per: dict[int, list] = {}
    for item in items:
        per.setdefault(int(item[1]), []).append(item)
    chosen = [item for label in sorted(per) for item in per[label][:PER_CLASS]]
    decoded = decode(chosen, trained.input.size)
    features = embedder.features(decoded.x.astype(np.uint8))
    meta = {"kind": FEATURES_KIND, "schema": 1, "features": embedder.width,
            "input": {"height": trained.input.height, "width": trained.input.width},
            "head_l2": HEAD_L2, "head_iterations": HEAD_ITERATIONS, "per_class": PER_CLASS, "seed": SEED,
            "photos": {trained.labels[k]: min(len(v), PER_CLASS) for k, v in sorted(per.items())},
            "of": {trained.labels[k]: len(v) for k, v in sorted(per.items())},
            "splits": "train and val", "runtime": embedder.runtime}
    json.dumps(meta)  # plain values only
    return ShippedFeatures(features.astype(np.float16), np.asarray(decoded.y, np.int32), list(trained.labels),
                           meta)


def shipped_files(export: Path) -> dict[str, Path]:
    """What a bundle's model/ carries for teaching, when the export wrote it."""
    return {name: export / name for name in (EMBED_NAME, FEATURES_NAME) if (export / name).is_file()}
