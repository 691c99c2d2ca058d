"""What a taught model is: the shipped features, the teach folder's manifest, and running it.

`noodle export` writes, beside int8.tflite, for a frozen pretrained backbone
under a solved head (lite0):
- embed.tflite: the same int8 graph with two outputs, [pooled features,
  probabilities], converted with the same weights and calibration pixels as
  int8.tflite (export/embed.py checks that their probabilities agree);
- features.npz: embed.tflite's features of a bounded sample of the training
  photos per class (float16, with their labels; never the photos), so a new
  class can be taught beside the shipped ones.

`noodle-edge teach` (edge/teach.py) writes a teach folder:
    DIR/embed.tflite   copied from the model taught from
    DIR/features.npz   the shipped features, carried so DIR can be taught again
    DIR/head.npz       kernel (features, classes) and bias (classes,), float32
    DIR/cache.npz      the captures' features by file sha256 (the next teach reuses them)
    DIR/manifest.json  TeachManifest: labels, the files' sha256s, the captures' fingerprint,
                       the solve's figures

`TaughtClassifier` runs DIR as `edge.runtime.Classifier` runs a .tflite:
embed.tflite's features, then softmax(features @ kernel + bias) in numpy.
numpy and an interpreter only: this file ships to the device.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import NoodleError
from edge.escape import escape_name, label_problem
from edge.manifest import ManifestError, sha256_file
from edge.runtime import Classifier, read_checked
from edge.tflite_file import ModelError

EMBED_NAME = "embed.tflite"
FEATURES_NAME = "features.npz"
HEAD_NAME = "head.npz"
CACHE_NAME = "cache.npz"
TEACH_MANIFEST = "manifest.json"
FEATURES_KIND, TEACH_KIND = "noodle-features", "noodle-teach"
SCHEMA = 1


class TeachError(NoodleError):
    """A teach folder, model or captures folder that cannot be used as given."""


# ------------------------------------------------------------------ features.npz

@dataclass
class ShippedFeatures:
    """features.npz: the training photos' embed features, their labels, and what made them."""

    features: np.ndarray  # (n, d) float16
    y: np.ndarray  # (n,) index into labels
    labels: list[str]
    meta: dict  # embed_sha256, input {height, width}, features, head_l2, head_iterations, ...

    @property
    def size(self) -> tuple[int, int]:
        return int(self.meta["input"]["height"]), int(self.meta["input"]["width"])

    def save(self, dest: Path) -> None:
        """np.savez into `dest` (a path the caller renames into place)."""
        with open(dest, "wb") as f:
            np.savez(f, features=self.features.astype(np.float16), y=self.y.astype(np.int32),
                     labels=np.array(self.labels, dtype=str), meta=np.array(json.dumps(self.meta)))


def load_features(path: Path) -> ShippedFeatures:
    """features.npz, checked; TeachError naming the file and the fix otherwise."""
    fix = "re-run `noodle export` (lite0) and copy its embed.tflite and features.npz together"
    try:
        with np.load(path, allow_pickle=False) as npz:
            features, y = npz["features"], npz["y"]
            labels, meta = [str(s) for s in npz["labels"]], json.loads(str(npz["meta"]))
    except FileNotFoundError:
        raise TeachError(f"{escape_name(str(path))}: no such file; {fix}") from None
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise TeachError(f"{escape_name(str(path))}: not a features file noodle wrote ({exc}); "
                         f"{fix}") from None
    if (not isinstance(meta, dict) or meta.get("kind") != FEATURES_KIND or features.ndim != 2
            or y.shape != (len(features),) or (len(y) and not (0 <= y.min() and y.max() < len(labels)))):
        raise TeachError(f"{escape_name(str(path))}: not a features file of this noodle (kind, shapes or "
                         f"labels do not fit); {fix}")
    return ShippedFeatures(features, y, labels, meta)


# ------------------------------------------------------------------ the teach manifest

@dataclass
class TeachManifest:
    """DIR/manifest.json, the one source of what a teach folder holds."""

    labels: list[str]
    input: dict  # {height, width}
    features: int  # the embed width the head reads
    files: dict  # name -> sha256, of every file in DIR but this one
    captures: dict  # fingerprint, per-label counts, skipped
    shipped: dict  # labels kept from features.npz, their counts; or replaced
    solve: dict  # l2, iterations, converged, loss, accuracy, seconds, invokes
    validation: dict  # passed, and what was checked

    def to_dict(self) -> dict:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {"kind": TEACH_KIND, "schema": SCHEMA, **fields}

    @classmethod
    def load(cls, folder: Path) -> TeachManifest:
        path = folder / TEACH_MANIFEST
        fix = "teach it again with `noodle-edge teach CAPTURES --model MODEL --out DIR`"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{escape_name(str(path))}: no teach manifest; a model folder is one "
                                f"`noodle-edge teach` wrote: {fix}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{escape_name(str(path))}: unreadable ({exc}); {fix}") from None
        if not isinstance(doc, dict) or doc.get("kind") != TEACH_KIND or doc.get("schema") != SCHEMA:
            raise ManifestError(f"{escape_name(str(path))}: not a teach manifest of schema {SCHEMA}; {fix}")
        try:
            out = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ManifestError(f"{escape_name(str(path))}: lacks {exc}; {fix}") from None
        labels = out.labels
        if (not isinstance(labels, list) or len(labels) < 2 or len(set(labels)) != len(labels)
                or any(not isinstance(s, str) or label_problem(s) for s in labels)):
            raise ManifestError(f"{escape_name(str(path))}: labels are not 2 or more distinct class "
                                f"names; {fix}")
        return out


