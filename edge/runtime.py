"""Run a .tflite classifier with whichever interpreter the device has.

preprocess (edge.preprocess) -> quantize -> invoke -> dequantize -> probabilities.
Quantization parameters come from the model's own tensor details, never from
constants here. numpy, Pillow and an interpreter only: this file ships to the device.

Which file is trusted, and how:
- The file is read once, checked structurally (edge.tflite_file) and handed
  to the interpreter as those same bytes, so a damaged file is one line
  rather than a crash, and it cannot change between the check and the load.
- With a manifest.json beside it (or passed in), the manifest rules: the
  model's entry is found by file name, or by sha256 when the file was
  renamed, and its sha256 must match. An entry without a sha256 is refused
  unless the caller allows unverified models (`--no-verify`), with a warning.
  Labels and input the model embeds (export/metadata.py) must agree with it.
- With no manifest beside it, the model's embedded metadata gives labels,
  input size and preprocessing, and the sha256 of its graph and weights recorded
  there must match, so a lone renamed .tflite runs and a damaged one does not;
  metadata another tool wrote (a re-labelling by Google's metadata writer) does
  not count as damage (edge.tflite_file.ModelFile.weights_sha256).
  A model with neither is refused.
- Its output must be one row of class scores per image, (batch, classes).
  Scores that are not probabilities (a row that does not sum to 1 within
  PROBABILITY_TOLERANCE, or a value outside [0, 1]) are logits, as a model
  trained elsewhere with a linear last layer gives: softmax (or, for one
  unit, sigmoid) is applied, and a warning says so once.
- `validation` is what the manifest records of the export's validation:
  "passed", "did not pass" or "never finished" (None: a lone file, no
  manifest to say); the CLI warns, or with --strict refuses, unless it passed.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge.errors import NoodleError, first_line
from edge.escape import escape_name
from edge.files import check_per_core
from edge.manifest import (
    MANIFEST_NAME,
    EmbeddedMetadata,
    ExportManifest,
    ManifestError,
    ModelEntry,
    load_export,
)
from edge.postprocess import ranked, widen
from edge.preprocess import load_image
from edge.tflite_file import METADATA_NAME, TFLITE_IDENTIFIER, ModelError, ModelFile, read_model

# Tried in this order: the Pi's runtime, its successor, then full TensorFlow
# (which works but costs seconds of import and hundreds of MB).
RUNTIMES = {
    "tflite-runtime": "tflite_runtime.interpreter",
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tensorflow": "tensorflow.lite",
}
# Set to one of RUNTIMES' names to insist on it (validation runs each in turn).
RUNTIME_ENV = "NOODLE_RUNTIME"
# Interpreter threads allowed per core: more only adds switching, and ai-edge-litert
# crashes (SIGSEGV, nothing printed) when asked for tens of thousands.
THREADS_PER_CORE = 4
# How far a row of probabilities may sum from 1 (an int8 softmax rounds each class
# to 1/256), and lie outside [0, 1], before the row is read as logits.
PROBABILITY_TOLERANCE = 0.05


def check_threads(threads: int | None) -> None:
    """--threads: None (the runtime's default) or 1 to THREADS_PER_CORE per core."""
    check_per_core("--threads", threads, THREADS_PER_CORE)


class RuntimeMissing(NoodleError):
    pass


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


def read_checked(path: Path) -> ModelFile:
    """The model file's bytes, checked structurally; ModelError naming it if not usable."""
    try:
        with open(path, "rb") as f:
            # The identifier first: a photo or video passed by mistake is not read whole.
            head = f.read(8)
            data = head + f.read() if head[4:8] == TFLITE_IDENTIFIER else head
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file; pass a .tflite written by `noodle export`") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror or exc}); "
                         "check the path and its permissions") from None
    return read_model(data, str(path))


