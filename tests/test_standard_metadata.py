"""The standard TFLite Metadata every export writes (export/tflite_metadata.py), read by real clients.

- What a file says: RGB at the model's side, mean 0 and std 1 (the model takes raw pixels and
  normalizes inside), an integer input's quantized range, labels.txt packed after the flatbuffer.
- noodle's check survives other tools' metadata: weights_sha256 covers the graph and the
  weights only, so a file re-labelled by Google's own writer still classifies in noodle, with
  noodle's labels, and one changed weight byte is still refused.
- Every fact comes from the model that was built: the manifest, the embedded JSON and the
  standard metadata say the same, for every architecture of train.config.ARCHITECTURES.
- MediaPipe Tasks' and the Task Library's ImageClassifier load every variant of a fresh lite0
  export and name the same top-1 as noodle on 20 sample photos, scores within one output
  quantization step for int8 and 1e-4 for float. Each client runs in its own environment
  (`make client-envs`, which `make test` makes); where one could not be installed, its tests
  skip with the reason. The photos are given to every client at the model's input size, as
  noodle's own preprocessing made them, so no client resizes or crops them its own way.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.manifest import InputSpec, Preprocessing, RunManifest, load_export
from edge.preprocess import load_image
from edge.runtime import Classifier
from edge.tflite_file import METADATA_NAME, ModelError, read_model
from export import tflite_metadata
from train.config import ARCHITECTURES
from train.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SCRIPT = Path(__file__).resolve().parent / "clients" / "classify_with.py"
CLIENTS = {"mediapipe": ROOT / ".venv-mediapipe", "tasklib": ROOT / ".venv-tasklib"}
PHOTOS = 20
FLOAT_TOLERANCE = 1e-4
# dynamic quantizes its activations to int8 as it runs, with each TFLite release's own hybrid
# kernels, so its scores differ between releases: on a make export of the sample data noodle's
# two runtimes (tflite-runtime 2.14, ai-edge-litert) differed by up to 5.4e-3, and on this
# test's 96 px model the Task Library's TFLite from ai-edge-litert by 0.041 on an uncertain
# photo (MediaPipe's: 5e-7). The top-1 must still agree.
DYNAMIC_TOLERANCE = 0.05


def client_python(name: str) -> Path:
    """The client's environment's python, or a skip saying why there is none."""
    venv = CLIENTS[name]
    if (venv / ".failed").is_file():
        pytest.skip(f"{name}: {(venv / '.failed').read_text().strip()}")
    if not (venv / ".installed").is_file():
        pytest.skip(f"{name}: no {venv.name}: `make client-envs` makes it (`make test` does)")
    return venv / "bin" / "python"


def run_client(name: str, *args: str) -> dict:
    done = subprocess.run([str(client_python(name)), str(CLIENT_SCRIPT), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- a small model, converted

def tiny_model(classes: int, sigmoid: bool = False):
    import keras
    from keras import layers

    inputs = keras.Input((32, 32, 3), name="pixels")
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0)(inputs)
    x = layers.Conv2D(4, 3, strides=2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    units, act = (1, "sigmoid") if sigmoid else (classes, "softmax")
    return keras.Model(inputs, layers.Dense(units, activation=act)(x), name="tiny")


def described(model, labels: list[str], output: str) -> RunManifest:
    from train.models import preprocessing

    return RunManifest(labels=labels, input=InputSpec(32, 32), output=output,
                       preprocessing=Preprocessing.from_dict(preprocessing(model)), arch="tiny",
                       params=int(model.count_params()))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """float32 and int8 files of a three-class model, written as `noodle export` writes them."""
    from export.convert import convert, write_model

    model = tiny_model(3)
    manifest = described(model, ["apple", "banana", "cherry"], "softmax")
    run = RunDir(tmp_path_factory.mktemp("tiny"))
    pixels = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    pixels[0], pixels[1] = 0, 255  # the whole pixel range, so the uint8 input is the pixels as they are
    raw = {v: convert(model, v, pixels if v == "int8" else None) for v in ("float32", "int8")}
    for variant, blob in raw.items():
        write_model(run, variant, blob, manifest)
    return run, manifest, raw


def test_every_file_carries_the_standard_metadata(tiny_export):
    run, manifest, _ = tiny_export
    for variant in ("float32", "int8"):
        data = run.tflite(variant).read_bytes()
        meta = tflite_metadata.read(data)
        assert meta["labels"] == manifest.labels
        assert (meta["color_space"], meta["size"]) == (1, (32, 32))  # RGB, height x width
        # Raw 0-255 pixels in: nothing to normalize outside the model.
        assert (meta["mean"], meta["std"]) == ([0.0], [1.0])
        assert meta["min_parser_version"] == "1.0.0"
        assert "(x - 127) / 128" in meta["input_description"]
        assert meta["license"] == tflite_metadata.weights_license(manifest)
        # noodle's own entry stays beside it.
        assert read_model(data, variant).metadata_bytes() is not None
    int8 = read_model(run.tflite("int8").read_bytes(), "int8").inputs[0]
    low = (0 - int8.zero_point[0]) * int8.scale[0]
    high = (255 - int8.zero_point[0]) * int8.scale[0]
    assert tflite_metadata.read(run.tflite("int8").read_bytes())["input_range"] == ([low], [high])
    assert int8.dtype == "uint8" and (low, high) == pytest.approx((0, 255), abs=1e-6)


def test_a_sigmoid_names_the_class_its_one_unit_scores(tmp_path):
    from export.convert import convert

    model = tiny_model(2, sigmoid=True)
    manifest = described(model, ["cat", "dog"], "sigmoid")
    written = tflite_metadata.write(convert(model, "float32"), "float32", manifest)
    meta = tflite_metadata.read(written)
    assert meta["labels"] == ["dog"]


def test_the_digest_covers_the_graph_and_weights_only(tiny_export):
    run, _, raw = tiny_export
    for variant, blob in raw.items():
        written = run.tflite(variant).read_bytes()
        model = read_model(written, variant)
        # What the converter wrote and what was exported: the same graph and weights.
        assert model.weights_sha256() == read_model(blob, variant).weights_sha256()
        assert tflite_metadata.packed_files(written) == {"labels.txt": b"apple\nbanana\ncherry\n"}
        # Another metadata buffer's bytes changed: not the model.
        start, end = model.buffers[model.metadata[tflite_metadata.METADATA_NAME]]
        relabelled = bytearray(written)
        relabelled[start + (end - start) // 2] ^= 0xFF
        assert read_model(bytes(relabelled), variant).weights_sha256() == model.weights_sha256()
        # One weight byte changed: another model.
        start, end = max((span for i, span in enumerate(model.buffers) if i not in model.metadata_buffers),
                         key=lambda span: span[1] - span[0])
        altered = bytearray(written)
        altered[(start + end) // 2] ^= 0x01
        assert read_model(bytes(altered), variant).weights_sha256() != model.weights_sha256()


def test_a_changed_operator_option_is_another_model(tiny_export):
    """The graph counts, not only the weights: the convolution's stride read as a value."""
    run, _, _ = tiny_export
    data = run.tflite("float32").read_bytes()
    model = read_model(data, "float32")
    ops = [entry for entry in model.graph if entry[0] == "op" and entry[6]]
    assert ops, "the tiny model has an operator with options"
    # Rewrite the first options' first scalar field in place, through its recorded position.
    import struct

    from edge import tflite_file

    root = tflite_file._Table(data, struct.unpack_from("<I", data, 0)[0], "model")
    sub = root.tables(2, "subgraphs")[0]
    op = next(o for o in sub.tables(3, "ops") if o.table(4, "options") is not None)
    options = op.table(4, "options")
    slot, value = options.values({}, "options")[0]
    at = options._field(slot, 1, "options")
    changed = bytearray(data)
    changed[at] ^= 0x01
    assert read_model(bytes(changed), "float32").weights_sha256() != model.weights_sha256()