def file_sha256(path: Path) -> str:
    return sha256_file(path)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ running the embed model

class Embedder(Classifier):
    """embed.tflite: pixels in, the pooled features out (its other output, the probabilities, unread).

    Shares Classifier's quantize/invoke/batching; only the output read differs.
    """

    def __init__(self, path: str | os.PathLike, width: int, size: tuple[int, int], sha256: str | None = None,
                 threads: int | None = None, runtime: str | None = None):
        self.path = Path(path)
        model = read_checked(self.path)
        if sha256 is not None and bytes_sha256(model.data) != sha256:
            raise ModelError(f"{escape_name(str(self.path))}: sha256 differs from the one recorded "
                             "beside it; the file was altered or belongs to another export: copy the "
                             "folder again")
        self.sha256 = bytes_sha256(model.data)
        widths = [int(t.shape[-1]) for t in model.outputs]
        if len(model.inputs) != 1 or widths.count(width) != 1:
            raise ModelError(f"{escape_name(str(self.path))}: not an embed model with one {width}-wide "
                             "features output; copy embed.tflite from the same `noodle export`")
        self._which = widths.index(width)
        self.size, self.width = size, width
        self.variant, self.labels, self.described_by, self.validation = "embed", [], "features.npz", None
        self._start(model.data, threads, runtime, self._which)
        self.scores = "features"
        self.invokes = 0  # interpreter invokes so far: what an enrolment costs

    def _resize(self, batch: int) -> None:
        super()._resize(batch)
        self._output = self.interpreter.get_output_details()[self._which]

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        if self.batchable or len(pixels) == self.batch:
            self.invokes += 1
        return super().invoke(pixels)

    def features(self, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
        """(n, width) float32 features of a (n, h, w, 3) uint8 batch."""
        outs = [self.invoke(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, self.width), np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TaughtClassifier(Embedder):
    """A teach folder as a classifier: what classify, camera, serve and bench load for a DIR.

    `path` is DIR/embed.tflite (the file the interpreter runs); `folder` is DIR.
    Every file's sha256 is checked against the manifest before anything runs.
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, runtime: str | None = None,
                 allow_unverified: bool = False):
        self.folder = Path(folder)
        manifest = TeachManifest.load(self.folder)
        for name, sha in sorted(manifest.files.items()):
            path = self.folder / name
            if name != Path(name).name or not path.is_file():
                raise ModelError(f"{escape_name(str(path))}: listed in its teach manifest but missing; "
                                 "copy the whole folder `noodle-edge teach` wrote")
            if name != EMBED_NAME and file_sha256(path) != sha:  # embed.tflite: checked on its bytes below
                raise ModelError(f"{escape_name(str(path))}: sha256 differs from its teach manifest; "
                                 "the file was altered: copy the whole folder again, or teach again")
        size = (int(manifest.input["height"]), int(manifest.input["width"]))
        super().__init__(self.folder / EMBED_NAME, manifest.features, size, manifest.files.get(EMBED_NAME),
                         threads, runtime)
        try:
            with np.load(self.folder / HEAD_NAME, allow_pickle=False) as npz:
                self.kernel, self.bias = npz["kernel"].astype(np.float32), npz["bias"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{escape_name(str(self.folder / HEAD_NAME))}: not a head noodle wrote ({exc}); "
                             "teach again") from None
        classes = len(manifest.labels)
        if self.kernel.shape != (manifest.features, classes) or self.bias.shape != (classes,):
            raise ModelError(f"{escape_name(str(self.folder / HEAD_NAME))}: kernel {self.kernel.shape} and "
                             f"bias {self.bias.shape} do not fit {manifest.features} features and "
                             f"{classes} labels; teach again")
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.variant, self.described_by = "taught", "teach manifest"
        self.validation = "passed" if manifest.validation.get("passed") else "did not pass"
        self.scores = "probabilities"
        # What identifies the model served: the manifest, which holds every other file's sha256.
        self.sha256 = file_sha256(self.folder / TEACH_MANIFEST)

    def probabilities(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        return head_probabilities(self.features(pixels, batch), self.kernel, self.bias)


def head_probabilities(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(features @ kernel + bias), in float64 then float32, as the solve scored it."""
    return softmax(np.asarray(features, np.float64) @ kernel.astype(np.float64) + bias).astype(np.float32)
