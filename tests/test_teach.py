"""Teaching on the device: embed.tflite and features.npz from the export, the numpy solve,
`noodle-edge teach`, a teach folder as a model everywhere, and the capture store."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge import teach as teaching
from edge.atomic import OutputError
from edge.captures import UNSURE, CaptureError, CaptureFull, CaptureStore, check_label
from edge.cli import app
from edge.manifest import sha256_file
from edge.taught import (
    EMBED_NAME,
    FEATURES_NAME,
    TEACH_MANIFEST,
    TaughtClassifier,
    TeachError,
    head_probabilities,
    load_features,
)

runner = CliRunner()


# ------------------------------------------------------------------ the solver


def _clusters(n: int, d: int, c: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    # Non-negative, as ReLU6 features pooled are.
    return (centres[y] + rng.normal(scale=3, size=(n, d))).clip(0).astype(np.float32), y


def _same_head(x, y, c):
    """train/head.py (scipy) and edge.teach (numpy) on the same features: the figures they must share."""
    from train import head
    from train.config import HEAD_ITERATIONS, HEAD_L2

    ref = head.solve(x, y, c, HEAD_L2, HEAD_ITERATIONS)
    ours = teaching.solve(x, y, c, HEAD_L2, HEAD_ITERATIONS)
    onehot = np.eye(c)[y]
    loss = {name: teaching.objective(np.concatenate([s.kernel.astype(float).ravel(), s.bias]),
                                     x.astype(float), onehot, HEAD_L2)[0]
            for name, s in (("ref", ref), ("ours", ours))}
    p_ref, p_ours = head_probabilities(x, ref.kernel, ref.bias), head_probabilities(x, ours.kernel, ours.bias)
    assert ref.converged and ours.converged, (ref.message, ours.message)
    # Both stop at scipy's default tolerances, so they agree to what those tolerances leave:
    # the same label for every photo, probabilities within 5e-4, and an objective (1e-5 to 2e-3
    # here) at most 1e-5 above scipy's; on separable photos either may stop first, so below is fine.
    assert (p_ref.argmax(1) == p_ours.argmax(1)).all()
    assert np.abs(p_ref - p_ours).max() < 5e-4
    assert loss["ours"] < loss["ref"] + 1e-5


@pytest.mark.parametrize("n, d, c", [(120, 64, 4), (300, 1280, 3), (40, 1280, 2)])
def test_the_numpy_solve_reaches_train_heads_answer(n, d, c):
    _same_head(*_clusters(n, d, c, seed=n), c)


def test_the_numpy_solve_reaches_train_heads_answer_on_real_features(taught_export):
    shipped = load_features(taught_export / FEATURES_NAME)
    _same_head(shipped.features.astype(np.float32), shipped.y, len(shipped.labels))


# ------------------------------------------------------------------ the export


@pytest.fixture(scope="module")
def taught_export(sample_data, tmp_path_factory) -> Path:
    """lite0 trained on the sample data and exported (int8 only): RUN/export with embed.tflite."""
    from export.convert import export_run
    from train.fit import TrainConfig, train

    out = tmp_path_factory.mktemp("teach") / "sample-lite0"
    train(TrainConfig(data=sample_data, out=out, verbose=0))
    export_run(out, variants=["int8"])
    return out / "export"


def test_the_export_writes_an_embed_model_that_is_int8s_graph(taught_export, sample_data):
    from edge.runtime import Classifier

    shipped = load_features(taught_export / FEATURES_NAME)
    assert shipped.meta["embed_sha256"] == sha256_file(taught_export / EMBED_NAME)
    assert shipped.features.dtype == np.float16 and shipped.features.shape[1] == 1280
    assert shipped.labels == ["discs", "stripes"] and sorted(set(shipped.y.tolist())) == [0, 1]
    # Its probabilities output equals int8.tflite's, byte for byte, on test photos (the export
    # checked training photos).
    int8 = Classifier(taught_export / "int8.tflite")
    from edge.taught import Embedder

    embed = Embedder(taught_export / EMBED_NAME, 1280, int8.size)
    photos = sorted((sample_data / "test").rglob("*.jpg"))[::7]
    pixels = np.stack([int8.preprocess(p) for p in photos])
    for row in pixels:
        int8.invoke(row[None])
        embed.invoke(row[None])
        other = [d for i, d in enumerate(embed.interpreter.get_output_details()) if i != embed._which][0]
        assert (int8.interpreter.get_tensor(int8._output["index"])
                == embed.interpreter.get_tensor(other["index"])).all()
    # And its features are int8.tflite's pooled tensor, value for value (read with every
    # intermediate tensor kept, a debugging mode of the interpreter).
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner = Interpreter(model_path=str(taught_export / "int8.tflite"),
                            experimental_preserve_all_tensors=True)
    inner.allocate_tensors()
    pooled = [t for t in inner.get_tensor_details() if tuple(t["shape"]) == (1, 1280) and "pool" in t["name"]]
    assert len(pooled) == 1
    scale, zero = pooled[0]["quantization"]
    for row in pixels:
        inner.set_tensor(inner.get_input_details()[0]["index"], row[None])
        inner.invoke()
        want = (inner.get_tensor(pooled[0]["index"]).astype(np.float32) - zero) * scale
        np.testing.assert_array_equal(embed.features(row[None]), want)


def test_the_bundle_carries_what_teach_needs_and_teach_runs_from_it(taught_export, sample_data, tmp_path):
    from export import bundle
    from export.convert import record_validation
    from export.validate import validate_export

    run = taught_export.parent
    record_validation(run, validate_export(run))
    tarball = bundle.write_bundle(run, "int8", tmp_path / "dist")
    model = bundle.unpack(tarball, tmp_path / "pi") / "model"
    assert sorted(p.name for p in model.iterdir()) == ["embed.tflite", "features.npz", "int8.tflite",
                                                       "manifest.json"]
    captures = _captures(tmp_path / "captures", sample_data, 5, ("stripes",))
    done = teaching.teach(captures, model, tmp_path / "taught", log=lambda line: None)
    assert done.manifest.labels == done.manifest.shipped["kept"] == ["discs", "stripes"]


def test_architectures_trained_whole_get_no_embed_model_and_say_why(exported_run):
    from edge.manifest import InputSpec, Preprocessing, RunManifest
    from export.embed import why_not

    manifest = RunManifest(labels=["a", "b"], input=InputSpec(56, 56), output="softmax",
                           preprocessing=Preprocessing("x", 1, {}), arch="noodle", params=1)
    assert "trains its whole net" in why_not(manifest, None)
    # The suite's noodle export: every variant, and no embed.tflite or features.npz.
    assert (exported_run / "export" / "int8.tflite").is_file()
    assert not (exported_run / "export" / EMBED_NAME).exists()
    assert not (exported_run / "export" / FEATURES_NAME).exists()


# ------------------------------------------------------------------ teach


def _captures(root: Path, sample_data: Path, per_class: int, classes=("discs", "stripes")) -> Path:
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for photo in sorted((sample_data / "train" / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(photo, root / cls / photo.name)
    return root


def _accuracy(model: Path, test: Path, classes=None) -> float:
    result = runner.invoke(app, ["classify", str(model), str(test), "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in rows if classes is None or Path(r["file"]).parent.name in classes]
    assert rows, result.output
    return sum(r["label"] == Path(r["file"]).parent.name for r in rows) / len(rows)


def test_teach_on_the_sample_data_then_classify_and_bench_take_it(taught_export, sample_data, tmp_path):
    captures = _captures(tmp_path / "captures", sample_data, 10)
    out = tmp_path / "taught"
    result = runner.invoke(app, ["teach", str(captures), "--model", str(taught_export), "--out", str(out),
                                 "--replace"])
    assert result.exit_code == 0, result.output
    assert "taught" in result.output and "invoke" in result.output
    manifest = json.loads((out / TEACH_MANIFEST).read_text())
    assert manifest["labels"] == ["discs", "stripes"]
    assert manifest["captures"]["photos"] == {"discs": 10, "stripes": 10}
    assert manifest["solve"]["converged"] and manifest["validation"]["passed"]
    assert {name: sha256_file(out / name) for name in manifest["files"]} == manifest["files"]
    assert _accuracy(out, sample_data / "test") >= 0.9
    bench = runner.invoke(app, ["bench", str(out), str(sample_data / "test" / "discs"), "--json",
                                "--repeat", "1"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout.strip().splitlines()[-1])["variant"] == "taught"
    # Taught again from the same captures: every feature from the cache, no invoke.
    again = teaching.teach(captures, taught_export, out, replace=True, log=lambda line: None)
    assert again.computed == 0 and again.invokes == 0
    assert again.manifest.captures["fingerprint"] == manifest["captures"]["fingerprint"]


def test_a_third_class_keeps_the_first_two(taught_export, sample_data, tmp_path):
    captures = tmp_path / "captures" / "noise"
    captures.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):  # a class neither shipped one resembles: coloured noise
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(captures / f"{i}.jpg")
    out = tmp_path / "taught"
    done = teaching.teach(captures.parent, taught_export, out, log=lambda line: None)
    assert done.manifest.labels == ["discs", "stripes", "noise"]
    two = _accuracy(taught_export / "int8.tflite", sample_data / "test")
    three = _accuracy(out, sample_data / "test", ("discs", "stripes"))
    assert three >= two - 0.02, (two, three)
    assert TaughtClassifier(out).top_k(TaughtClassifier(out).probabilities(
        np.asarray(Image.open(captures / "0.jpg").resize((192, 192)))[None]))[0][0][0] == "noise"


@pytest.mark.parametrize("name", ["bad\x1b[31mname", "right\u202eleft", "x" * 101])
def test_a_hostile_class_name_is_refused_in_words(taught_export, sample_data, tmp_path, name):
    captures = _captures(tmp_path / "captures", sample_data, 3, ("discs",))
    (captures / name).mkdir()
    shutil.copy(next((captures / "discs").iterdir()), captures / name / "a.jpg")
    shutil.copy(next((captures / "discs").iterdir()), captures / name / "b.jpg")
    result = runner.invoke(app, ["teach", str(captures), "--model", str(taught_export), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line and "class name" in line
    assert not (tmp_path / "out").exists()


def test_a_full_disk_during_teach_loses_nothing_and_keeps_the_old_folder(taught_export, sample_data,
                                                                         tmp_path, monkeypatch):
    captures = _captures(tmp_path / "captures", sample_data, 4)
    out = tmp_path / "taught"
    teaching.teach(captures, taught_export, out, replace=True, log=lambda line: None)
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    _captures(captures, sample_data, 6)  # more photos: a different model would be written
    real = np.savez

    def full(file, **arrays):
        if "kernel" in arrays:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, **arrays)

    monkeypatch.setattr(teaching.np, "savez", full)
    with pytest.raises(TeachError, match="cannot write it.*the old folder, if any, is as it was"):
        teaching.teach(captures, taught_export, out, replace=True, log=lambda line: None)
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captures", "taught"]  # no temporary folder left
    assert TaughtClassifier(out).labels == ["discs", "stripes"]
    assert sorted(p.name for p in (captures / "discs").iterdir()) == sorted(
        p.name for p in sorted((sample_data / "train" / "discs").glob("*.jpg"))[:6])


def test_an_unreadable_capture_is_skipped_in_one_escaped_line(taught_export, sample_data, tmp_path):
    captures = _captures(tmp_path / "captures", sample_data, 3)
    (captures / "discs" / "broken\x1b.jpg").write_bytes(b"not a jpeg")
    lines: list[str] = []
    done = teaching.teach(captures, taught_export, tmp_path / "taught", replace=True, log=lines.append)
    assert done.manifest.captures == {**done.manifest.captures, "photos": {"discs": 3, "stripes": 3},
                                      "skipped": 1}
    assert len(lines) == 1 and "broken\\033.jpg" in lines[0] and "\x1b" not in lines[0]


def test_a_folder_whose_files_were_altered_is_refused(taught_export, sample_data, tmp_path):
    captures = _captures(tmp_path / "captures", sample_data, 3)
    out = tmp_path / "taught"
    teaching.teach(captures, taught_export, out, replace=True, log=lambda line: None)
    with np.load(out / "head.npz") as npz:
        kernel, bias = npz["kernel"], npz["bias"]
    with open(out / "head.npz", "wb") as f:
        np.savez(f, kernel=-kernel, bias=bias)
    result = runner.invoke(app, ["classify", str(out), str(sample_data / "test" / "discs")])
    assert result.exit_code != 0 and "sha256 differs from its teach manifest" in result.output


def test_a_model_without_embed_features_is_refused_in_one_line(tmp_path, sample_data):
    captures = _captures(tmp_path / "captures", sample_data, 2)
    result = runner.invoke(app, ["teach", str(captures), "--model", str(tmp_path), "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code != 0 and "no embed.tflite and features.npz" in result.output


# ------------------------------------------------------------------ the capture store


@pytest.mark.parametrize("label", ["", ".", "..", ".hidden", "a/b", "..\\x", "bad\x00", "x\u202ey", UNSURE,
                                   "z" * 101])
def test_the_store_refuses_labels_that_are_not_one_class_folder(label):
    with pytest.raises(CaptureError) as caught:
        check_label(label)
    assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)


def test_the_store_keeps_the_centre_square_under_server_made_names(tmp_path):
    store = CaptureStore(tmp_path)
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 255  # the centre square is white; the sides black
    path = store.add("cats", frame)
    assert path.parent == tmp_path / "cats"
    assert teaching_name(path.name)
    with Image.open(path) as img:
        assert img.size == (40, 40) and np.asarray(img).min() > 200
    second = store.add("cats", frame)
    assert second != path
    listing = store.listing(recent=5)
    assert listing["classes"]["cats"]["count"] == 2 and listing["bytes"] == path.stat().st_size * 2
    assert listing["classes"]["cats"]["recent"] == [path.name, second.name]
    assert listing["limit_bytes"] == int(200e6)


def teaching_name(name: str) -> bool:
    from edge.captures import NAME

    return bool(NAME.match(name))


def test_the_store_refuses_in_words_past_its_limit(tmp_path):
    store = CaptureStore(tmp_path, max_mb=0.002)  # 2,000 bytes
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    store.add("a", noise[:16, :16])
    with pytest.raises(CaptureFull, match="MB limit; delete some .* or raise --captures-max-mb"):
        store.add("a", noise)
    assert store.listing()["classes"]["a"]["count"] == 1


def test_the_unsure_ring_is_bounded_and_a_frame_moves_into_a_class(tmp_path):
    store = CaptureStore(tmp_path, unsure_max=3)
    paths = [store.add_unsure(np.full((8, 8, 3), i, np.uint8)) for i in range(5)]
    kept = sorted(p.name for p in (tmp_path / UNSURE).iterdir())
    assert kept == sorted(p.name for p in paths[-3:])
    moved = store.move(paths[-1].name, "dogs")
    assert moved == tmp_path / "dogs" / paths[-1].name and store.listing()["unsure"]["count"] == 2
    assert store.labels() == ["dogs"]


def test_delete_takes_only_names_the_store_makes(tmp_path):
    store = CaptureStore(tmp_path)
    a = store.add("cats", np.zeros((8, 8, 3), np.uint8))
    store.add("cats", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "secret.txt").write_text("x")
    for name in ("../secret.txt", "secret.txt", "x.jpg"):
        with pytest.raises(CaptureError, match="not a capture name"):
            store.delete("cats", name)
    assert store.delete("cats", a.name) == 1
    assert store.delete("cats") == 1 and not (tmp_path / "cats").exists()
    assert (tmp_path / "secret.txt").exists()


def test_an_upload_is_decoded_cropped_and_a_bad_one_refused(tmp_path):
    import io

    store = CaptureStore(tmp_path)
    data = io.BytesIO()
    Image.new("RGB", (30, 10), "red").save(data, "PNG")
    with Image.open(store.add_image("red", data.getvalue())) as img:
        assert img.size == (10, 10) and img.format == "JPEG"
    with pytest.raises(CaptureError, match="not an image"):
        store.add_image("red", b"not an image")


def test_a_full_disk_during_a_capture_leaves_nothing(tmp_path, monkeypatch):
    store = CaptureStore(tmp_path)
    store.add("cats", np.zeros((8, 8, 3), np.uint8))

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError, match="No space left"):
        store.add("cats", np.zeros((8, 8, 3), np.uint8))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cats").iterdir() if p.name.startswith(".")] == []
    assert store.listing()["classes"]["cats"]["count"] == 1
