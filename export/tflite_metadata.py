"""The standard TFLite Metadata in every exported .tflite: MediaPipe, the Task Library and apps load it.

What a file carries, beside noodle's own JSON entry (export/metadata.py), which stays:
- a buffer named by the flatbuffer's `TFLITE_METADATA` entry: a ModelMetadata flatbuffer
  (file identifier "M001", MediaPipe's mediapipe/tasks/metadata/metadata_schema.fbs) with the
  model's name, description, version and the licence of its weights;
- the input's ImageProperties (RGB, the model's side) and NormalizationOptions for what the
  file really takes: raw 0-255 RGB, which the model normalizes inside itself, so mean 0 and
  std 1 (a uint8 input is fed the pixel bytes as they are); an integer input's stats give the
  pixel range its quantization stands for, as the schema's Stats are read;
- the output's labels, labels.txt, a TENSOR_AXIS_LABELS associated file, packed as the schema
  says: a zip (stored, not deflated) appended after the flatbuffer.

Every fact is read from the file itself (input side, types, quantization) or from the
manifest `noodle train` recorded from the model it built (labels, output kind, the
normalization its first layer does; train.models.preprocessing), never from a constant.

The writer: the generated schema module, vendored from MediaPipe (export/
metadata_schema_py_generated.py, Apache-2.0), and the `flatbuffers` runtime TensorFlow already
pulls (pinned in pyproject.toml to the major release that module was generated for). Not
tflite-support's writers: they have wheels for Python <= 3.11, and noodle exports on 3.10-3.13.
Not MediaPipe's writers: they need MediaPipe's C library, and it brings opencv-contrib-python and
sounddevice into the exporter's environment, where opencv-python-headless already is; its
writer, MediaPipe's and the Task Library's ImageClassifier are run on the result in the tests
(tests/test_standard_metadata.py), each in an environment of its own.
"""
from __future__ import annotations

import io
import zipfile

from edge.escape import escape_name
from edge.tflite_file import ModelError, read_model

# The flatbuffer `metadata` entry the clients look for, and the metadata's file identifier.
METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
# Every field written here is in schema 1.0.0: the schema's history (1.0.1 to 1.5.0) adds only
# what noodle does not write. The clients refuse a file whose version is above what they parse.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
AUTHOR = "noodle"
# Integer tensors' value ranges, to state the pixel range an integer input stands for.
INTEGER_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
PIXELS = (0.0, 255.0)


def normalization_text(preprocessing: dict) -> str:
    """What the model does to its pixels, as the manifest records it (train.models.preprocessing)."""
    norm = preprocessing.get("normalization")
    if isinstance(norm, dict) and {"mean", "std"} <= set(norm):
        return f"the model normalizes them itself: (x - {norm['mean']:g}) / {norm['std']:g}"
    return "the model normalizes them itself"


def labels_text(labels: list[str], output: str) -> list[str]:
    """The lines of labels.txt: one per output unit, escaped (a line break would shift every label)."""
    # A sigmoid has one unit: the probability of the second class; the first is 1 minus it.
    chosen = labels[1:] if output == "sigmoid" else labels
    return [escape_name(label, "utf-8") for label in chosen]


def weights_license(described) -> str:
    """The licence of the weights, from the architecture table and the --weights the run trained with."""
    from train.config import ARCHITECTURES

    arch = ARCHITECTURES.get(getattr(described, "arch", None) or (getattr(described, "source", None) or {})
                             .get("arch"))
    if arch is None:
        return "unknown: a model noodle train did not build; its maker's licence applies"
    return arch.weights_license((getattr(described, "training", None) or {}).get("weights", arch.weights))


def model_metadata(tflite: bytes, variant: str, described) -> bytes:
    """The ModelMetadata flatbuffer for `tflite`, described by a run or export manifest."""
    import flatbuffers

    from export import metadata_schema_py_generated as fb

    model = read_model(tflite, "the converted model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError("the converted model: noodle describes models with one input and one output")
    tensor_in, tensor_out = model.inputs[0], model.outputs[0]
    if len(tensor_in.shape) != 4 or tensor_in.shape[3] != 3:
        raise ModelError(f"the converted model: input {list(tensor_in.shape)} is not "
                         "(batch, height, width, 3)")
    height, width = tensor_in.shape[1:3]
    labels = labels_text(described.labels, described.output)
    prep = described.preprocessing.to_dict()

    meta = fb.ModelMetadataT()
    meta.name = f"noodle {described_arch(described)} image classifier ({variant})"
    meta.description = (f"Identifies which of {len(described.labels)} classes an RGB photo shows "
                        f"(labels.txt). Made by noodle export; the {variant} variant.")
    meta.version = f"{variant}, weights sha256 {model.weights_sha256()[:16]}"
    meta.author = AUTHOR
    meta.license = weights_license(described)
    meta.minParserVersion = MIN_PARSER_VERSION

    graph = fb.SubGraphMetadataT()
    graph.inputTensorMetadata = [_image_tensor(fb, tensor_in, width, height, prep)]
    graph.outputTensorMetadata = [_scores_tensor(fb, tensor_out, described, labels)]
    meta.subgraphMetadata = [graph]
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), IDENTIFIER)
    return bytes(builder.Output())


