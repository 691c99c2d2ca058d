"""The manifest: the one source of truth that travels with a model.

Class names, input size, preprocessing and (after export) each model file with
its sha256 and quantization live here, written by `noodle train` and
`noodle export`, read by every later stage and by the device. Also the atomic
file writing every stage uses, so no artifact is ever half-written.

The schema is written once, below, as dataclasses: `RunManifest` (what
`noodle train` writes), `ExportManifest` with one `ModelEntry` per model
file, and `EmbeddedMetadata` (what each .tflite carries about itself). Each
`from_dict` checks types, ranges and required keys and reports every
violation as one line naming the field; `to_dict` writes the same layout the
stages write. Keys a reader does not know are ignored, so a newer writer's
additions do not break an older reader of the same SCHEMA.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.errors import NoodleError

try:
    import fcntl
except ImportError:  # Windows: temporary files are not locked, so none is taken for stale
    fcntl = None

MANIFEST_NAME = "manifest.json"
FORMAT = "noodle"
# Bump when a reader of the previous layout would misread the new one.
SCHEMA = 1


# What the device can feed a model: RGB images.
CHANNELS = 3
OUTPUT_KINDS = ("sigmoid", "softmax")
# The kinds of manifest and the command that writes each, for the fix in messages.
WRITERS = {"model": "noodle train", "export": "noodle export"}


@dataclass(frozen=True)
class Reports:
    """compare's files for one set of photos (RunDir.reports)."""

    folder: Path
    json = property(lambda self: self.folder / "report.json")
    md = property(lambda self: self.folder / "report.md")
    png = property(lambda self: self.folder / "report.png")
    predictions = property(lambda self: self.folder / "predictions.csv")
    confusion = property(lambda self: self.folder / "confusion.png")
    disagreements = property(lambda self: self.folder / "disagreements.png")


@dataclass(frozen=True)
class RunDir:
    """Every path of a run folder, named once: what `noodle train` and `noodle export` write.

        RUN/  model.keras manifest.json history.csv curves.png metrics.json tensorboard/
              .backup/ (resume state)  .cache/ (memory-mapped pixels)
        RUN/export/  <variant>.tflite manifest.json validation.{json,npz} saved_model/
                     report.{md,json,png} predictions.csv confusion.png disagreements.png
                     diagnosis.{md,json}
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # written by `noodle train`
    model = property(lambda self: self.root / "model.keras")
    manifest = property(lambda self: self.root / MANIFEST_NAME)
    history = property(lambda self: self.root / "history.csv")
    curves = property(lambda self: self.root / "curves.png")
    metrics = property(lambda self: self.root / "metrics.json")
    tensorboard = property(lambda self: self.root / "tensorboard")
    backup = property(lambda self: self.root / ".backup")
    cache = property(lambda self: self.root / ".cache")
    # written by `noodle export` and `noodle compare`
    export = property(lambda self: self.root / "export")
    export_manifest = property(lambda self: self.export / MANIFEST_NAME)
    validation = property(lambda self: self.export / "validation.json")
    # Validation's probabilities per photo, which compare reuses on the same photos and files.
    validation_scores = property(lambda self: self.export / "validation.npz")
    saved_model = property(lambda self: self.export / "saved_model")
    # compare's report of the training data's own test split (`reports` names another set's)
    report_json = property(lambda self: self.reports().json)
    report_md = property(lambda self: self.reports().md)
    report_png = property(lambda self: self.reports().png)
    predictions = property(lambda self: self.reports().predictions)
    confusion = property(lambda self: self.reports().confusion)
    disagreements = property(lambda self: self.reports().disagreements)
    diagnosis_json = property(lambda self: self.export / "diagnosis.json")
    diagnosis_md = property(lambda self: self.export / "diagnosis.md")

    def tflite(self, variant: str) -> Path:
        return self.export / f"{variant}.tflite"

    def reports(self, test: str | os.PathLike | None = None) -> Reports:
        """Where compare writes its report of one set of photos, so that each set keeps its own.

        export/ for the training data's test split; export/test-<name>-<8 hex of
        its full path>/ for a labelled set given with --test.
        """
        if test is None:
            return Reports(self.export)
        path = Path(os.path.abspath(test))
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:40] or "test"
        return Reports(self.export / f"test-{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}")

    def __str__(self) -> str:
        return str(self.root)


class ManifestError(NoodleError, ValueError):
    """A manifest that is missing, unreadable, malformed or from another version of noodle."""


class OutputError(NoodleError, OSError):
    """An artifact that cannot be written: a file in the way, a full disk. One line, exit 2."""


# A full disk, or the user's quota: the same fix.
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _in_the_way(folder: Path) -> Path:
    """The nearest of `folder` and its parents that exists and is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return folder


