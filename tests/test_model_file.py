"""The model file and its manifest: schema checks, labels against the output, hashes,
structural verification, and metadata embedded in the .tflite.

Models come from the session's `exported_run`; `described` is a copy of its
export whose int8 and float32 files carry noodle's embedded metadata (written
here with export.metadata.embed) and whose manifest has their new sha256.
CLI tests run `edge.cli:app` through CliRunner (ai-edge-litert), and the
device environment .venv-edge (tflite-runtime 2.14) in a subprocess.
"""
from __future__ import annotations

import collections
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.atomic import write_json
from edge.cli import app
from edge.manifest import (
    ExportManifest,
    ManifestError,
    RunManifest,
    load_export,
    load_run,
    read_manifest,
    sha256_file,
)
from edge.tflite_file import ModelError, read_model
from tests.device_env import skip_the_tflite_runtime_half, tflite_runtime_missing, tflite_runtime_python

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = {"ai-edge-litert": Path(sys.executable), "tflite-runtime": ROOT / ".venv-edge" / "bin" / "python"}
runner = CliRunner()


def classify(*args):
    return runner.invoke(app, ["classify", *map(str, args)])


def error_lines(result) -> list[str]:
    """stderr's lines, checked to be `error:` lines with no traceback."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    return lines


def runtimes() -> list[str]:
    """Those of PYTHONS that can run here: tflite-runtime 2.14 not on a 3.12+ host (tests.device_env)."""
    return [r for r in PYTHONS if r != "tflite-runtime" or not tflite_runtime_missing()]


def run_edge(runtime: str, *args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # The device environment's python: skipped, saying why, where it has no tflite-runtime.
    python = tflite_runtime_python() if runtime == "tflite-runtime" else PYTHONS[runtime]
    return subprocess.run([str(python), "-m", "edge", "classify", *map(str, args), "--runtime", runtime],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def info_for(manifest: dict, variant: str) -> dict:
    """What export/convert.py passes to embed for one variant."""
    return {"variant": variant, **{k: manifest[k] for k in ("labels", "input", "output", "preprocessing")}}


def relist(manifest: dict, folder: Path, variant: str, path: Path) -> dict:
    """The manifest with `variant` alone, listed as `path` with its current sha256 and size."""
    entry = {**manifest["models"][variant], "file": path.name, "sha256": sha256_file(path),
             "bytes": path.stat().st_size}
    out = {**manifest, "models": {variant: entry}}
    write_json(folder / "manifest.json", out)
    return out


@pytest.fixture(scope="module")
def export(exported_run) -> Path:
    return exported_run / "export"


@pytest.fixture(scope="module")
def photos(sample_data) -> list[Path]:
    return sorted((sample_data / "test").rglob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def described(export, tmp_path_factory) -> Path:
    """A copy of the export whose int8 and float32 carry embedded metadata."""
    from export.metadata import embed

    out = tmp_path_factory.mktemp("described") / "export"
    manifest = read_manifest(export)
    out.mkdir()
    for variant in ("int8", "float32"):
        entry = manifest["models"][variant]
        blob = embed((export / entry["file"]).read_bytes(), info_for(manifest, variant))
        (out / entry["file"]).write_bytes(blob)
        entry.update(sha256=sha256_file(out / entry["file"]), bytes=len(blob))
    manifest["models"] = {v: manifest["models"][v] for v in ("int8", "float32")}
    write_json(out / "manifest.json", manifest)
    return out


@pytest.fixture()
def int8_copy(export, tmp_path) -> tuple[Path, dict]:
    """int8.tflite in a folder of its own, with a manifest listing it alone."""
    model = tmp_path / "int8.tflite"
    shutil.copy(export / "int8.tflite", model)
    return model, relist(read_manifest(export), tmp_path, "int8", model)


# -- D3: the manifest's schema ------------------------------------------------

LABELS_WRONG = "labels: expected a list of at least 2 class names, got"
SCHEMA_CASES = {
    "height missing": (lambda m: m["input"].pop("height"), "input.height: missing"),
    "height abc": (lambda m: m["input"].update(height="abc"),
                   'input.height: expected a positive integer, got "abc"'),
    "input a list": (lambda m: m.update(input=[64, 64, 3]), "input: expected an object, got a list"),
    "models a list": (lambda m: m.update(models=list(m["models"].values())),
                      "models: expected an object, got a list"),
    "labels empty": (lambda m: m.update(labels=[]), f"{LABELS_WRONG} a list"),
    "labels a string": (lambda m: m.update(labels="ab"), f'{LABELS_WRONG} "ab"'),
    "sha256 not hex": (lambda m: m["models"]["int8"].update(sha256="xyz"),
                       'models.int8.sha256: expected 64 lowercase hex digits, got "xyz"'),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_a_bad_manifest_field_is_one_line_naming_it(int8_copy, photos, case):
    model, manifest = int8_copy
    edit, expected = SCHEMA_CASES[case]
    edit(manifest)
    write_json(model.parent / "manifest.json", manifest)
    result = classify(model, photos[0])
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {model.parent / 'manifest.json'}: {expected}; re-run `noodle export`")


def test_every_violation_gets_its_own_line(int8_copy, photos):
    model, manifest = int8_copy
    manifest["input"].update(height="abc", width=0)
    manifest["models"]["int8"]["fully_integer"] = "yes"
    write_json(model.parent / "manifest.json", manifest)
    result = classify(model, photos[0])
    assert result.exit_code == 2
    fields = [line.split(": ")[2] for line in error_lines(result)]
    assert fields == ["input.height", "input.width", "models.int8.fully_integer"]


def test_a_manifest_from_another_schema_says_how_to_fix_it(int8_copy, photos):
    model, manifest = int8_copy
    write_json(model.parent / "manifest.json", {**manifest, "schema": 0})
    result = classify(model, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "schema 0 is from another version" in line and "re-run `noodle train`/`noodle export`" in line


def test_the_dataclasses_write_what_the_stages_write(trained_run, export):
    run = json.loads((trained_run / "manifest.json").read_text())
    assert RunManifest.from_dict(run).to_dict() == run
    exported = json.loads((export / "manifest.json").read_text())
    typed = ExportManifest.from_dict(exported)
    assert typed.to_dict() == {"validation": None, **exported}
    assert load_export(export) == typed and load_run(trained_run).labels == run["labels"]
    with pytest.raises(ManifestError, match="kind 'model' where 'export' was expected"):
        load_export(trained_run)


# -- D4: labels against the output tensor -------------------------------------

def test_labels_must_fit_the_output_tensor(int8_copy, photos):
    model, manifest = int8_copy
    # Three labels called softmax on a 1-unit sigmoid model: only the tensor shows it.
    write_json(model.parent / "manifest.json", {**manifest, "labels": ["a", "b", "c"], "output": "softmax"})
    result = classify(model, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert str(model) in line and "3 labels in its manifest, but a 1-unit sigmoid needs 2" in line
    # Three labels called sigmoid: the manifest contradicts itself.
    write_json(model.parent / "manifest.json", {**manifest, "labels": ["a", "b", "c"]})
    result = classify(model, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "labels: 3 labels, but a sigmoid output has 2 classes" in line


@pytest.mark.slow
def test_a_five_class_softmax_model_runs_alone_and_checks_its_labels(tmp_path, photos):
    """Another class count and head: an untrained 5-unit softmax net, converted and described here."""
    import keras
    import tensorflow as tf

    from edge.preprocess import PREPROCESSING
    from export.convert import quiet_stdout
    from export.metadata import embed

    keras.utils.set_random_seed(0)
    layers = keras.layers
    net = keras.Sequential([keras.Input((32, 32, 3)), layers.Rescaling(1 / 255),
                            layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D(),
                            layers.Dense(5, activation="softmax")])
    with quiet_stdout():
        blob = tf.lite.TFLiteConverter.from_keras_model(net).convert()
    labels = ["ant", "bee", "cat", "dog", "eel"]
    info = {"variant": "float32", "labels": labels, "input": {"height": 32, "width": 32, "channels": 3},
            "output": "softmax", "preprocessing": PREPROCESSING}
    model = tmp_path / "five.tflite"
    model.write_bytes(embed(blob, info))
    rows = {}
    for runtime in runtimes():
        done = run_edge(runtime, model, *photos, "--json", "-k", "5")
        assert done.returncode == 0, done.stderr
        rows[runtime] = [json.loads(line) for line in done.stdout.splitlines()]
        assert all(sorted(t["label"] for t in r["top"]) == labels for r in rows[runtime])
    assert len({tuple(r["label"] for r in labelled) for labelled in rows.values()}) == 1  # the same labels
    model.write_bytes(embed(blob, {**info, "labels": labels[:4]}))
    result = classify(model, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "4 labels in its embedded metadata, but a 5-unit softmax needs 5" in line
    skip_the_tflite_runtime_half("ai-edge-litert's half")


# -- D5: hashes and damaged files ---------------------------------------------

@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_model_without_sha256_needs_no_verify(int8_copy, photos, how):
    model, manifest = int8_copy
    entry = manifest["models"]["int8"]
    if how == "missing":
        del entry["sha256"]
    else:
        entry["sha256"] = ""
    write_json(model.parent / "manifest.json", manifest)
    refused = classify(model, photos[0])
    assert refused.exit_code == 2
    (line,) = error_lines(refused)
    assert str(model) in line and "no sha256" in line and "--no-verify" in line
    allowed = classify(model, photos[0], "--no-verify", "--json")
    assert allowed.exit_code == 0, allowed.stderr
    assert json.loads(allowed.stdout)["label"] in manifest["labels"]
    assert f"warning: {model}: not verified" in allowed.stderr


@pytest.mark.parametrize("runtime", list(PYTHONS))
def test_a_truncated_model_is_one_line_not_a_crash(int8_copy, photos, runtime):
    model, manifest = int8_copy
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    relist(manifest, model.parent, "int8", model)  # its hash recomputed: only the structure is wrong
    done = run_edge(runtime, model, photos[0])
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}: damaged model file"), lines


def test_the_verifier_reads_the_model_and_refuses_damage(export):
    data = (export / "float32.tflite").read_bytes()
    model = read_model(data, "m")
    size = read_manifest(export)["input"]
    assert model.inputs[0].shape == (1, size["height"], size["width"], 3)
    assert model.inputs[0].dtype == "float32" and len(model.outputs) == 1
    # Cut inside the flatbuffer: the labels zip after it (export/tflite_metadata.py) is not the model.
    flatbuffer = data[: data.rindex(b"PK\x03\x04")]
    cases = {"truncated": (flatbuffer[:-100], "outside the file|past the end of the file"),
             "root past the end": ((len(data) + 4).to_bytes(4, "little") + data[4:], "model: table outside")}
    for broken, reason in cases.values():
        with pytest.raises(ModelError, match=rf"^m: damaged model file \(.*({reason}).*\); copy it again"):
            read_model(broken, "m")
    with pytest.raises(ModelError, match="not a TFLite model"):
        read_model(b"GIF89a" + data[6:], "m")


def structural_edits():
    """Edits through TensorFlow's own flatbuffer object API: (what, function of the model object)."""

    def tensor_buffer(m):
        m.subgraphs[0].tensors[1].buffer = len(m.buffers) + 7

    def opcode(m):
        m.subgraphs[0].operators[0].opcodeIndex = len(m.operatorCodes) + 3

    def op_input(m):
        m.subgraphs[0].operators[-1].inputs[0] = len(m.subgraphs[0].tensors) + 1

    def graph_output(m):
        m.subgraphs[0].outputs[0] = 10_000

    def shape(m):
        t = next(t for t in m.subgraphs[0].tensors
                 if m.buffers[t.buffer].data is not None and t.shape is not None and len(t.shape))
        t.shape[0] += 1

    def big_buffer(m):
        m.buffers[-1].offset, m.buffers[-1].size = 1 << 40, 16

    def scales(m):  # per-channel scales for more channels than the tensor has
        from tensorflow.lite.python import schema_py_generated as schema

        t = next(t for t in m.subgraphs[0].tensors if t.shape is not None and len(t.shape))
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale = np.ones(t.shape[0] + 2, np.float32)
        t.quantization.zeroPoint = np.zeros(t.shape[0] + 2, np.int64)

    def version(m):
        m.version = 2

    return {f.__name__: f for f in (tensor_buffer, opcode, op_input, graph_output, shape, big_buffer, scales,
                                    version)}


