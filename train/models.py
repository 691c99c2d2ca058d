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

    Width doubles as resolution halves; global average pooling instead of a
    big dense layer keeps it around a tenth of the seed's size.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, 24, stride=2)
    for filters in (32, 64, 128):
        x = _conv_bn(x, filters)
        x = _conv_bn(x, filters)
        x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, 160)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, _head(x, num_classes), name="noodle")


ARCHITECTURES = {"noodle": noodle, "seed": seed}
DEFAULT_ARCH = "noodle"


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    return ARCHITECTURES[arch](input_shape, num_classes)