def make_folder(folder: str | os.PathLike) -> Path:
    """mkdir -p, or OutputError naming the file in the way (or why not)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{_in_the_way(folder)}: a file is where a folder should be; move it away, "
                          "or write somewhere else (--out)") from None
    except OSError as exc:
        raise OutputError(f"{folder}: cannot make the folder ({exc.strerror or exc}); "
                          "give a folder you may write to") from None
    return folder


def _stale(dest: Path, suffix: str) -> None:
    """Remove temporary files of `dest` that no writer holds (left by a killed one).

    A writer holds an exclusive lock on its temporary file while it writes, so
    a file whose lock can be taken is nobody's.
    """
    if fcntl is None:
        return
    import glob

    for path in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp{glob.escape(suffix)}"):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except OSError:  # held: another writer's, still being written
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only on success.

    A killed or failed writer leaves at most a hidden `.tmp` file, never a
    half-written file under the final name, and the next write of `dest`
    removes what a killed one left. `suffix` keeps an extension that a writer
    insists on (Keras wants `.keras`). A file where the folder should be, or a
    full disk, is an OutputError naming the path.
    """
    dest = Path(dest)
    make_folder(dest.parent)
    if dest.is_dir() and not dest.is_symlink():
        raise OutputError(f"{dest}: a folder is where this file should be written; move it away")
    _stale(dest, suffix)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    except OSError as exc:
        raise _output_error(dest, exc) from None
    tmp_path = Path(tmp)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # ours until it is renamed or removed: see _stale
        # mkstemp makes the file private (0600); artifacts get the usual umask-based
        # mode so they can be copied to a Pi and read by another user.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except OSError as exc:
        if isinstance(exc, NoodleError) or exc.errno not in DISK_FULL:
            raise
        raise _output_error(dest, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


def _output_error(dest: Path, exc: OSError) -> OSError:
    if exc.errno in DISK_FULL:
        return OutputError(f"{dest}: cannot write it (No space left on device); free some space "
                           "and run it again (nothing half-written was left)")
    return exc


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike, obj: object) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ checking fields

class _Wrong(Exception):
    """A value of the wrong type or range; str() says what was expected."""


def _shown(value) -> str:
    """A value as the JSON it was read from, short: "abc", 3, null, a list."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(low: int = 0, what: str = "a non-negative integer") -> Callable:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _Wrong(what)
        return value
    return check


_positive = _int(1, "a positive integer")
_count = _int(0)


def _any_int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Wrong("an integer")
    return value


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise _Wrong("a non-negative number")
    return float(value)


def _text(value):
    if not isinstance(value, str) or not value:
        raise _Wrong("a non-empty string")
    return value


def _file_name(value):
    """A model file's name: a plain name inside the export folder, never a path out of it."""
    if (not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value
            or not value.isprintable()):
        raise _Wrong("a plain file name inside the export folder (no folder, no '..', no control "
                     "characters)")
    return value


def _flag(value):
    if not isinstance(value, bool):
        raise _Wrong("true or false")
    return value


def _object(value):
    if not isinstance(value, dict):
        raise _Wrong("an object")
    return value


def _list(value):
    if not isinstance(value, list):
        raise _Wrong("a list")
    return value


def _one_of(*choices) -> Callable:
    def check(value):
        if value not in choices:
            raise _Wrong(" or ".join(json.dumps(c) for c in choices))
        return value
    return check


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _sha256(value):
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _Wrong("64 lowercase hex digits")
    return value


def _labels(value):
    if not isinstance(value, list) or len(value) < 2:
        raise _Wrong("a list of at least 2 class names")
    if not all(isinstance(v, str) and v for v in value):
        raise _Wrong("class names as non-empty strings")
    if len(set(value)) != len(value):
        raise _Wrong("distinct class names")
    return list(value)


def _shape(value):
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise _Wrong("a list of non-negative integers")
    return list(value)