@contextlib.contextmanager
def quiet_info(path: Path, runtime: str):
    """Drop the `INFO:` lines the interpreters print from C++ (XNNPACK created); keep the rest.

    They land on stderr below Python, so fd 2 is captured while the block runs.
    A load that fails is one ModelError line; what the interpreter printed
    about it is dropped, its exception says the same.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest, IDEs): nothing to filter
        with _load_errors(path, runtime):
            yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            with _load_errors(path, runtime):
                yield
        except ModelError:
            captured.truncate(0)
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith("INFO: "):
                    print(line, file=sys.stderr)


@contextlib.contextmanager
def _load_errors(path: Path, runtime: str):
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: {runtime} cannot load it ({first_line(exc)}); "
                         "re-export it with `noodle export`") from None


def model_entry(manifest: ExportManifest, model_path: Path, sha256: str) -> tuple[str, ModelEntry]:
    """The manifest's entry (variant name, details) for this model file.

    By file name; for a renamed copy, by its sha256.
    """
    for variant, entry in manifest.models.items():
        if entry.file == model_path.name:
            return variant, entry
    for variant, entry in manifest.models.items():
        if entry.sha256 == sha256:
            return variant, entry
    raise ManifestError(f"{model_path}: not listed in its manifest, by name or sha256; copy the "
                        "manifest.json that `noodle export` wrote beside this model")


def embedded_metadata(model: ModelFile, path: Path) -> EmbeddedMetadata | None:
    """What the model says about itself (export/metadata.py wrote it), or None."""
    raw = model.metadata_bytes(METADATA_NAME)
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path}: its embedded noodle metadata is not JSON; re-export it "
                         "with `noodle export`") from None
    try:
        return EmbeddedMetadata.from_dict(document, f"{path} (embedded metadata)")
    except ManifestError as exc:
        raise ModelError(str(exc)) from None


def _describe(described: ExportManifest | EmbeddedMetadata) -> dict:
    """What the manifest and the embedded metadata must agree on."""
    spec, preprocessing = described.input, described.preprocessing
    return {"labels": described.labels, "input": (spec.height, spec.width, spec.channels),
            "output": described.output, "preprocessing": (preprocessing.name, preprocessing.version)}


def _agree(path: Path, manifest: ExportManifest, embedded: EmbeddedMetadata) -> None:
    ours, theirs = _describe(manifest), _describe(embedded)
    wrong = [key for key in ours if ours[key] != theirs[key]]
    if wrong:
        key = wrong[0]
        raise ModelError(f"{path}: its manifest and its embedded metadata disagree on "
                         f"{', '.join(wrong)} ({key}: {ours[key]} vs {theirs[key]}); the manifest "
                         "was edited or belongs to another export: copy both from the same export")


def _not_probabilities(out: np.ndarray) -> str | None:
    """Why (n, units) model outputs cannot be probabilities, or None when they can."""
    tol = PROBABILITY_TOLERANCE
    low, high = float(np.min(out)), float(np.max(out))
    if not (np.isfinite(low) and np.isfinite(high)):
        return None  # a broken model; its NaN scores are not logits either
    if low < -tol or high > 1 + tol:
        return f"values from {low:.3g} to {high:.3g}, outside [0, 1]"
    if out.shape[1] > 1:
        sums = out.sum(axis=1)
        worst = float(sums[np.argmax(np.abs(sums - 1))])
        if abs(worst - 1) > tol:
            return f"a row sums to {worst:.3g}, not 1"
    return None


def load_classifier(model: str | os.PathLike, threads: int | None = None, runtime: str | None = None,
                    allow_unverified: bool = False):
    """What every command loads: a .tflite (Classifier), or a folder `noodle-edge teach` wrote."""
    if Path(model).is_dir():
        from edge.taught import TaughtClassifier

        return TaughtClassifier(model, threads=threads, runtime=runtime, allow_unverified=allow_unverified)
    return Classifier(model, threads=threads, runtime=runtime, allow_unverified=allow_unverified)


class Classifier:
    """One loaded model: labels, input size and quantization from the model and manifest."""

    def __init__(self, model_path: str | os.PathLike, manifest: ExportManifest | None = None,
                 threads: int | None = None, runtime: str | None = None, allow_unverified: bool = False):
        """manifest: the export manifest, read from beside the model when not given.
        allow_unverified: run a model whose manifest entry has no sha256, with a warning.
        """
        self.path = Path(model_path)
        model = read_checked(self.path)
        embedded = embedded_metadata(model, self.path)
        sidecar = self.path.parent / MANIFEST_NAME
        if manifest is None and sidecar.is_file():
            manifest = load_export(sidecar)
        elif manifest is None and embedded is None:
            raise ManifestError(f"{sidecar}: no manifest, and {self.path.name} does not describe itself; "
                                "keep the manifest.json `noodle export` wrote beside the model")
        if manifest is not None:
            self.variant = self._check_entry(manifest, model, allow_unverified)
            self.labels: list[str] = list(manifest.labels)
            self.size = manifest.input.size
            # Where the labels came from, for messages.
            self.described_by = "manifest"
            record = manifest.validation
            self.validation: str | None = (("passed" if record.get("passed") else "did not pass")
                                           if record is not None else "never finished")
        else:
            # A file exported before the digest covered the graph carries the older one.
            if embedded.weights_sha256 not in (model.weights_sha256(), model.legacy_weights_sha256()):
                raise ModelError(f"{self.path}: its weights differ from the sha256 its embedded metadata "
                                 "records; the file was altered: copy it again from its export")
            self.variant, self.labels = embedded.variant, list(embedded.labels)
            self.size = embedded.input.size
            self.described_by = "embedded metadata"
            self.validation = None  # a lone file records no validation
        self._check_shapes(model)
        if manifest is not None and embedded is not None:
            _agree(self.path, manifest, embedded)
        self._start(model.data, threads, runtime)
        # "probabilities" until a row says otherwise, then "logits" for good.
        self.scores = "probabilities"

    def _start(self, data: bytes, threads: int | None, runtime: str | None, output: int = 0) -> None:
        """The interpreter of `data`, its input and its `output`-th output."""
        check_threads(threads)
        self.runtime, interpreter_class = find_runtime(runtime)
        with quiet_info(self.path, self.runtime):
            # The bytes just checked, not the path: the file cannot change in between.
            self.interpreter = interpreter_class(model_content=data, num_threads=threads)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[output]
        self.batch = int(self._input["shape"][0])
        # A batch dimension of -1 in the signature lets invoke() resize it; a
        # model saved with a fixed one is run an image at a time.
        signature = self._input.get("shape_signature", self._input["shape"])
        self.batchable = len(signature) > 0 and int(signature[0]) == -1

    def _check_entry(self, manifest: ExportManifest, model: ModelFile, allow_unverified: bool) -> str:
        """The variant of this file in `manifest`, its sha256 checked."""
        sha256 = hashlib.sha256(model.data).hexdigest()
        variant, entry = model_entry(manifest, self.path, sha256)
        if not entry.sha256:
            if not allow_unverified:
                raise ModelError(f"{self.path}: its manifest entry has no sha256, so the file cannot be "
                                 "checked; re-run `noodle export`, or pass --no-verify to run it unchecked")
            print(f"warning: {self.path}: not verified (its manifest entry has no sha256); "
                  "answers from an altered file would be wrong", file=sys.stderr)
        elif entry.sha256 != sha256:
            raise ModelError(f"{self.path}: sha256 differs from its manifest; the file was altered "
                             "or belongs to another export; copy both from the same export")
        return variant

    def _check_shapes(self, model: ModelFile) -> None:
        """One image input of the described size; one output whose width fits the labels."""
        source = self.described_by
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ModelError(f"{self.path}: {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                             "noodle runs image classifiers with one of each, written by `noodle export`")
        shape = model.inputs[0].shape
        expected = (self.size[0], self.size[1], 3)
        if tuple(shape[1:]) != expected:
            raise ModelError(f"{self.path}: model input {tuple(shape[1:])} but {source} says {expected}; "
                             "the model and manifest come from different exports")
        out = tuple(model.outputs[0].shape)
        if len(out) != 2 or out[1] < 1:
            raise ModelError(f"{self.path}: model output {out}, not one row of class scores per image "
                             "(batch, classes); noodle runs image classifiers, as `noodle export` writes")
        units = out[1]
        wanted = 2 if units == 1 else units
        if len(self.labels) != wanted:
            kind = "a 1-unit sigmoid needs 2" if units == 1 else f"a {units}-unit softmax needs {units}"
            raise ModelError(f"{self.path}: {len(self.labels)} labels in its {source}, but {kind}; "
                             "the labels and the model come from different exports: copy both from one")

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
        try:
            self._resize(len(pixels))
            self.interpreter.set_tensor(self._input["index"], self._quantize(pixels))
            self.interpreter.invoke()
        except RuntimeError as exc:  # a model that loads but cannot run: damaged, or another runtime's
            raise ModelError(f"{self.path}: {self.runtime} cannot run it ({first_line(exc)}); "
                             "re-export it with `noodle export`") from None
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
        """(n, classes) probabilities; a sigmoid output becomes two columns, logits become probabilities."""
        outs = [self.invoke(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        out = np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)
        return widen(self._as_probabilities(out))

    def _as_probabilities(self, out: np.ndarray) -> np.ndarray:
        """Scores that are not probabilities are logits: softmax (sigmoid for one unit), said once."""
        if self.scores == "probabilities" and len(out):
            why = _not_probabilities(out)
            if why is not None:
                self.scores = "logits"
                applied = "sigmoid" if out.shape[1] == 1 else "softmax"
                print(f"warning: {escape_name(str(self.path))}: its outputs are not probabilities ({why}); "
                      f"read as logits, {applied} applied", file=sys.stderr)
        if self.scores == "probabilities":
            return out
        if out.shape[1] == 1:
            with np.errstate(over="ignore"):  # exp of a large logit: inf, so 0 or 1, as it should
                return (1 / (1 + np.exp(-out.astype(np.float64)))).astype(np.float32)
        shifted = np.exp(out.astype(np.float64) - out.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)

    def top_k(self, probs: np.ndarray, k: int = 1) -> list[list[tuple[str, float]]]:
        order = ranked(probs, k)
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]
