"""The pretrained backbone: its weights read without torch, safely, and ported faithfully.

The weights file is a pickle, and pickles run code: the sha256 is checked
before anything is unpickled, and the unpickler refuses every global but the
three a torch state dict names. The port is checked against ImageNet itself:
with the original 1000-class head, the shared cat and dog photos land in
ImageNet's cat and dog classes (a transposed kernel or a wrong normalization
scores near zero).
"""
from __future__ import annotations

import collections
import hashlib
import pickle
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from train import lite0

# ImageNet-1k's domestic cats and dog breeds.
CAT_CLASSES = range(281, 286)
DOG_CLASSES = range(151, 269)


def legacy_file(path, state_pickle: bytes) -> None:
    """A legacy torch.save layout around `state_pickle`: magic, protocol, system info, state, keys."""
    with open(path, "wb") as f:
        for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(value, protocol=2))
        f.write(state_pickle)
        f.write(pickle.dumps([], protocol=2))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_another_global_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    legacy_file(path, pickle.dumps(collections.OrderedDict(w=_Evil(marker)), protocol=2))
    with pytest.raises(lite0.WeightsError, match="refused global (posix|os|nt).system"):
        lite0.read_torch_legacy(path, sha256=None)
    assert not marker.exists()


def test_the_hash_is_checked_before_anything_is_unpickled(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    legacy_file(path, pickle.dumps(collections.OrderedDict(w=_Evil(tmp_path / "ran")), protocol=2))
    unpickled = []
    monkeypatch.setattr(lite0._RestrictedUnpickler, "load", lambda self: unpickled.append(1))
    with pytest.raises(lite0.WeightsError, match="sha256 is not 579344248a93"):
        lite0.read_torch_legacy(path)
    assert unpickled == []


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _ints(values) -> bytes:
    return b"(" + b"".join(map(_int, values)) + b"t"  # MARK ... TUPLE


def test_a_tensor_round_trips_through_the_legacy_layout(tmp_path):
    """A state dict pickled by hand as torch writes one (no torch here): the reader gets the array back."""
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    storage = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu")
               + _int(24) + b"N" + b"t" + b"Q")  # the persistent id, then BINPERSID
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + _int(0) + _ints((2, 3, 2, 2))
              + _ints((12, 4, 2, 1)) + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR")
    state = b"\x80\x02ccollections\nOrderedDict\n)R(" + _text("w") + tensor + b"u."
    path = tmp_path / "ok.pth"
    with open(path, "wb") as f:
        for value in (0x1950A86A20F9469CFC6C, 1001, {}):
            f.write(pickle.dumps(value, protocol=2))
        f.write(state)
        f.write(pickle.dumps(["0"], protocol=2))
        f.write(struct.pack("<q", 24) + weight.tobytes())
    np.testing.assert_array_equal(lite0.read_torch_legacy(path, sha256=None)["w"], weight)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder of this test module's own, with the ImageNet weights converted into it."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(lite0.CACHE_ENV, str(folder))
        path = lite0.imagenet_weights()
    return folder, path


def test_the_package_file_is_the_one_checked():
    state = lite0.read_torch_legacy(lite0.package_weights())
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)


def test_the_converted_cache_is_checked_on_every_use(cache, monkeypatch):
    folder, path = cache
    monkeypatch.setenv(lite0.CACHE_ENV, str(folder))
    assert lite0.imagenet_weights() == path  # converted once: the second use reads the cache
    record = path.with_name(path.name + ".sha256")
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(lite0.WeightsError, match="not the one recorded"):
            lite0.imagenet_weights()
    finally:
        path.write_bytes(good)
    assert hashlib.sha256(path.read_bytes()).hexdigest() in record.read_text()


