"""Run a .tflite classifier with whichever interpreter the device has.

preprocess (edge.preprocess) -> quantize -> invoke -> dequantize -> probabilities.
Quantization parameters come from the model's own tensor details, never from
constants here, and labels and input size come from the manifest beside it.
numpy, Pillow and an interpreter only: this file ships to the device.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge.errors import NoodleError, first_line
from edge.manifest import ManifestError, image_size, read_manifest, sha256_file
from edge.preprocess import load_image

# Tried in this order: the Pi's runtime, its successor, then full TensorFlow
# (which works but costs seconds of import and hundreds of MB).
RUNTIMES = {
    "tflite-runtime": "tflite_runtime.interpreter",
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tensorflow": "tensorflow.lite",
}
# Set to one of RUNTIMES' names to insist on it (validation runs each in turn).
RUNTIME_ENV = "NOODLE_RUNTIME"
# Bytes 4-8 of every TFLite flatbuffer: checked first, so a wrong file gets a
# plain message rather than the interpreter's.
TFLITE_IDENTIFIER = b"TFL3"


class RuntimeMissing(NoodleError):
    pass


class ModelError(NoodleError):
    """A model file that cannot be used: not TFLite, mismatched, or altered."""


def install_hint() -> str:
    if sys.version_info < (3, 12):
        return "pip install tflite-runtime==2.14.0 'numpy<2'"
    return "pip install ai-edge-litert"


def find_runtime(name: str | None = None):
    """Return (runtime name, Interpreter class); `name` or $NOODLE_RUNTIME pins one."""
    name = name or os.environ.get(RUNTIME_ENV) or None
    if name is not None and name not in RUNTIMES:
        raise RuntimeMissing(f"{RUNTIME_ENV}={name}: unknown runtime; use one of {', '.join(RUNTIMES)}")
    for candidate in [name] if name else list(RUNTIMES):
        try:
            module = importlib.import_module(RUNTIMES[candidate])
        except ImportError:
            continue
        if candidate == "tensorflow":
            print("warning: no tflite-runtime or ai-edge-litert; using full TensorFlow "
                  f"(slow start, large memory). For the light path: {install_hint()}", file=sys.stderr)
        return candidate, module.Interpreter
    wanted = name or "no TFLite interpreter"
    raise RuntimeMissing(f"{wanted} is not installed for Python "
                         f"{sys.version_info.major}.{sys.version_info.minor}; {install_hint()}")


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution (a runtime, numpy), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_tflite(path: Path) -> None:
    """Refuse a file that is not a TFLite flatbuffer, naming it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror or exc})") from None
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier); "
                         "pass a .tflite written by `noodle export`")


@contextlib.contextmanager
def quiet_info():
    """Drop the `INFO:` lines the interpreters print from C++ (XNNPACK created); keep the rest.

    They land on stderr below Python, so fd 2 is captured while the block runs.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest, IDEs): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith("INFO: "):
                    print(line, file=sys.stderr)


def model_entry(manifest: dict, model_path: Path) -> tuple[str, dict]:
    """The manifest's entry (variant name, details) for this model file."""
    for variant, entry in manifest.get("models", {}).items():
        if entry.get("file") == model_path.name:
            return variant, entry
    raise ManifestError(f"{model_path}: not listed in its manifest; copy the manifest.json "
                        "that `noodle export` wrote beside this model")


class Classifier:
    """One loaded model: labels, input size and quantization from the model and manifest."""

    def __init__(self, model_path: str | os.PathLike, manifest: dict | None = None,
                 threads: int | None = None, runtime: str | None = None, verify: bool = True):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file; pass a .tflite written by `noodle export`")
        check_tflite(self.path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path.parent)
        self.variant, entry = model_entry(self.manifest, self.path)
        if verify and entry.get("sha256") and sha256_file(self.path) != entry["sha256"]:
            raise ModelError(f"{self.path}: sha256 differs from its manifest; the file was altered "
                             "or belongs to another export; copy both from the same export")
        self.labels: list[str] = list(self.manifest["labels"])
        self.size = image_size(self.manifest)
        self.runtime, interpreter_class = find_runtime(runtime)
        try:
            with quiet_info():
                self.interpreter = interpreter_class(model_path=str(self.path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: {self.runtime} cannot load it ({first_line(exc)}); "
                             "re-export it with `noodle export`") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        expected = (self.size[0], self.size[1], 3)
        if tuple(self._input["shape"][1:]) != expected:
            raise ModelError(f"{self.path}: model input {tuple(self._input['shape'][1:])} but manifest "
                             f"says {expected}; the model and manifest come from different exports")
        self.batch = int(self._input["shape"][0])
        # A batch dimension of -1 in the signature lets invoke() resize it; a
        # model saved with a fixed one is run an image at a time.
        signature = self._input.get("shape_signature", self._input["shape"])
        self.batchable = len(signature) > 0 and int(signature[0]) == -1

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    def preprocess(self, path: str | os.PathLike) -> np.ndarray:
        return load_image(path, self.size)

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self.input_dtype
        if not np.issubdtype(dtype, np.integer):
            return pixels.astype(dtype)
        scale, zero_point = self._input["quantization"]
        if scale == 1.0 and zero_point == 0 and dtype == np.uint8:
            return pixels.astype(np.uint8, copy=False)  # raw camera pixels go straight in
        info = np.iinfo(dtype)
        q = np.rint(pixels.astype(np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        scale, zero_point = self._output["quantization"]
        if np.issubdtype(raw.dtype, np.integer) and scale:
            return (raw.astype(np.float32) - zero_point) * scale
        return raw.astype(np.float32)

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self._input["index"], [batch, *self.size, 3])
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self.batch = batch

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """Raw model outputs (dequantized) for a (n, h, w, 3) uint8 batch."""
        if not self.batchable and len(pixels) != self.batch:
            return self._fixed_batches(pixels)
        self._resize(len(pixels))
        self.interpreter.set_tensor(self._input["index"], self._quantize(pixels))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))

    def _fixed_batches(self, pixels: np.ndarray) -> np.ndarray:
        """Run a model whose batch size is fixed: chunks of that size, the last one padded."""
        outs = []
        for i in range(0, len(pixels), self.batch):
            chunk = pixels[i : i + self.batch]
            short = self.batch - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.invoke(chunk)[: self.batch - short])
        return np.concatenate(outs)

    def probabilities(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        """(n, classes) probabilities; a sigmoid output becomes two columns."""
        outs = [self.invoke(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        out = np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)
        if out.shape[1] == 1 and len(self.labels) == 2:
            out = np.concatenate([1.0 - out, out], axis=1)
        return out

    def top_k(self, probs: np.ndarray, k: int = 1) -> list[list[tuple[str, float]]]:
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]