class _Fields:
    """One JSON object being read; every problem becomes a line naming its field."""

    def __init__(self, obj, prefix: str, problems: list[str]):
        self.obj, self.prefix, self.problems = obj, prefix, problems

    def at(self, key: str, check: Callable = lambda v: v, required: bool = True, default=None):
        if key not in self.obj:
            if required:
                self.problems.append(f"{self.prefix}{key}: missing")
            return default
        value = self.obj[key]
        if value is None and not required:
            return default
        try:
            return check(value)
        except _Wrong as exc:
            self.problems.append(f"{self.prefix}{key}: expected {exc}, got {_shown(value)}")
            return default

    def child(self, key: str, cls, required: bool = True):
        """A nested object read by `cls._read`, or None when absent or wrong."""
        value = self.at(key, _object, required)
        return None if value is None else cls._read(_Fields(value, f"{self.prefix}{key}.", self.problems))

    def children(self, key: str, cls) -> dict:
        value = self.at(key, _object, default={})
        out = {}
        for name, item in value.items():
            if not isinstance(item, dict):
                self.problems.append(f"{self.prefix}{key}.{name}: expected an object, got {_shown(item)}")
                continue
            out[name] = cls._read(_Fields(item, f"{self.prefix}{key}.{name}.", self.problems))
        return out


class _Schema:
    """`from_dict` for every part of the schema: checked, or ManifestError with a line per problem."""

    # Which manifest this is ("model", "export"), for the fix in messages; parts have none.
    kind: str | None = None

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST_NAME):
        problems: list[str] = []
        if not isinstance(data, dict):
            problems.append(f"expected an object, got {_shown(data)}")
            result = None
        else:
            result = cls._read(_Fields(data, "", problems))
        if problems:
            writer = WRITERS.get(cls.kind, "noodle export")
            raise ManifestError("\n".join(f"{where}: {p}; re-run `{writer}` to write it again"
                                          for p in problems))
        return result


def _common(f: _Fields) -> dict:
    """The fields every manifest shares, checked against each other."""
    labels = f.at("labels", _labels, default=[])
    output = f.at("output", _one_of(*OUTPUT_KINDS))
    if output == "sigmoid" and labels and len(labels) != 2:
        f.problems.append(f"{f.prefix}labels: {len(labels)} labels, but a sigmoid output has 2 classes")
    return {"labels": labels, "input": f.child("input", InputSpec), "output": output,
            "preprocessing": f.child("preprocessing", Preprocessing)}


# ------------------------------------------------------------------ the schema

@dataclass
class InputSpec(_Schema):
    """The images a model takes. Training also records the dtype and range Keras sees."""

    height: int
    width: int
    channels: int = CHANNELS
    dtype: str | None = None
    range: tuple[int, int] | None = None

    @classmethod
    def _read(cls, f: _Fields) -> InputSpec:
        value_range = f.at("range", _list, required=False)
        if value_range is not None and (len(value_range) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)):
            f.problems.append(f"{f.prefix}range: expected [low, high], got {json.dumps(value_range)}")
        return cls(f.at("height", _positive), f.at("width", _positive),
                   f.at("channels", _one_of(CHANNELS)), f.at("dtype", _text, required=False),
                   tuple(value_range) if value_range is not None else None)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), as decode and the interpreter take it."""
        return self.height, self.width

    def to_dict(self) -> dict:
        out = {"height": self.height, "width": self.width, "channels": self.channels}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.range is not None:
            out["range"] = list(self.range)
        return out


@dataclass
class Preprocessing(_Schema):
    """How pixels are made (edge.preprocess.PREPROCESSING); name and version identify it."""

    name: str
    version: int
    details: dict

    @classmethod
    def _read(cls, f: _Fields) -> Preprocessing:
        return cls(f.at("name", _text), f.at("version", _positive),
                   {k: v for k, v in f.obj.items() if k not in ("name", "version")})

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, **self.details}


@dataclass
class TensorSpec(_Schema):
    """A model file's input or output tensor as the interpreter reports it."""

    dtype: str
    shape: list[int]
    scale: float
    zero_point: int

    @classmethod
    def _read(cls, f: _Fields) -> TensorSpec:
        return cls(f.at("dtype", _text), f.at("shape", _shape), f.at("scale", _number),
                   f.at("zero_point", _any_int))

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "scale": self.scale,
                "zero_point": self.zero_point}


