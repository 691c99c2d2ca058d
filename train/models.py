"""The builders of the architectures `noodle train --arch` knows (train.config.ARCHITECTURES).

Every model takes raw 0-255 RGB pixels and rescales them itself, so the
preprocessing the device runs (edge.preprocess) is all that stands between a
photo and the model. Augmentation is never inside a model: training wraps
it around the model (train.scratch.for_training) and saves the model alone, so
exported graphs hold only inference ops.
"""
from __future__ import annotations

import keras
from keras import layers


def _head(x, num_classes: int, sigmoid: bool = True):
    # Two classes: one sigmoid unit (binary cross-entropy), unless `sigmoid` is
    # False; more: softmax. Kept float32 under mixed precision so the
    # probabilities stay exact.
    if num_classes == 2 and sigmoid:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def head(num_classes: int, features: int, dropout: float = 0.2) -> keras.Model:
    """A pretrained backbone's new head: dropout, then the class layer, on its pooled features.

    A model of its own, shared by the classifier: training solves its class
    layer on features computed once (train.head), and `--fine-tune` trains it
    with the backbone's top blocks, the dropout acting only then. Softmax even
    for two classes: the dynamic-range converter quantizes a one-unit dense
    layer of 1,024 or more weights per channel (its one channel), which makes
    FULLY_CONNECTED version 12, and tflite-runtime 2.14 (Bookworm) cannot load it.
    """
    inputs = keras.Input((features,), name="features")
    x = layers.Dropout(dropout)(inputs)
    return keras.Model(inputs, _head(x, num_classes, sigmoid=False), name="head")


def lite0(input_shape: tuple[int, int, int], num_classes: int, weights: str = "imagenet") -> keras.Model:
    """EfficientNet-Lite0 (3.4 M parameters in the backbone) with a new head.

    The backbone normalizes pixels itself, as its ImageNet weights expect
    (train.lite0); `weights` is imagenet, none or a .weights.h5 file of it.
    """
    from train.lite0 import FEATURES, load_backbone

    inputs = keras.Input(input_shape, name="pixels")
    backbone = load_backbone(input_shape[0], weights)
    outputs = head(num_classes, FEATURES)(backbone(inputs))
    return keras.Model(inputs, outputs, name="lite0")


def classic(input_shape: tuple[int, int, int], num_classes: int, weights: str = "none") -> keras.Model:
    """The classic recipe, layer for layer (1.97 M parameters at 64x64)."""
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _head(x, num_classes), name="classic")


def _conv_bn(x, filters: int, stride: int = 1):
    # Bias-free conv + batch norm + ReLU: the converter folds BN into the conv,
    # and ReLU clamps at zero, which int8 represents exactly.
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    # Momentum 0.9, not Keras' 0.99: with a few dozen steps an epoch, 0.99 leaves
    # the moving statistics near their initial values for many epochs and the
    # validation accuracy at chance while training accuracy climbs.
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def allconv(input_shape: tuple[int, int, int], num_classes: int, weights: str = "none") -> keras.Model:
    """A small all-convolutional net, trained from scratch, that quantizes cleanly.

    A stride-2 stem sees the input (56x56 by default, train.config.ARCHITECTURES)
    once with 16 filters, so everything after it runs at half that side or
    less; width grows as resolution halves, and global average pooling instead
    of a big dense layer keeps it small. Plain 3x3 convolutions, not
    depthwise-separable ones: int8 stores a float scale and an int64 zero
    point per output channel, which outweigh a depthwise filter's 9 weights.
    With most weights in layers of wide fan-in, the int8 file is about a
    quarter of the float32 one.

    The from-scratch default after seven rounds of accuracy levers; what was
    tried, and what each scored, is in docs/experiments.md ("From scratch").
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, 16, stride=2)  # 28x28 from 56x56
    x = _conv_bn(x, 32)
    x = layers.MaxPooling2D(2)(x)  # 14x14
    x = _conv_bn(x, 64)
    x = layers.MaxPooling2D(2)(x)  # 7x7
    x = _conv_bn(x, 128)
    x = _conv_bn(x, 192)
    # 3x3: the 7x7 map's last row and column go; keeping them (padding="same", 4x4)
    # scored lower (docs/experiments.md, round 5).
    x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 256)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _head(x, num_classes), name="allconv")


def normalization(model: keras.Model) -> dict:
    """How `model` normalizes its raw 0-255 pixels, read from the layer that does it: (x - mean) / std.

    The first layer after the input (inside a nested backbone, its own first layer)
    must be a Rescaling, which computes x * scale + offset; so mean = -offset / scale
    and std = 1 / scale. Read from the model that was built, never from a table, so
    what the manifest and every exported file say is what the weights expect.
    """
    layer = model
    while isinstance(layer, keras.Model):
        computing = [sub for sub in layer.layers if not isinstance(sub, keras.layers.InputLayer)]
        if not computing:
            break
        layer = computing[0]
    if not isinstance(layer, layers.Rescaling):
        raise ValueError(f"{model.name}: its first layer is {type(layer).__name__}, not a Rescaling; "
                         "noodle's models take raw 0-255 pixels and normalize them in a Rescaling layer")
    scale, offset = float(layer.scale), float(layer.offset)
    return {"inside_model": True, "layer": layer.name, "mean": -offset / scale, "std": 1 / scale}


def preprocessing(model: keras.Model, recorded: dict | None = None) -> dict:
    """The manifest's preprocessing: the device's pixels (edge.preprocess), then the model's normalization.

    recorded: what a manifest already says, kept for a model whose first layer is not a
    Rescaling (one trained elsewhere), where nothing can be read from the model.
    """
    from edge.preprocess import PREPROCESSING

    try:
        found = normalization(model)
    except ValueError:
        if recorded is None:
            raise
        return recorded
    return {**(recorded or PREPROCESSING), "normalization": found}


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int,
          weights: str = "none") -> keras.Model:
    """The `arch` row's builder (train.config.ARCHITECTURES); from-scratch builders take no weights."""
    from train.config import ARCHITECTURES

    builder = globals()[ARCHITECTURES[arch].builder]
    if weights != "none" and not ARCHITECTURES[arch].pretrained:
        raise ValueError(f"{arch} trains from scratch: it takes no --weights")
    return builder(input_shape, num_classes, weights)
