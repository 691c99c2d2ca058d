"""Read and check a .tflite file in pure Python, before any interpreter sees it.

The interpreters trust the file: tflite-runtime 2.14 reads offsets straight
out of the flatbuffer, so a truncated or altered model can crash the process
(exit 139, nothing printed) or run and print wrong answers. `read_model`
walks the whole structure first, the way the flatbuffers verifier does (every
table, vector and string inside the file, aligned), and checks what the
interpreter indexes with (buffer, opcode and tensor indices, shapes against
constant data), so a damaged file is one line and exit 2 instead.

It also reads what noodle needs from the file: the input and output tensors,
and the `metadata` entries, where `noodle export` embeds the model's labels,
input size and preprocessing (export/metadata.py writes them) and the
standard TFLite Metadata (export/tflite_metadata.py). Other tools add and
rewrite metadata too (Google's metadata writers re-serialize the whole
flatbuffer and append a zip of associated files), so what noodle checks a
file by, `weights_sha256`, is read from the graph and the weights alone, in a
form that does not depend on where a writer put them: see `ModelFile`.

Field slots follow TensorFlow Lite's schema.fbs (schema version 3); slot n
of a table is at vtable offset 4 + 2n. Standard library only.
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import NamedTuple

from edge.errors import NoodleError

# Bytes 4-8 of every TFLite flatbuffer.
TFLITE_IDENTIFIER = b"TFL3"
# Model.version the interpreters accept.
SCHEMA_VERSION = 3
# The metadata entry noodle writes (a JSON document in the buffer it names).
METADATA_NAME = "noodle"
# A tensor larger than this many elements is damage, not a model for a Pi.
MAX_ELEMENTS = 1 << 31

# TensorType -> (name, bytes per element; 0 where data is packed or not fixed-size).
TENSOR_TYPES = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", 0), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 0),
    14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 0), 18: ("bfloat16", 2),
    19: ("int2", 0), 20: ("uint4", 0),
}
# BuiltinOptions union members that hold vectors or strings: type -> (slot, element bytes or
# "str"). Every other options table holds scalars only, which the table check covers.
OPTIONS_OFFSETS = {
    3: ((1, 4), (2, 4)),  # ConcatEmbeddingsOptions
    17: ((0, 4),),  # ReshapeOptions.new_shape
    30: ((0, 4),),  # SqueezeOptions.squeeze_dims
    111: ((0, "str"), (1, "str")),  # VarHandleOptions
    115: ((0, 4),),  # BucketizeOptions.boundaries
}
# Options naming other subgraphs by index: type -> their slots (If, While, CallOnce).
OPTIONS_SUBGRAPHS = {92: (0, 1), 93: (0, 1), 103: (0,)}


class ModelError(NoodleError):
    """A model file that cannot be used: not TFLite, damaged, mismatched, or altered."""


class _Damage(Exception):
    """What is wrong inside the file; read_model turns it into one ModelError line."""


class TensorInfo(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]


class ModelFile:
    """A checked .tflite: its bytes, main-graph inputs and outputs, and metadata entries.

    A plain class, like _Table: dataclasses cost a millisecond each at import,
    and the device's cold start pays for every one.
    """

    def __init__(self, data: bytes, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 metadata: dict[str, int], buffers: list[tuple[int, int]], graph: list | None = None,
                 metadata_buffers: frozenset[int] = frozenset()):
        self.data, self.inputs, self.outputs = data, inputs, outputs
        self.metadata = metadata  # name -> buffer index
        self.buffers = buffers  # (start, end) of each buffer's bytes in `data`
        # The graph as values (operator codes, tensors, operators, signatures), never as offsets.
        self.graph = graph or []
        # Every buffer some metadata entry (or the old metadata_buffer list) names.
        self.metadata_buffers = metadata_buffers or frozenset(metadata.values())

    def metadata_bytes(self, name: str = METADATA_NAME) -> bytes | None:
        if name not in self.metadata:
            return None
        start, end = self.buffers[self.metadata[name]]
        return self.data[start:end]

    def weights_sha256(self) -> str:
        """sha256 of what the model computes: its graph, then its weight buffers in order.

        Every metadata buffer is left out (noodle's, TFLITE_METADATA, the
        converter's), and so is whatever follows the flatbuffer (the zip of
        associated files a metadata writer appends). The graph is hashed as
        the values the reader took out of it, not as bytes, because a writer
        that re-serializes the model moves every table. So the digest is the
        same before and after any metadata is written, and noodle's metadata
        can carry it: what lets a model with no manifest beside it be checked,
        even after another tool re-labelled it.
        """
        digest, data = hashlib.sha256(), memoryview(self.data)
        _feed(digest, self.graph)
        for i, (start, end) in enumerate(self.buffers):
            if i not in self.metadata_buffers:
                digest.update(len(data[start:end]).to_bytes(8, "little"))
                digest.update(data[start:end])
        return digest.hexdigest()

    def legacy_weights_sha256(self) -> str:
        """The digest files exported before the graph was hashed carry: every buffer but noodle's."""
        skip = self.metadata.get(METADATA_NAME)
        digest, data = hashlib.sha256(), memoryview(self.data)
        for i, (start, end) in enumerate(self.buffers):
            if i != skip:
                digest.update(data[start:end])
        return digest.hexdigest()


