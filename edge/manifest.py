"""The manifest: the one source of truth that travels with a model.

Class names, input size, preprocessing and (after export) each model file with
its sha256 and quantization live here, written by `noodle train` and
`noodle export`, read by every later stage and by the device. Files are
written whole by edge.atomic; where they go in a run folder is the host's
business (train.rundir).

The schema is written once, below, as dataclasses: `RunManifest` (what
`noodle train` writes), `ExportManifest` with one `ModelEntry` per model
file, and `EmbeddedMetadata` (what each .tflite carries about itself). Each
`from_dict` checks types, ranges and required keys and reports every
violation as one line naming the field; `to_dict` writes the dataclass's
fields in their order, leaving out the optional ones that are None. Keys a
reader does not know are ignored, so a newer writer's additions do not break
an older reader of the same SCHEMA.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from edge import json_check as want
from edge.errors import NoodleError
from edge.json_check import Fields, shown

MANIFEST_NAME = "manifest.json"
FORMAT = "noodle"
# Bump when a reader of the previous layout would misread the new one.
SCHEMA = 1


# What the device can feed a model: RGB images.
CHANNELS = 3
OUTPUT_KINDS = ("sigmoid", "softmax")
# The kinds of manifest and the command that writes each, for the fix in messages.
WRITERS = {"model": "noodle train", "export": "noodle export"}


class ManifestError(NoodleError, ValueError):
    """A manifest that is missing, unreadable, malformed or from another version of noodle."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Schema:
    """`from_dict` for every part of the schema: checked, or ManifestError with a line per problem."""

    # Which manifest this is ("model", "export"), for the fix in messages; parts have none.
    kind: ClassVar[str | None] = None
    # Optional fields written even when None (a reader tells "not yet" from "left out").
    written_when_none: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST_NAME):
        problems: list[str] = []
        if not isinstance(data, dict):
            problems.append(f"expected an object, got {shown(data)}")
            result = None
        else:
            result = cls._read(Fields(data, "", problems))
        if problems:
            writer = WRITERS.get(cls.kind, "noodle export")
            raise ManifestError("\n".join(f"{where}: {p}; re-run `{writer}` to write it again"
                                          for p in problems))
        return result

    def to_dict(self) -> dict:
        """The fields in their order, the header first in a whole document; None left out unless kept."""
        out = _header(self.kind) if self.kind else {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None or field.name in self.written_when_none:
                out[field.name] = _plain(value)
        return out


def _plain(value):
    """A field's value as JSON data: parts of the schema as their dicts, tuples as lists."""
    if isinstance(value, _Schema):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _common(f: Fields) -> dict:
    """The fields every manifest shares, checked against each other."""
    labels = f.at("labels", want.class_names, default=[])
    output = f.at("output", want.one_of(*OUTPUT_KINDS))
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
    def _read(cls, f: Fields) -> InputSpec:
        value_range = f.at("range", want.a_list, required=False)
        if value_range is not None and (len(value_range) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)):
            f.problems.append(f"{f.prefix}range: expected [low, high], got {json.dumps(value_range)}")
        return cls(f.at("height", want.positive), f.at("width", want.positive),
                   f.at("channels", want.one_of(CHANNELS)), f.at("dtype", want.text, required=False),
                   tuple(value_range) if value_range is not None else None)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), as decode and the interpreter take it."""
        return self.height, self.width


@dataclass
class Preprocessing(_Schema):
    """How pixels are made (edge.preprocess.PREPROCESSING); name and version identify it."""

    name: str
    version: int
    details: dict

    @classmethod
    def _read(cls, f: Fields) -> Preprocessing:
        return cls(f.at("name", want.text), f.at("version", want.positive),
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
    def _read(cls, f: Fields) -> TensorSpec:
        return cls(f.at("dtype", want.text), f.at("shape", want.shape), f.at("scale", want.number),
                   f.at("zero_point", want.any_int))


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
    def _read(cls, f: Fields) -> ModelEntry:
        # A missing or empty hash is read as None, so loading can refuse it with the fix.
        sha = f.obj.get("sha256")
        optional = {key: f.at(key, check, required=False) for key, check in (
            ("calibration", want.an_object), ("compatibility", want.an_object), ("made_by", want.an_object),
            ("float_layers", want.a_list))}
        return cls(f.at("file", want.file_name), f.at("sha256", want.sha256, required=False) if sha else None,
                   f.at("bytes", want.count), f.child("input", TensorSpec), f.child("output", TensorSpec),
                   f.at("fully_integer", want.flag), **optional)

# A run manifest's training record, in the order `noodle train` writes it.
RECORD = {"training": want.an_object, "data": want.an_object, "identity": want.an_object,
          "skipped": want.a_list, "metrics": want.an_object, "files": want.an_object}


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
    def _read(cls, f: Fields) -> RunManifest:
        _check_header(f, cls.kind)
        record = {"seed": f.at("seed", want.any_int, required=False)}
        for key, check in RECORD.items():
            record[key] = f.at(key, check, required=False)
        return cls(**_common(f), arch=f.at("arch", want.text), params=f.at("params", want.count), **record)


@dataclass
class ExportManifest(_Schema):
    """RUN/export/manifest.json, written by `noodle export`; a bundle ships it with one model.

    failed is None in a bundle's copy, which leaves it out; validation is None
    until validation has finished.
    """

    kind = "export"
    written_when_none = ("saved_model", "validation")
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
    def _read(cls, f: Fields) -> ExportManifest:
        _check_header(f, cls.kind)
        common = _common(f)
        source = f.at("source", want.an_object)
        if source is not None:
            Fields(source, "source.", f.problems).at("sha256", want.sha256)
        validation = f.at("validation", want.an_object, required=False)
        if validation is not None:
            Fields(validation, "validation.", f.problems).at("passed", want.flag)
        failed = f.at("failed", want.an_object, required=False)
        for name, reason in (failed or {}).items():
            if not isinstance(reason, str):
                f.problems.append(f"failed.{name}: expected a string, got {shown(reason)}")
        return cls(**common, source=source, converter=f.at("converter", want.an_object),
                   models=f.children("models", ModelEntry),
                   saved_model=f.at("saved_model", want.text, required=False),
                   failed=failed, validation=validation)

    def entry(self, variant: str) -> ModelEntry | None:
        return self.models.get(variant)


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
    def _read(cls, f: Fields) -> EmbeddedMetadata:
        _check_header(f, cls.kind)
        common = _common(f)
        quant = f.at("quantization", want.an_object, default={})
        q = Fields(quant, "quantization.", f.problems)
        tensors = {side: q.child(side, TensorSpec) for side in ("input", "output")}
        return cls(variant=f.at("variant", want.text), **common, quantization=tensors,
                   weights_sha256=f.at("weights_sha256", want.sha256))


def _header(kind: str) -> dict:
    """The first keys of every document noodle writes: what it is and which schema."""
    return {"format": FORMAT, "schema": SCHEMA, "kind": kind}


def _check_header(f: Fields, kind: str) -> None:
    for key, value in _header(kind).items():
        f.at(key, want.one_of(value))


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
            f"{path}: manifest schema {shown(manifest.get('schema'))} is from another version of noodle "
            f"(this one reads {SCHEMA}); re-run `noodle train`/`noodle export` with this version"
        )
    if manifest.get("kind") not in MANIFESTS:
        raise ManifestError(f"{path}: kind: expected {' or '.join(map(json.dumps, MANIFESTS))}, got "
                            f"{shown(manifest.get('kind'))}; re-run the stage that wrote it")
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

