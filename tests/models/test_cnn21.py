"""CNN21 is the network of Table 4: layer sequence, shapes, parameter count."""

from __future__ import annotations

import keras
import pytest

from osteo_pipeline.models.cnn21 import build_cnn21

TABLE_4 = (
    ["Conv2D", "Conv2D", "Conv2D", "MaxPooling2D", "Dropout"]
    + ["Conv2D", "MaxPooling2D", "Dropout"] * 4
    + ["Flatten", "Dense", "Dropout", "Dense"]
)
CONV_FILTERS = [32, 64, 128, 64, 128, 512, 512]
# conv: 3*3*in*out + out; dense: in*out + out (2x2x512 = 2048 flattened features)
PARAMS_2_CLASSES = 3_322_306


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_cnn21((150, 150, 3), num_classes=2, l2=1e-4)


def test_layer_sequence_is_table_4(model):
    layers = model.layers[1:]  # without the Input
    assert [type(layer).__name__ for layer in layers] == TABLE_4
    assert len(layers) == 21
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == CONV_FILTERS
    for c in convs:
        assert (c.kernel_size, c.strides, c.padding, c.activation.__name__) == ((3, 3), (1, 1), "valid", "relu")
        assert c.kernel_regularizer is not None
    for p in (layer for layer in layers if isinstance(layer, keras.layers.MaxPooling2D)):
        assert (p.pool_size, p.strides) == ((2, 2), (2, 2))
    assert all(d.rate == 0.2 for d in layers if isinstance(d, keras.layers.Dropout))
    dense_64, output = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    assert (dense_64.units, dense_64.activation.__name__) == (64, "relu")
    assert (output.units, output.activation.__name__) == (2, "softmax")


def test_shapes_and_parameter_count(model):
    assert model.layers[1].output.shape == (None, 148, 148, 32)  # paper eqs. 6-8
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert flatten.input.shape == (None, 2, 2, 512)  # final feature map
    assert model.output.shape == (None, 2)
    assert model.count_params() == PARAMS_2_CLASSES
    # a third class adds one output unit: 64 weights + 1 bias
    assert build_cnn21((150, 150, 3), num_classes=3).count_params() == PARAMS_2_CLASSES + 65


def test_softmax_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = build_cnn21((100, 100, 3), num_classes=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert m.layers[1].compute_dtype == "bfloat16"
    assert m.layers[-1].compute_dtype == "float32" and m.output.dtype == "float32"


def test_smallest_input_is_98_pixels():
    # valid 3x3 convs and five 2x2 pools: 98 px is the least that leaves a 1x1 final map
    assert build_cnn21((98, 98, 3)).layers[-5].output.shape == (None, 1, 1, 512)
    with pytest.raises(ValueError):
        build_cnn21((96, 96, 3))