def _feed(digest, value) -> None:
    """`value` into `digest`, unambiguously: bytes as their length and themselves, the rest as text."""
    if isinstance(value, (bytes, bytearray)):
        digest.update(b"b%d:" % len(value))
        digest.update(value)
    elif isinstance(value, (tuple, list)):
        digest.update(b"(%d:" % len(value))
        for item in value:
            _feed(digest, item)
    else:
        digest.update(repr(value).encode() + b";")


class _Table:
    """One flatbuffer table, its vtable checked to lie inside the file."""

    __slots__ = ("buf", "pos", "vtable", "vsize", "tsize")

    def __init__(self, buf: bytes, pos: int, what: str):
        size = len(buf)
        if pos % 4 or pos + 4 > size:
            raise _Damage(f"{what}: table outside the file")
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        if vtable % 2 or vtable < 0 or vtable + 4 > size:
            raise _Damage(f"{what}: vtable outside the file")
        vsize, tsize = struct.unpack_from("<HH", buf, vtable)
        if vsize < 4 or vsize % 2 or vtable + vsize > size or tsize < 4 or pos + tsize > size:
            raise _Damage(f"{what}: table runs past the end of the file")
        self.buf, self.pos, self.vtable, self.vsize, self.tsize = buf, pos, vtable, vsize, tsize

    def _field(self, slot: int, width: int, what: str) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self.vsize:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
        if not offset:
            return None
        if offset + width > self.tsize or (self.pos + offset) % width:
            raise _Damage(f"{what}: field outside its table")
        return self.pos + offset

    def scalar(self, slot: int, fmt: str, default, what: str):
        at = self._field(slot, struct.calcsize(fmt), what)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _target(self, slot: int, what: str) -> int | None:
        at = self._field(slot, 4, what)
        if at is None:
            return None
        target = at + struct.unpack_from("<I", self.buf, at)[0]
        if target + 4 > len(self.buf):
            raise _Damage(f"{what}: points outside the file")
        return target

    def table(self, slot: int, what: str) -> _Table | None:
        target = self._target(slot, what)
        return None if target is None else _Table(self.buf, target, what)

    def span(self, slot: int, width: int, what: str) -> tuple[int, int]:
        """(start of the elements, count) of a vector, checked to lie inside the file."""
        target = self._target(slot, what)
        if target is None:
            return 0, 0
        if target % 4:
            raise _Damage(f"{what}: misaligned vector")
        count = struct.unpack_from("<I", self.buf, target)[0]
        if target + 4 + count * width > len(self.buf):
            raise _Damage(f"{what}: {count} entries run past the end of the file")
        return target + 4, count

    def numbers(self, slot: int, fmt: str, what: str) -> tuple:
        start, count = self.span(slot, struct.calcsize(fmt), what)
        return struct.unpack_from(f"<{count}{fmt}", self.buf, start) if count else ()

    def string(self, slot: int, what: str) -> str:
        start, count = self.span(slot, 1, what)
        if start and (start + count >= len(self.buf) or self.buf[start + count]):
            raise _Damage(f"{what}: string without its terminator")
        return self.buf[start : start + count].decode("utf-8", "replace")

    def values(self, offsets: dict, what: str) -> tuple:
        """Every field present as (slot, value), for a table whose layout the reader does not spell out.

        `offsets`: the slots holding a vector or string (slot -> element bytes or
        "str"), read as their contents. Every other field is a scalar: its bytes
        up to the next field, read as one unsigned little-endian number. Writers
        pad a scalar with zeros after it, which that number does not see, so two
        writers that lay the table out differently give the same values.
        """
        present = []
        for slot in range((self.vsize - 4) // 2):
            offset = struct.unpack_from("<H", self.buf, self.vtable + 4 + 2 * slot)[0]
            if offset:
                if offset < 4 or offset >= self.tsize:
                    raise _Damage(f"{what}: field outside its table")
                present.append((offset, slot))
        present.sort()
        out = []
        ends = [offset for offset, _ in present[1:]] + [self.tsize]
        for (offset, slot), end in zip(present, ends[: len(present)], strict=True):
            width = offsets.get(slot)
            if width == "str":
                out.append((slot, self.string(slot, what)))
            elif width is not None:
                start, count = self.span(slot, width, what)
                out.append((slot, bytes(self.buf[start : start + count * width])))
            else:
                out.append((slot, int.from_bytes(self.buf[self.pos + offset : self.pos + end], "little")))
        return tuple(out)

    def tables(self, slot: int, what: str) -> list[_Table]:
        start, count = self.span(slot, 4, what)
        out = []
        for i in range(count):
            at = start + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0], f"{what}[{i}]"))
        return out