def test_a_lone_file_with_one_weight_byte_changed_is_refused(tiny_export, tmp_path):
    run, _, _ = tiny_export
    data = run.tflite("int8").read_bytes()
    model = read_model(data, "int8")
    start, end = max((span for i, span in enumerate(model.buffers) if i not in model.metadata_buffers),
                     key=lambda span: span[1] - span[0])
    lone = tmp_path / "int8.tflite"
    lone.write_bytes(data)
    assert Classifier(lone).labels == ["apple", "banana", "cherry"]
    altered = bytearray(data)
    altered[(start + end) // 2] ^= 0x01
    lone.write_bytes(bytes(altered))
    with pytest.raises(ModelError, match="weights differ"):
        Classifier(lone)


def test_a_file_of_the_older_digest_still_loads(tiny_export, tmp_path):
    """Files exported before the digest covered the graph carry the older one; they still run."""
    import json as _json

    from export.metadata import embed

    run, manifest, raw = tiny_export
    blob = embed(raw["float32"], {"variant": "float32", "labels": manifest.labels,
                                  "input": manifest.input.to_dict(), "output": manifest.output,
                                  "preprocessing": manifest.preprocessing.to_dict()})
    model = read_model(blob, "float32")
    document = _json.loads(model.metadata_bytes())
    document["weights_sha256"] = model.legacy_weights_sha256()
    old = embed_document(blob, document)
    lone = tmp_path / "old.tflite"
    lone.write_bytes(old)
    assert Classifier(lone).labels == manifest.labels


def embed_document(blob: bytes, document: dict) -> bytes:
    """`blob` with noodle's entry replaced by `document`, as an older noodle wrote it."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    entry = next(m for m in model.metadata if m.name.decode() == METADATA_NAME)
    model.buffers[entry.buffer].data = np.frombuffer(json.dumps(document).encode(), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_a_run_that_recorded_the_old_constant_is_exported_with_what_its_model_computes(tmp_path):
    """Runs trained before the normalization was read from the model said `Rescaling 1/255` for all."""
    from edge.atomic import write_json
    from edge.preprocess import PREPROCESSING
    from export.convert import export_run

    model = tiny_model(3)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    model.save(run.model)
    old = {**PREPROCESSING, "normalization": "inside the model (Rescaling 1/255)"}
    write_json(run.manifest, RunManifest(labels=["apple", "banana", "cherry"], input=InputSpec(32, 32),
                                         output="softmax", preprocessing=Preprocessing.from_dict(old),
                                         arch="tiny", params=int(model.count_params())).to_dict())
    manifest = export_run(run.root, variants=["float32"])
    norm = manifest.preprocessing.details["normalization"]
    assert (norm["mean"], norm["std"]) == (127.0, 128.0)
    data = run.tflite("float32").read_bytes()
    assert json.loads(read_model(data, "float32").metadata_bytes())["preprocessing"]["normalization"] == norm
    assert "(x - 127) / 128" in tflite_metadata.read(data)["input_description"]


# ---------------------------------------------------------------- every architecture: three records agree

@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_manifest_the_embedded_json_and_the_standard_metadata_agree(arch, tmp_path):
    """Built by the architecture's own builder; the normalization read from it is what it computes."""
    import keras

    from export.convert import convert, write_model
    from train.models import build, normalization, preprocessing

    side = 64 if arch != "lite0" else 96
    labels = ["cat", "dog", "fox"]
    model = build(arch, (side, side, 3), len(labels), "none")
    record = normalization(model)
    # What the model's normalizing layer computes is what the record says.
    pixels = np.array([[[[0.0, 127.0, 255.0]]]], np.float32)
    layer = model
    while isinstance(layer, keras.Model):
        layer = next(sub for sub in layer.layers if not isinstance(sub, keras.layers.InputLayer))
    expected = (pixels - record["mean"]) / record["std"]
    np.testing.assert_allclose(np.asarray(layer(pixels)), expected, rtol=1e-6)
    if arch == "lite0":  # train/lite0.py: (x - 127) / 128, as its ImageNet weights were trained
        assert (record["mean"], record["std"]) == (127.0, 128.0)
    manifest = RunManifest(labels=labels, input=InputSpec(side, side), output="softmax",
                           preprocessing=Preprocessing.from_dict(preprocessing(model)), arch=arch,
                           params=int(model.count_params()), training={"weights": "none"})
    run = RunDir(tmp_path)
    write_model(run, "float32", convert(model, "float32"), manifest)
    data = run.tflite("float32").read_bytes()
    embedded = json.loads(read_model(data, arch).metadata_bytes())
    standard = tflite_metadata.read(data)
    assert embedded["preprocessing"] == manifest.preprocessing.to_dict()
    assert embedded["labels"] == standard["labels"] == manifest.labels
    assert (embedded["input"]["height"], embedded["input"]["width"]) == standard["size"] == (side, side)
    norm = embedded["preprocessing"]["normalization"]
    assert f"(x - {norm['mean']:g}) / {norm['std']:g}" in standard["input_description"]
    assert standard["license"] == ARCHITECTURES[arch].weights_license("none")


# ---------------------------------------------------------------- real clients on a fresh lite0 export

@pytest.fixture(scope="module")
def lite0_export(sample_data, tmp_path_factory):
    """lite0 (the default architecture) trained on the sample data at 96 px, all variants exported."""
    from export.convert import export_run
    from train.fit import TrainConfig, train

    out = tmp_path_factory.mktemp("lite0") / "sample-lite0"
    train(TrainConfig(data=sample_data, out=out, arch="lite0", image_size=96, verbose=0))
    export_run(out)
    return out


@pytest.fixture(scope="module")
def photos(lite0_export, sample_data, tmp_path_factory) -> list[Path]:
    """20 sample test photos, as noodle's preprocessing makes them, saved losslessly at the model's size."""
    size = load_export(RunDir(lite0_export).export).input.size
    found = sorted(p for p in (sample_data / "test").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    step = max(1, len(found) // PHOTOS)
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for i, photo in enumerate(found[::step][:PHOTOS]):
        dest = folder / f"{i:02d}-{photo.parent.name}.png"
        Image.fromarray(load_image(photo, size)).save(dest)
        out.append(dest)
    assert len(out) == PHOTOS
    return out


def noodle_says(model: Path, photos: list[Path]) -> list[tuple[str, dict]]:
    classifier = Classifier(model)
    rows = []
    for photo in photos:
        probs = classifier.probabilities(load_image(photo, classifier.size)[None])[0]
        scores = dict(zip(classifier.labels, map(float, probs), strict=True))
        rows.append((max(scores, key=scores.get), scores))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_real_clients_name_what_noodle_names(client, lite0_export, photos):
    client_python(client)
    export = RunDir(lite0_export).export
    manifest = load_export(export)
    files = {variant: export / entry.file for variant, entry in manifest.models.items()}
    assert set(files) >= {"float32", "float16", "dynamic", "int8"}
    said = run_client(client, client, *map(str, files.values()), "--", *map(str, photos))
    for variant, path in files.items():
        theirs = said[str(path)]
        assert not isinstance(theirs, dict), f"{client} refused {variant}: {theirs}"
        ours = noodle_says(path, photos)
        entry = manifest.models[variant]
        # One step of the output's quantization for an integer output; float: 1e-4.
        tolerance = entry.output.scale if entry.output.dtype in ("uint8", "int8") else FLOAT_TOLERANCE
        if variant == "dynamic":
            tolerance = DYNAMIC_TOLERANCE
        for photo, (label, scores), (their_label, _, their_scores) in zip(photos, ours, theirs, strict=True):
            assert their_label == label, f"{client} {variant} {photo.name}: {their_label} vs {label}"
            for name, score in scores.items():
                assert abs(their_scores[name] - score) <= tolerance + 1e-7, (client, variant, photo, name)


@pytest.mark.slow
def test_metadata_displayer_shows_the_metadata_and_the_labels_file(lite0_export):
    path = RunDir(lite0_export).export / "int8.tflite"
    shown = run_client("tasklib", "display", str(path))
    labels = load_export(RunDir(lite0_export).export).labels
    assert shown["packed"] == ["labels.txt"]
    assert shown["labels"].splitlines() == labels
    output = shown["metadata"]["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    image = shown["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    assert image["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}


@pytest.mark.slow
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_file_relabelled_by_googles_writer_still_classifies_in_noodle(client, lite0_export, photos,
                                                                       tmp_path):
    """Google's image_classifier writer (the client's own) rewrites the metadata; noodle's check holds."""
    export = RunDir(lite0_export).export
    labels = load_export(export).labels
    foreign = tmp_path / "theirs.txt"
    foreign.write_text("".join(f"other-{label}\n" for label in labels))
    for variant in ("float32", "int8"):
        lone = tmp_path / variant
        lone.mkdir()
        relabelled = lone / f"{variant}.tflite"
        done = run_client(client, "relabel", str(export / f"{variant}.tflite"), str(relabelled), str(foreign))
        if "error" in done:
            pytest.skip(f"{client}: Google's writer does not import there ({done['error']})")
        assert tflite_metadata.read(relabelled.read_bytes())["labels"] == [f"other-{x}" for x in labels]
        # No manifest beside it: noodle's embedded entry describes it, with noodle's labels.
        assert noodle_says(relabelled, photos) == noodle_says(export / f"{variant}.tflite", photos)
        assert Classifier(relabelled).labels == labels
        model = read_model(relabelled.read_bytes(), variant)
        start, end = max((span for i, span in enumerate(model.buffers) if i not in model.metadata_buffers),
                         key=lambda span: span[1] - span[0])
        altered = bytearray(relabelled.read_bytes())
        altered[(start + end) // 2] ^= 0x01
        relabelled.write_bytes(bytes(altered))
        with pytest.raises(ModelError, match="weights differ"):
            Classifier(relabelled)
    shutil.rmtree(tmp_path / "float32")


@pytest.mark.slow
def test_mediapipes_raspberry_pi_example_runs_the_int8_model_on_a_clip(lite0_export, photos, tmp_path):
    """Its classify.py, unchanged, on a clip of the 20 photos (tests/clients/run_pi_example.py says how).

    The example mirrors every frame (cv2.flip) before classifying it, so noodle is asked about
    the mirrored photo. The clip is lossless (FFV1) at the model's size: no codec and no resize
    stands between the two.
    """
    import cv2

    python = client_python("mediapipe")
    per_photo = 5
    pixels = [np.asarray(Image.open(p)) for p in photos]
    clip = tmp_path / "clip.avi"
    height, width = pixels[0].shape[:2]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 30, (width, height))
    assert writer.isOpened(), "OpenCV here cannot write an FFV1 clip"
    for rgb in pixels:
        for _ in range(per_photo):
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    model = RunDir(lite0_export).export / "int8.tflite"
    runner = CLIENT_SCRIPT.parent / "run_pi_example.py"
    done = subprocess.run([str(python), str(runner), str(model), str(clip), str(per_photo)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["ended"].startswith("ERROR: Unable to read from webcam")  # the clip's end
    assert len(said["photos"]) == PHOTOS and all(said["photos"]), said
    classifier = Classifier(model)
    probs = classifier.probabilities(np.stack([rgb[:, ::-1] for rgb in pixels]))
    step = load_export(RunDir(lite0_export).export).models["int8"].output.scale
    for (label, score), row in zip(said["photos"], probs, strict=True):
        assert label == classifier.labels[int(np.argmax(row))]
        assert abs(score - float(row.max())) <= step + 1e-7