@pytest.mark.slow
def test_the_port_puts_shared_cats_and_dogs_in_their_imagenet_classes(shared_photos, cache, monkeypatch):
    from train.data import decode

    monkeypatch.setenv(lite0.CACHE_ENV, str(cache[0]))
    state = lite0.read_torch_legacy(lite0.package_weights())
    model = lite0.load_backbone(224, "imagenet")
    for name, classes in (("cats", CAT_CLASSES), ("dogs", DOG_CLASSES)):
        photos = sorted((shared_photos / "test" / name).glob("*.jpg"))[:100]
        x = decode([(p, 0) for p in photos], (224, 224)).x
        features = np.concatenate([model(x[i : i + 50].astype(np.float32), training=False).numpy()
                                   for i in range(0, len(x), 50)])
        top = (features @ state["_fc.weight"].T + state["_fc.bias"]).argmax(1)
        share = np.isin(top, list(classes)).mean()
        assert share >= 0.7, (name, share)


def test_a_weights_file_of_other_shapes_is_one_line(sample_data, tmp_path, cache, monkeypatch):
    import keras

    from noodle import app
    from train.models import allconv

    monkeypatch.setenv(lite0.CACHE_ENV, str(cache[0]))
    other = tmp_path / "other.weights.h5"
    allconv((32, 32, 3), 2).save_weights(other)
    result = CliRunner().invoke(app, ["train", str(sample_data), "--arch", "lite0", "--weights", str(other),
                                      "--image-size", "32", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: {other}: does not fit EfficientNet-Lite0"), result.output
    assert "Traceback" not in result.output

    # A file of this backbone's own shapes, written here, is taken; so is --weights none.
    mine = tmp_path / "mine.weights.h5"
    lite0.backbone(32).save_weights(mine)
    assert len(lite0.load_backbone(48, str(mine)).get_weights()) == len(lite0.backbone(48).get_weights())
    keras.backend.clear_session()


@pytest.mark.parametrize("args, message", [
    (["--arch", "allconv", "--weights", "imagenet"], "allconv trains from scratch"),
    (["--arch", "lite0", "--weights", "missing.weights.h5"], "no such file"),
    (["--arch", "lite0", "--weights", "none", "--fine-tune", "2"], "only a pretrained backbone"),
])
def test_weights_options_that_mean_nothing_are_refused_before_any_work(sample_data, tmp_path, args, message):
    from noodle import app

    result = CliRunner().invoke(app, ["train", str(sample_data), *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_the_weights_are_part_of_the_run_identity(sample_data, tmp_path):
    from train.config import TrainConfig
    from train.data import find_dataset
    from train.runs import identity

    ds = find_dataset(sample_data)
    mine = tmp_path / "mine.weights.h5"
    mine.write_bytes(b"some weights")
    ids = {w: identity(ds, TrainConfig(data=sample_data, out=tmp_path, weights=w))["run"]
           for w in (None, "imagenet", "none", str(mine))}
    assert ids[None] == ids["imagenet"]  # the default, named or not
    assert len({ids["imagenet"], ids["none"], ids[str(mine)]}) == 3


@pytest.mark.slow
def test_fine_tuning_moves_the_top_blocks_only_and_keeps_batch_norm(tmp_path, cache, monkeypatch):
    """--fine-tune 2: the last two blocks and the head conv change; the rest and every batch norm do not."""
    import keras

    from tests.test_matrix import tinted_photos
    from train.config import TrainConfig
    from train.fit import train

    monkeypatch.setenv(lite0.CACHE_ENV, str(cache[0]))
    data = tinted_photos(tmp_path / "photos", 2)
    before = lite0.load_backbone(32, "imagenet")
    manifest = train(TrainConfig(data=data, out=tmp_path / "run", image_size=32, epochs=1, fine_tune=2,
                                 verbose=0))
    assert manifest["training"]["fine_tune"] == 2
    after = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False).layers[1]

    def changed(layer) -> bool:
        pairs = zip(layer.get_weights(), after.get_layer(layer.name).get_weights(), strict=True)
        return any(not np.array_equal(a, b) for a, b in pairs)

    moved = {layer.name for layer in before.layers if changed(layer)}
    assert moved and all(name.startswith(("block14_", "block15_", "head_")) for name in moved), moved
    assert not any(name.endswith("_bn") for name in moved)
    assert {"block15_project_conv", "head_conv"} <= moved