def read_model(data: bytes, name: str) -> ModelFile:
    """Check `data` is a whole, consistent TFLite model; raise ModelError naming `name` if not."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{name}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier); "
                         "pass a .tflite written by `noodle export`")
    try:
        return _read(data)
    except _Damage as exc:
        raise ModelError(f"{name}: damaged model file ({exc}); copy it again from the export "
                         "that wrote it, or re-run `noodle export`") from None


def _read(buf: bytes) -> ModelFile:
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    version = model.scalar(0, "I", 0, "model.version")
    if version != SCHEMA_VERSION:
        raise _Damage(f"model.version {version}, expected {SCHEMA_VERSION}")
    buffers = _buffers(buf, model.tables(4, "buffers"))
    opcodes = model.tables(1, "operator_codes")
    graph: list = [("version", version)]
    for i, code in enumerate(opcodes):
        what = f"operator_codes[{i}]"
        old, new = code.scalar(0, "b", 0, what), code.scalar(3, "i", 0, what)
        if min(old, new) < 0:
            raise _Damage(f"{what}: negative builtin code")
        # Codes past 127 live in the new field alone; the old one says 127 for them.
        graph.append(("opcode", max(old, new), code.string(1, f"{what}.custom_code"),
                      code.scalar(2, "i", 1, what)))
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise _Damage("no subgraphs")
    model.string(3, "description")
    graphs = [_subgraph(sub, f"subgraphs[{i}]", buffers, len(opcodes), len(subgraphs), graph)
              for i, sub in enumerate(subgraphs)]
    described = {_index(i, len(buffers), "metadata_buffer") for i in model.numbers(5, "i", "metadata_buffer")}
    metadata = {}
    for i, entry in enumerate(model.tables(6, "metadata")):
        key = entry.string(0, f"metadata[{i}].name")
        index = entry.scalar(1, "I", 0, f"metadata[{i}]")
        metadata[key] = _index(index, len(buffers), f"metadata[{i}].buffer")
        described.add(metadata[key])
    for i, sig in enumerate(model.tables(7, "signature_defs")):
        what = f"signature_defs[{i}]"
        subgraph = _index(sig.scalar(4, "I", 0, what), len(graphs), f"{what}.subgraph_index")
        pairs = []
        for slot in (0, 1):
            for j, pair in enumerate(sig.tables(slot, f"{what}.tensors")):
                pairs.append((slot, pair.string(0, f"{what}.tensors[{j}].name"),
                              _index(pair.scalar(1, "I", 0, what), len(graphs[subgraph]),
                                     f"{what}.tensors[{j}].tensor_index")))
        graph.append(("signature", sig.string(2, f"{what}.signature_key"), subgraph, tuple(pairs)))
    main = graphs[0]
    sub = subgraphs[0]
    return ModelFile(
        data=buf,
        inputs=[main[i] for i in sub.numbers(1, "i", "inputs")],
        outputs=[main[i] for i in sub.numbers(2, "i", "outputs")],
        metadata=metadata,
        buffers=buffers,
        graph=graph,
        metadata_buffers=frozenset(described),
    )


def _index(i: int, count: int, what: str, optional: bool = False) -> int:
    if not (0 <= i < count or (optional and i == -1)):
        raise _Damage(f"{what} {i} out of range (0-{count - 1})")
    return i


def _buffers(buf: bytes, tables: list[_Table]) -> list[tuple[int, int]]:
    spans = []
    for i, b in enumerate(tables):
        what = f"buffers[{i}]"
        start, count = b.span(0, 1, what)
        # Models over 2 GB keep data after the flatbuffer: offset/size from the file's start.
        offset, size = b.scalar(1, "Q", 0, what), b.scalar(2, "Q", 0, what)
        if offset > 1:
            if count or offset + size > len(buf):
                raise _Damage(f"{what}: data at offset {offset} runs past the end of the file")
            start, count = offset, size
        spans.append((start, start + count))
    return spans


def _subgraph(sub: _Table, what: str, buffers: list[tuple[int, int]], opcodes: int,
              graphs: int, graph: list) -> list[TensorInfo]:
    tensors = [_tensor(t, f"{what}.tensors[{i}]", buffers, graph)
               for i, t in enumerate(sub.tables(0, f"{what}.tensors"))]
    n = len(tensors)
    ends = []
    for slot, part in ((1, "inputs"), (2, "outputs")):
        ends.append(sub.numbers(slot, "i", f"{what}.{part}"))
        for i in ends[-1]:
            _index(i, n, f"{what}.{part}: tensor")
    graph.append(("subgraph", sub.string(4, f"{what}.name"), *ends))
    for k, op in enumerate(sub.tables(3, f"{what}.operators")):
        where = f"{what}.operators[{k}]"
        _index(op.scalar(0, "I", 0, where), opcodes, f"{where}.opcode_index")
        for slot, part in ((1, "inputs"), (2, "outputs"), (8, "intermediates")):
            for i in op.numbers(slot, "i", f"{where}.{part}"):
                _index(i, n, f"{where}.{part}: tensor", optional=True)
        op.span(7, 1, f"{where}.mutating_variable_inputs")
        options = op.table(4, f"{where}.builtin_options")
        kind = op.scalar(3, "B", 0, where) if options else 0
        start, count = op.span(5, 1, f"{where}.custom_options")
        graph.append(("op", op.scalar(0, "I", 0, where), op.numbers(1, "i", where), op.numbers(2, "i", where),
                      op.numbers(8, "i", where), kind,
                      options.values(dict(OPTIONS_OFFSETS.get(kind, ())), f"{where}.builtin_options")
                      if options else (), bytes(op.buf[start : start + count])))
        for slot, width in OPTIONS_OFFSETS.get(kind, ()):
            if width == "str":
                options.string(slot, f"{where}.builtin_options")
            else:
                options.span(slot, width, f"{where}.builtin_options")
        for slot in OPTIONS_SUBGRAPHS.get(kind, ()):
            _index(options.scalar(slot, "i", 0, where), graphs, f"{where}.builtin_options: subgraph")
        if op.table(12, f"{where}.builtin_options_2") is not None:
            raise _Damage(f"{where}: StableHLO options, which noodle never writes")
        offset, size = op.scalar(9, "Q", 0, where), op.scalar(10, "Q", 0, where)
        if offset > 1 and offset + size > len(sub.buf):
            raise _Damage(f"{where}: custom options past the end of the file")
    return tensors


def _tensor(t: _Table, what: str, buffers: list[tuple[int, int]], graph: list) -> TensorInfo:
    type_code = t.scalar(1, "b", 0, what)
    if type_code not in TENSOR_TYPES:
        raise _Damage(f"{what}: unknown type {type_code}")
    dtype, width = TENSOR_TYPES[type_code]
    shape = t.numbers(0, "i", f"{what}.shape")
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise _Damage(f"{what}: impossible shape {list(shape)}")
    signature = t.numbers(7, "i", f"{what}.shape_signature")
    if signature and (len(signature) != len(shape) or any(d < -1 for d in signature)):
        raise _Damage(f"{what}: shape_signature {list(signature)} does not fit shape {list(shape)}")
    name = t.string(3, f"{what}.name")
    buffer = _index(t.scalar(2, "I", 0, what), len(buffers), f"{what}.buffer")
    start, end = buffers[buffer]
    if t.table(6, f"{what}.sparsity") is not None:
        raise _Damage(f"{what}: sparse tensor, which noodle never writes")
    for i, variant in enumerate(t.tables(9, f"{what}.variant_tensors")):
        variant.numbers(0, "i", f"{what}.variant_tensors[{i}].shape")
    if end > start and width and end - start != math.prod(shape) * width:
        raise _Damage(f"{what}: {end - start} bytes of constant data for shape {list(shape)} of {dtype}")
    scale: tuple = ()
    zero_point: tuple = ()
    axis = 0
    quant = t.table(4, f"{what}.quantization")
    if quant is not None:
        q = f"{what}.quantization"
        quant.numbers(0, "f", f"{q}.min")
        quant.numbers(1, "f", f"{q}.max")
        scale, zero_point = quant.numbers(2, "f", f"{q}.scale"), quant.numbers(3, "q", f"{q}.zero_point")
        details = quant.table(5, f"{q}.details")
        if details is not None:
            # CustomQuantization holds bytes; BlockwiseQuantization names tensors, and noodle never writes it.
            if quant.scalar(4, "B", 0, q) != 1:
                raise _Damage(f"{q}: quantization details noodle never writes")
            details.span(0, 1, f"{q}.details")
        axis = quant.scalar(6, "i", 0, q)
        if scale and zero_point and len(scale) != len(zero_point):
            raise _Damage(f"{q}: {len(scale)} scales but {len(zero_point)} zero points")
        if len(scale) > 1 and not (0 <= axis < len(shape) and shape[axis] == len(scale)):
            raise _Damage(f"{q}: {len(scale)} per-channel scales for shape {list(shape)} axis {axis}")
    # Quantization as its bytes: a per-channel tensor's thousands of floats would cost the
    # device's cold start tens of milliseconds as text.
    quantized = tuple(bytes(t.buf[a : a + n * w]) for a, n, w in (
        (*quant.span(2, 4, what), 4), (*quant.span(3, 8, what), 8))) if quant is not None else ()
    graph.append(("tensor", name, type_code, shape, signature, buffer, quantized, axis,
                  t.scalar(5, "B", 0, what)))
    return TensorInfo(name, dtype, tuple(shape), tuple(scale), tuple(zero_point))