def test_structural_edits_are_refused_naming_the_field(export):
    from tensorflow.lite.tools import flatbuffer_utils

    expected = {"tensor_buffer": r"tensors\[1\]\.buffer \d+ out of range",
                "opcode": r"operators\[0\]\.opcode_index \d+ out of range",
                "op_input": r"operators\[\d+\]\.inputs: tensor \d+ out of range",
                "graph_output": r"subgraphs\[0\]\.outputs: tensor 10000 out of range",
                "shape": r"bytes of constant data for shape", "big_buffer": r"data at offset \d+ runs past",
                "scales": r"\d+ per-channel scales for shape", "version": r"model.version 2"}
    for variant in ("float32", "int8"):
        blob = bytearray((export / f"{variant}.tflite").read_bytes())
        for name, edit in structural_edits().items():
            model = flatbuffer_utils.read_model_from_bytearray(blob)
            edit(model)
            with pytest.raises(ModelError, match=expected[name]):
                read_model(flatbuffer_utils.convert_object_to_bytearray(model), f"{variant} {name}")


def corrupted_copies(blob: bytes, count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """`count` damaged copies of a model: byte flips anywhere, flips and zeroed spans in its
    structure (outside the weights), truncations, and edits through the flatbuffer object API."""
    from tensorflow.lite.tools import flatbuffer_utils

    weights = [(s, e) for s, e in read_model(blob, "m").buffers if e - s > 64]

    def structure() -> int:
        while True:
            at = rng.randrange(len(blob))
            if not any(s <= at < e for s, e in weights):
                return at

    edits = list(structural_edits().items())
    out = []
    for i in range(count):
        kind = ("flip", "structure flip", "structure zeroed", "truncated", "edit")[i % 5]
        data = bytearray(blob)
        if kind == "flip":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "structure flip":
            for _ in range(rng.randint(1, 4)):
                data[structure()] = rng.randrange(256)
        elif kind == "structure zeroed":
            at, n = structure(), rng.randint(1, 64)
            data[at : at + n] = bytes(len(data[at : at + n]))
        elif kind == "truncated":
            data = data[: rng.randrange(len(data))]
        else:
            name, edit = rng.choice(edits)
            model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
            edit(model)
            data, kind = flatbuffer_utils.convert_object_to_bytearray(model), f"edit {name}"
        out.append((kind, bytes(data)))
    return out


@pytest.mark.slow
def test_corrupted_models_are_refused_or_run_never_crash(described, photos, tmp_path):
    """D5's experiment: damaged copies of int8 and float32, each with its sha256 recomputed
    so only the structural check stands in the way, classified under both runtimes."""
    for runtime in runtimes():
        if not PYTHONS[runtime].is_file():
            pytest.skip(f"no {runtime} environment")
    rng = random.Random(0)
    manifest = read_manifest(described)
    labels = set(manifest["labels"])
    jobs = []
    for variant in ("int8", "float32"):
        blob = (described / f"{variant}.tflite").read_bytes()
        for i, (kind, data) in enumerate(corrupted_copies(blob, 20, rng)):
            folder = tmp_path / f"{variant}-{i}"
            folder.mkdir()
            (folder / f"{variant}.tflite").write_bytes(data)
            relist(manifest, folder, variant, folder / f"{variant}.tflite")
            jobs += [(runtime, folder / f"{variant}.tflite", kind) for runtime in runtimes()]

    def judge(job) -> tuple[str, str, str]:
        runtime, model, kind = job
        done = run_edge(runtime, model, *photos[:2], "--json")
        lines = done.stderr.strip().splitlines()
        if done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {model}: "):
            return runtime, "refused", ""
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode in (0, 1) and rows and all(r["label"] in labels for r in rows):
            return runtime, "ran", ""
        return runtime, "crashed" if done.returncode < 0 or done.returncode > 2 else "wrong", \
            f"{model} ({kind}): exit {done.returncode}: {done.stderr[-300:]}"

    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(judge, jobs))
    counts = collections.Counter((runtime, verdict) for runtime, verdict, _ in verdicts)
    print("corrupted models:", dict(sorted(counts.items())))
    bad = [detail for _, verdict, detail in verdicts if detail]
    assert not bad, bad
    for runtime in runtimes():
        assert counts[runtime, "refused"] + counts[runtime, "ran"] >= 40
        assert counts[runtime, "refused"] >= 16  # every truncation and every object-API edit
    skip_the_tflite_runtime_half("ai-edge-litert's half")