@dataclass
class ModelEntry(_Schema):
    """One exported .tflite. sha256 is None only in a hand-made manifest: see edge.runtime."""

    file: str
    sha256: str | None
    bytes: int
    input: TensorSpec
    output: TensorSpec
    fully_integer: bool
    calibration: dict | None = None
    compatibility: dict | None = None
    # The extra variants' own record: which quantizer made int8-litert, which
    # layers int8-mixed keeps float.
    made_by: dict | None = None
    float_layers: list | None = None

    @classmethod
    def _read(cls, f: _Fields) -> ModelEntry:
        # A missing or empty hash is read as None, so loading can refuse it with the fix.
        sha = f.obj.get("sha256")
        return cls(f.at("file", _file_name), f.at("sha256", _sha256, required=False) if sha else None,
                   f.at("bytes", _count), f.child("input", TensorSpec), f.child("output", TensorSpec),
                   f.at("fully_integer", _flag), f.at("calibration", _object, required=False),
                   f.at("compatibility", _object, required=False), f.at("made_by", _object, required=False),
                   f.at("float_layers", _list, required=False))

    def to_dict(self) -> dict:
        out = {"file": self.file}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        out.update(bytes=self.bytes, input=self.input.to_dict(), output=self.output.to_dict(),
                   fully_integer=self.fully_integer)
        if self.calibration is not None:
            out["calibration"] = self.calibration
        for key in ("compatibility", "made_by", "float_layers"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# A run manifest's training record, in the order `noodle train` writes it.
RECORD = {"training": _object, "data": _object, "identity": _object, "skipped": _list, "metrics": _object,
          "files": _object}


@dataclass
class RunManifest(_Schema):
    """RUN/manifest.json, written by `noodle train` beside model.keras.

    What export needs is required. The training record (seed, training, data,
    identity, skipped, metrics, files) is checked when present but may be absent: a run
    folder made by hand around a Keras model trained elsewhere has none.
    """

    kind = "model"
    labels: list[str]
    input: InputSpec
    output: str
    preprocessing: Preprocessing
    arch: str
    params: int
    seed: int | None = None
    training: dict | None = None
    data: dict | None = None
    identity: dict | None = None
    skipped: list | None = None
    metrics: dict | None = None
    files: dict | None = None

    @classmethod
    def _read(cls, f: _Fields) -> RunManifest:
        _check_header(f, cls.kind)
        record = {"seed": f.at("seed", _any_int, required=False)}
        for key, check in RECORD.items():
            record[key] = f.at(key, check, required=False)
        return cls(**_common(f), arch=f.at("arch", _text), params=f.at("params", _count), **record)

    def to_dict(self) -> dict:
        out = {**_header(self.kind), "labels": self.labels,
               "input": self.input.to_dict(), "output": self.output,
               "preprocessing": self.preprocessing.to_dict(), "arch": self.arch, "params": self.params}
        for key in ("seed", *RECORD):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class ExportManifest(_Schema):
    """RUN/export/manifest.json, written by `noodle export`; a bundle ships it with one model.

    failed is None in a bundle's copy, which leaves it out; validation is None
    until validation has finished.
    """

    kind = "export"
    labels: list[str]
    input: InputSpec
    output: str
    preprocessing: Preprocessing
    source: dict
    converter: dict
    models: dict[str, ModelEntry]
    saved_model: str | None
    failed: dict[str, str] | None = None
    validation: dict | None = None

    @classmethod
    def _read(cls, f: _Fields) -> ExportManifest:
        _check_header(f, cls.kind)
        common = _common(f)
        source = f.at("source", _object)
        if source is not None:
            _Fields(source, "source.", f.problems).at("sha256", _sha256)
        validation = f.at("validation", _object, required=False)
        if validation is not None:
            _Fields(validation, "validation.", f.problems).at("passed", _flag)
        failed = f.at("failed", _object, required=False)
        for name, reason in (failed or {}).items():
            if not isinstance(reason, str):
                f.problems.append(f"failed.{name}: expected a string, got {_shown(reason)}")
        return cls(**common, source=source, converter=f.at("converter", _object),
                   models=f.children("models", ModelEntry), saved_model=f.at("saved_model", _text, False),
                   failed=failed, validation=validation)

    def entry(self, variant: str) -> ModelEntry | None:
        return self.models.get(variant)

    def to_dict(self) -> dict:
        out = {**_header(self.kind), "labels": self.labels,
               "input": self.input.to_dict(), "output": self.output,
               "preprocessing": self.preprocessing.to_dict(), "source": self.source,
               "converter": self.converter, "models": {v: e.to_dict() for v, e in self.models.items()},
               "saved_model": self.saved_model}
        if self.failed is not None:
            out["failed"] = self.failed
        out["validation"] = self.validation
        return out


@dataclass
class EmbeddedMetadata(_Schema):
    """What a .tflite says about itself, in its flatbuffer `metadata` (export/metadata.py).

    Enough to classify with the file alone: labels, input size, output kind,
    preprocessing, the variant, its input/output quantization, and the sha256
    of its weights, which is how a file with no manifest beside it is checked.
    """

    kind = "tflite"
    variant: str
    labels: list[str]
    input: InputSpec
    output: str
    preprocessing: Preprocessing
    quantization: dict[str, TensorSpec]
    weights_sha256: str

    @classmethod
    def _read(cls, f: _Fields) -> EmbeddedMetadata:
        _check_header(f, cls.kind)
        common = _common(f)
        quant = f.at("quantization", _object, default={})
        q = _Fields(quant, "quantization.", f.problems)
        tensors = {side: q.child(side, TensorSpec) for side in ("input", "output")}
        return cls(variant=f.at("variant", _text), **common, quantization=tensors,
                   weights_sha256=f.at("weights_sha256", _sha256))

    def to_dict(self) -> dict:
        return {**_header(self.kind), "variant": self.variant,
                "labels": self.labels, "input": self.input.to_dict(), "output": self.output,
                "preprocessing": self.preprocessing.to_dict(),
                "quantization": {k: v.to_dict() for k, v in self.quantization.items()},
                "weights_sha256": self.weights_sha256}


def _header(kind: str) -> dict:
    """The first keys of every document noodle writes: what it is and which schema."""
    return {"format": FORMAT, "schema": SCHEMA, "kind": kind}


def _check_header(f: _Fields, kind: str) -> None:
    for key, value in _header(kind).items():
        f.at(key, _one_of(value))


# ------------------------------------------------------------------ reading

MANIFESTS = {cls.kind: cls for cls in (RunManifest, ExportManifest)}


def _load(path: str | os.PathLike) -> tuple[Path, dict]:
    """The JSON of a manifest file (or the one inside a folder), its format and schema checked."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path}: no manifest; it is written by `noodle train` and `noodle export`, "
            "keep it beside the model"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc}); re-run the stage that wrote it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a noodle manifest; re-run the stage that wrote it")
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(
            f"{path}: manifest schema {_shown(manifest.get('schema'))} is from another version of noodle "
            f"(this one reads {SCHEMA}); re-run `noodle train`/`noodle export` with this version"
        )
    if manifest.get("kind") not in MANIFESTS:
        raise ManifestError(f"{path}: kind: expected {' or '.join(map(json.dumps, MANIFESTS))}, got "
                            f"{_shown(manifest.get('kind'))}; re-run the stage that wrote it")
    return path, manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """A manifest file (or the one inside a folder) as its JSON document, checked against its schema.

    For what rewrites the document itself (the tests' hand-made manifests); readers use
    `load_run` and `load_export`, which return the typed manifest.
    """
    path, manifest = _load(path)
    MANIFESTS[manifest["kind"]].from_dict(manifest, str(path))
    return manifest


def _typed(path: str | os.PathLike, cls):
    path, manifest = _load(path)
    if manifest["kind"] != cls.kind:
        raise ManifestError(f"{path}: kind {manifest['kind']!r} where {cls.kind!r} was expected; "
                            f"pass the folder `{WRITERS[cls.kind]}` wrote")
    return cls.from_dict(manifest, str(path))


def load_run(path: str | os.PathLike) -> RunManifest:
    """RUN/manifest.json (or the file named) as a checked RunManifest."""
    return _typed(path, RunManifest)


def load_export(path: str | os.PathLike) -> ExportManifest:
    """RUN/export/manifest.json (or the file named) as a checked ExportManifest."""
    return _typed(path, ExportManifest)