def _image_tensor(fb, tensor_in, width: int, height: int, prep: dict):
    """The input's metadata: an RGB image of raw 0-255 pixels, normalized inside the model."""
    image = fb.TensorMetadataT()
    image.name = "image"
    image.description = (f"An RGB photo, {width}x{height}, pixel values 0-255 as they are "
                         f"({tensor_in.dtype}); {normalization_text(prep)}.")
    image.content = fb.ContentT()
    image.content.contentPropertiesType = fb.ContentProperties.ImageProperties
    image.content.contentProperties = fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = fb.ColorSpaceType.RGB
    image.content.contentProperties.defaultSize = fb.ImageSizeT()
    image.content.contentProperties.defaultSize.width = width
    image.content.contentProperties.defaultSize.height = height
    unit = fb.ProcessUnitT()
    unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    unit.options = fb.NormalizationOptionsT()
    # Raw pixels in: the normalization the clients apply outside the model is none.
    unit.options.mean, unit.options.std = [0.0], [1.0]
    image.processUnits = [unit]
    image.stats = _stats(tensor_in, PIXELS)

    return image


def _scores_tensor(fb, tensor_out, described, labels: list[str]):
    """The output's metadata: the class probabilities, with labels.txt as their axis labels."""
    scores = fb.TensorMetadataT()
    scores.name = "probability"
    if described.output == "sigmoid":
        scores.description = (f"The probability of {labels[0]} (labels.txt); "
                              f"{escape_name(described.labels[0], 'utf-8')} is 1 minus it.")
    else:
        scores.description = "The probability of each class, in the order of labels.txt."
    scores.content = fb.ContentT()
    scores.content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = fb.FeaturePropertiesT()
    scores.stats = _stats(tensor_out, (0.0, 1.0))
    label_file = fb.AssociatedFileT()
    label_file.name = LABELS_FILE
    label_file.description = "The class names, one a line, in the order of the model's output."
    label_file.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [label_file]
    return scores


def described_arch(described) -> str:
    # A run manifest names its architecture; an export manifest, the source it came from.
    arch = getattr(described, "arch", None) or (getattr(described, "source", None) or {}).get("arch")
    return escape_name(str(arch or "unknown"), "utf-8")


def _stats(tensor, real: tuple[float, float]):
    """A tensor's Stats: the real values it holds (an integer tensor's, through its quantization)."""
    from export import metadata_schema_py_generated as fb

    stats = fb.StatsT()
    if tensor.dtype in INTEGER_RANGES and tensor.scale:
        low, high = INTEGER_RANGES[tensor.dtype]
        scale, zero = tensor.scale[0], tensor.zero_point[0]
        stats.min, stats.max = [(low - zero) * scale], [(high - zero) * scale]
    else:
        stats.min, stats.max = [real[0]], [real[1]]
    return stats


def write(tflite: bytes, variant: str, described) -> bytes:
    """`tflite` with the standard metadata and labels.txt (replacing any it had).

    The flatbuffer is read and re-serialized through TensorFlow's own schema module,
    as export/metadata.py does; the labels' zip follows it. Checked before it is
    returned: the metadata and labels read back, and the graph and weights are the
    ones that came in (the same weights_sha256).
    """
    from export.metadata import with_entry

    before = read_model(tflite, "the converted model").weights_sha256()
    document = model_metadata(tflite, variant, described)
    out = io.BytesIO(bytes(with_entry(tflite, METADATA_NAME, document)))
    # Appended as the schema says: zipfile, opened to append to bytes that are not a zip,
    # writes the archive after them, as Google's MetadataPopulator does.
    labels = "".join(f"{line}\n" for line in labels_text(described.labels, described.output))
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as packed:
        packed.writestr(LABELS_FILE, labels.encode("utf-8"))
    written = out.getvalue()
    check = read_model(written, "the model with standard metadata")
    if (check.metadata_bytes(METADATA_NAME) != document or check.weights_sha256() != before
            or packed_files(written).get(LABELS_FILE) != labels.encode("utf-8")):
        raise ModelError("the model with standard metadata: it did not read back as written; report it")
    return written


def packed_files(tflite: bytes) -> dict[str, bytes]:
    """The associated files packed after the flatbuffer (name -> bytes); {} when none."""
    try:
        with zipfile.ZipFile(io.BytesIO(tflite)) as packed:
            return {name: packed.read(name) for name in packed.namelist()}
    except zipfile.BadZipFile:
        return {}


def read(tflite: bytes) -> dict:
    """The standard metadata of a file as plain values, for checks and tests: what the clients see."""
    from export import metadata_schema_py_generated as fb

    raw = read_model(tflite, "the model").metadata_bytes(METADATA_NAME)
    if raw is None:
        return {}
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(raw, 0))
    graph = meta.subgraphMetadata[0]
    image, scores = graph.inputTensorMetadata[0], graph.outputTensorMetadata[0]
    props = image.content.contentProperties
    norm = image.processUnits[0].options
    files = {f.name.decode(): f.type for f in scores.associatedFiles or []}
    packed = packed_files(tflite)
    label_name = next((name for name, kind in files.items()
                       if kind == fb.AssociatedFileType.TENSOR_AXIS_LABELS), None)
    def text(value: bytes | None) -> str | None:  # another writer may leave any string out
        return None if value is None else value.decode("utf-8", "replace")

    size = props.defaultSize
    return {
        "name": text(meta.name), "description": text(meta.description),
        "version": text(meta.version), "license": text(meta.license),
        "min_parser_version": text(meta.minParserVersion),
        "color_space": props.colorSpace, "size": (size.height, size.width) if size else None,
        "mean": list(norm.mean), "std": list(norm.std),
        "input_description": text(image.description),
        "input_range": (list(image.stats.min), list(image.stats.max)),
        "labels": packed.get(label_name, b"").decode("utf-8").splitlines() if label_name else None,
    }