# -- a model file that describes itself -----------------------------------------

def test_embedded_metadata_round_trips(export, described):
    from edge.runtime import embedded_metadata
    from export.metadata import embed, metadata_for

    manifest = read_manifest(described)
    for variant in ("int8", "float32"):
        original = (export / f"{variant}.tflite").read_bytes()
        written = (described / f"{variant}.tflite").read_bytes()
        meta = embedded_metadata(read_model(written, variant), Path(variant))
        assert meta == metadata_for(original, info_for(manifest, variant))
        assert (meta.variant, meta.labels, meta.output) == (variant, manifest["labels"], manifest["output"])
        assert meta.input.to_dict() == manifest["input"]
        assert meta.preprocessing.to_dict() == manifest["preprocessing"]
        entry = manifest["models"][variant]
        assert {k: v.to_dict() for k, v in meta.quantization.items()} == \
            {"input": entry["input"], "output": entry["output"]}
        # Embedding again replaces the entry instead of adding one; the weights are untouched.
        assert embed(written, info_for(manifest, variant)) == written
        assert read_model(written, variant).weights_sha256() == read_model(original, variant).weights_sha256()


@pytest.mark.parametrize("runtime", list(PYTHONS))
def test_a_renamed_model_alone_classifies_like_the_original(export, described, photos, tmp_path, runtime):
    lone = tmp_path / "elsewhere" / "renamed.tflite"
    lone.parent.mkdir()
    for variant in ("int8", "float32"):
        shutil.copy(described / f"{variant}.tflite", lone)
        alone = run_edge(runtime, lone, *photos, "--json", "-v")
        original = run_edge(runtime, export / f"{variant}.tflite", *photos, "--json")
        assert alone.returncode == 0 and original.returncode == 0, alone.stderr + original.stderr
        assert f"({variant}, " in alone.stderr and "from its embedded metadata" in alone.stderr
        assert [json.loads(r)["top"] for r in alone.stdout.splitlines()] == \
            [json.loads(r)["top"] for r in original.stdout.splitlines()]


