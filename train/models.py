"""The architectures `noodle train --arch` knows.

Every model takes raw 0-255 RGB pixels and rescales them itself, so the
preprocessing the device runs (edge.preprocess) is all that stands between a
photo and the model. Augmentation is never inside a model: it lives in the
training input pipeline, so exported graphs hold only inference ops.
"""
from __future__ import annotations

import keras
from keras import layers


def _head(x, num_classes: int):
    # Two classes: one sigmoid unit (binary cross-entropy); more: softmax.
    # Kept float32 under mixed precision so the probabilities stay exact.
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def seed(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The classic recipe, layer for layer (1.97 M parameters at 64x64)."""
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _head(x, num_classes), name="seed")


def _conv_bn(x, filters: int, stride: int = 1):
    # Bias-free conv + batch norm + ReLU: the converter folds BN into the conv,
    # and ReLU clamps at zero, which int8 represents exactly.
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    # Momentum 0.9, not Keras' 0.99: with a few dozen steps an epoch, 0.99 leaves
    # the moving statistics near their initial values for many epochs and the
    # validation accuracy at chance while training accuracy climbs.
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def noodle(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The default: a small all-convolutional net that quantizes cleanly.

    A stride-2 stem sees the 64x64 input once with 16 filters, so everything
    after it runs at 32x32 or less; width grows as resolution halves, and
    global average pooling instead of a big dense layer keeps it at about
    0.76 M parameters, 39 % of the seed's. Plain 3x3 convolutions, not
    depthwise-separable ones: int8 stores a float scale and an int64 zero
    point per output channel, which outweigh a depthwise filter's 9 weights
    (a MobileNet-like variant's int8 file was a third of its float32 one, not
    a quarter). With most weights in layers of fan-in 3x3x128 or more, the
    int8 file is 25.8 % of the float32 one.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, 16, stride=2)  # 32x32
    x = _conv_bn(x, 32)
    x = layers.MaxPooling2D(2)(x)  # 16x16
    x = _conv_bn(x, 64)
    x = layers.MaxPooling2D(2)(x)  # 8x8
    x = _conv_bn(x, 128)
    x = _conv_bn(x, 192)
    x = layers.MaxPooling2D(2)(x)  # 4x4
    x = _conv_bn(x, 256)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _head(x, num_classes), name="noodle")


def pooled(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """noodle with a pool before its 192-filter layer: a bigger input at its cost."""
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, 16, stride=2)
    x = _conv_bn(x, 32)
    x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 64)
    x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 128)
    x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 192)
    x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 256)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _head(x, num_classes), name="pooled")


def _residual(x, filters: int):
    # Two 3x3 convolutions and a shortcut: an identity when the width stays,
    # else a 1x1 projection (few weights next to the 3x3s, so int8 stays a quarter).
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False)(x)
        shortcut = layers.BatchNormalization(momentum=0.9)(shortcut)
    y = _conv_bn(x, filters)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _residual_net(input_shape, num_classes: int, widths: tuple[int, ...], name: str) -> keras.Model:
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, widths[0], stride=2)
    x = _conv_bn(x, widths[1])
    for filters in widths[2:]:
        x = layers.MaxPooling2D(2)(x)
        x = _residual(x, filters)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _head(x, num_classes), name=name)


def res(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    return _residual_net(input_shape, num_classes, (16, 32, 64, 128, 256), "res")


def res_narrow(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    return _residual_net(input_shape, num_classes, (16, 32, 48, 96, 192), "res_narrow")


ARCHITECTURES = {"noodle": noodle, "seed": seed, "res": res, "res_narrow": res_narrow, "pooled": pooled}
DEFAULT_ARCH = "noodle"


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    return ARCHITECTURES[arch](input_shape, num_classes)
