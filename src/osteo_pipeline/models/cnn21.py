"""The paper's 21-layer CNN (section 3.4, Table 4)."""

from __future__ import annotations

import keras
from keras import layers


def build_cnn21(
    input_shape: tuple[int, int, int] = (150, 150, 3),
    num_classes: int = 2,
    l2: float = 1e-4,
    dropout: float = 0.2,
) -> keras.Model:
    """Build the 21-layer CNN of Table 4 (uncompiled; input scaled to [0, 1]).

    ``l2`` is the kernel L2 factor: the paper uses L2 regularisation but gives no value.
    Keras default initialisers throughout (Glorot uniform kernels, zero biases), as the paper states.
    """
    reg = keras.regularizers.L2(l2) if l2 else None

    def conv(filters: int) -> layers.Conv2D:
        # 3x3, stride 1, valid padding (no zero padding): 150 -> 148 in the first layer (eq. 6).
        return layers.Conv2D(filters, 3, strides=1, padding="valid", activation="relu", kernel_regularizer=reg)

    def pool() -> layers.MaxPooling2D:
        return layers.MaxPooling2D(pool_size=2, strides=2)

    inputs = keras.Input(shape=input_shape, name="image")
    # Layer                          Pool  Filter  Stride  Filters  Dropout  Activation
    x = conv(32)(inputs)             # -     3x3     1       32       -        ReLU
    x = conv(64)(x)                  # -     3x3     1       64       -        ReLU
    x = conv(128)(x)                 # -     3x3     1       128      -        ReLU
    x = pool()(x)                    # 2x2   -       2       -        -        -
    x = layers.Dropout(dropout)(x)   # -     -       -       -        0.20     -
    for filters in (64, 128, 512, 512):
        x = conv(filters)(x)         # -     3x3     1       filters  -        ReLU
        x = pool()(x)                # 2x2   -       2       -        -        -
        x = layers.Dropout(dropout)(x)  # -  -       -       -        0.20     -
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu", kernel_regularizer=reg)(x)  # FCL 64 ReLU
    x = layers.Dropout(dropout)(x)
    # Table 4 prints "Sigmoid" on the 2-unit output, but the text (section 3.4, section 4) says
    # softmax with cross-entropy: softmax is the one that makes 2 (or 3) exclusive class scores
    # sum to 1. dtype float32 keeps the softmax and loss stable under mixed precision.
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32", name="class_probs"
    )(x)
    return keras.Model(inputs, outputs, name="cnn21")
