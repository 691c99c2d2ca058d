"""Make a .tflite describe itself: noodle's metadata inside the flatbuffer.

A model copied or renamed without its manifest.json still carries its labels,
input size, output kind, preprocessing, variant and input/output
quantization, as JSON in a buffer that an entry named "noodle" of the
flatbuffer's `metadata` list points at. The interpreters ignore metadata they
do not know, so the model computes exactly what it computed before.
edge.runtime reads it back with edge.tflite_file, without TensorFlow.

The JSON also records the sha256 of the model's graph and weights (no
metadata buffer, no file packed after the flatbuffer: edge.tflite_file), which
is how a model with no manifest beside it is checked, even after another tool
rewrote its metadata: see edge.runtime. The standard TFLite Metadata the
clients read is written beside this entry by export/tflite_metadata.py.
TensorFlow is imported inside `embed`.
"""
from __future__ import annotations

import json

from edge.manifest import EmbeddedMetadata, InputSpec, Preprocessing, TensorSpec
from edge.tflite_file import METADATA_NAME, ModelError, TensorInfo, read_model

# What `embed`'s info must hold; the rest of the document is read from the model itself.
INFO_KEYS = ("variant", "labels", "input", "output", "preprocessing")


def metadata_for(tflite: bytes, info: dict) -> EmbeddedMetadata:
    """The metadata `embed` writes for this model: `info` plus what the file itself says."""
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"embed: info lacks {', '.join(missing)}; it needs {', '.join(INFO_KEYS)}")
    model = read_model(tflite, "the converted model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError("the converted model: noodle describes models with one input and one output")
    spec = InputSpec.from_dict(info["input"], "embed info: input")
    document = EmbeddedMetadata(
        variant=info["variant"], labels=info["labels"],
        input=InputSpec(spec.height, spec.width, spec.channels), output=info["output"],
        preprocessing=Preprocessing.from_dict(info["preprocessing"], "embed info: preprocessing"),
        quantization={"input": _tensor(model.inputs[0]), "output": _tensor(model.outputs[0])},
        weights_sha256=model.weights_sha256(),
    ).to_dict()
    # Read back through the schema, so a wrong type in `info` fails here, not on a device.
    return EmbeddedMetadata.from_dict(document, "embed info")


def _tensor(t: TensorInfo) -> TensorSpec:
    # As the interpreter reports it: (0.0, 0) for a float tensor.
    return TensorSpec(t.dtype, list(t.shape), float(t.scale[0]) if t.scale else 0.0,
                      int(t.zero_point[0]) if t.zero_point else 0)


def embed(tflite: bytes, info: dict) -> bytes:
    """`tflite` with noodle's metadata entry written (replaced if it had one).

    info: the export manifest's "labels", "input" ({height, width, channels}),
    "output" ("sigmoid"/"softmax") and "preprocessing", and "variant" (float32,
    int8, ...). Quantization and the weights' sha256 are read from `tflite`.
    """
    document = json.dumps(metadata_for(tflite, info).to_dict(), separators=(",", ":")).encode()
    out = with_entry(tflite, METADATA_NAME, document)
    written = read_model(out, "the model with metadata")
    if written.metadata_bytes() != document:
        raise ModelError("the model with metadata: the embedded document did not read back; report it")
    return out


def with_entry(tflite: bytes, name: str, document: bytes) -> bytearray:
    """`tflite` re-serialized, its metadata entry `name` holding `document` (replaced if it had one).

    Through TensorFlow's own schema module, so every other buffer and table comes out as it went in.
    """
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    entries = [m for m in (model.metadata or []) if m.name.decode() == name]
    if entries:
        buffer = model.buffers[entries[0].buffer]
    else:
        buffer = schema.BufferT()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    buffer.data = np.frombuffer(document, np.uint8)
    return flatbuffer_utils.convert_object_to_bytearray(model)