def test_a_renamed_model_beside_its_manifest_is_found_by_sha256(described, photos, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(described, folder)
    (folder / "int8.tflite").rename(folder / "renamed.tflite")
    result = classify(folder / "renamed.tflite", photos[0], "-v")
    assert result.exit_code == 0, result.stderr
    assert "(int8, " in result.stderr and "from its manifest" in result.stderr


@pytest.mark.parametrize("field", ["labels", "input"])
def test_manifest_and_embedded_metadata_must_disagree_loudly(described, photos, tmp_path, field):
    folder = tmp_path / "export"
    shutil.copytree(described, folder)
    manifest = load_export(folder)
    h, w = manifest.input.size
    if field == "labels":
        manifest.labels = manifest.labels[::-1]
    else:
        manifest.input.height += 8
    write_json(folder / "manifest.json", manifest.to_dict())  # the model's sha256 still matches
    result = classify(folder / "int8.tflite", photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    # A size the model does not take is caught by the model's own input shape first.
    expected = {"labels": "its manifest and its embedded metadata disagree on labels",
                "input": f"model input ({h}, {w}, 3) but manifest says ({h + 8}, {w}, 3)"}[field]
    assert expected in line


def test_an_altered_model_alone_is_refused(described, photos, tmp_path):
    data = bytearray((described / "int8.tflite").read_bytes())
    start, end = max(read_model(bytes(data), "m").buffers, key=lambda span: span[1] - span[0])
    data[(start + end) // 2] ^= 0x01  # one weight, one bit: the structure is intact
    lone = tmp_path / "renamed.tflite"
    lone.write_bytes(bytes(data))
    result = classify(lone, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "weights differ from the sha256 its embedded metadata records" in line


def test_a_lone_model_without_metadata_is_refused(export, photos, tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray((export / "int8.tflite").read_bytes()))
    model.metadata = [m for m in model.metadata or [] if m.name != b"noodle"]
    lone = tmp_path / "renamed.tflite"
    lone.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    result = classify(lone, photos[0])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert f"{tmp_path / 'manifest.json'}: no manifest" in line
