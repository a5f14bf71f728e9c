"""Grad-CAM on hand-built models whose evidence is known, and the layer it explains."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from osteo_pipeline.evaluation.gradcam import grad_cam, gradcam_layer, overlay


def _brightness_model(size: int = 24) -> keras.Model:
    """Class 1's logit grows with mean brightness, class 0's falls: the evidence for class 1 is
    exactly where the image is bright (1x1 conv copies the grey level, GAP averages it)."""
    image = keras.Input((size, size, 3))
    grey = keras.layers.Conv2D(1, 1, activation="relu", name="grey",
                               kernel_initializer=keras.initializers.Constant(1 / 3), bias_initializer="zeros")(image)
    pooled = keras.layers.GlobalAveragePooling2D()(grey)
    probs = keras.layers.Dense(2, activation="softmax", name="class_probs",
                               kernel_initializer=keras.initializers.Constant([[-4.0, 4.0]]),
                               bias_initializer="zeros")(pooled)
    return keras.Model(image, probs)


def test_heatmap_marks_the_evidence_for_the_class_and_nothing_against_it():
    model = _brightness_model()
    image = np.zeros((1, 24, 24, 3), dtype=np.float32)
    image[0, 4:10, 14:20] = 1.0  # one bright square
    for_class_1 = grad_cam(model, image, 1, "grey")[0]
    inside, outside = for_class_1[4:10, 14:20], np.delete(for_class_1.ravel(), np.ravel_multi_index(np.mgrid[4:10, 14:20].reshape(2, -1), (24, 24)))
    assert for_class_1.max() == pytest.approx(1.0)
    assert np.unravel_index(for_class_1.argmax(), for_class_1.shape)[0] in range(4, 10)
    assert inside.mean() > 0.9 and outside.mean() < 0.1
    # class 0's logit falls with brightness: no positive evidence anywhere, an all-zero map
    assert np.all(grad_cam(model, image, 0, "grey")[0] == 0)


def test_logits_not_probabilities_drive_the_map():
    # A saturated softmax (p ~ 1) has a vanishing probability gradient; the logit's does not.
    model = _brightness_model()
    image = np.ones((1, 24, 24, 3), dtype=np.float32) * 0.2
    image[0, :6, :6] = 50.0  # drives P(class 1) to 1.0 in float32
    assert model.predict(image, verbose=0)[0, 1] == pytest.approx(1.0)
    assert grad_cam(model, image, 1, "grey")[0][:6, :6].mean() > 0.9


def test_gradcam_layer_skips_pooling_and_dropout():
    image = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(image)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(image, keras.layers.Dense(2, activation="softmax")(x))
    assert gradcam_layer(model) == "c2"
    maps = grad_cam(model, np.random.default_rng(0).random((3, 32, 32, 3)), [0, 1, 0])
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1


def test_cnn21_is_explained_at_its_last_convolution():
    from osteo_pipeline.models.cnn21 import build_cnn21

    model = build_cnn21((150, 150, 3), 2)
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert gradcam_layer(model) == convs[-1]


def test_overlay_keeps_cold_regions_as_the_scan():
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    heat = np.zeros((8, 8))
    heat[0, 0] = 1.0
    blended = overlay(image, heat, alpha=0.5)
    assert blended.shape == (8, 8, 3) and blended.min() >= 0 and blended.max() <= 1
    assert blended[4, 4] == pytest.approx(np.full(3, 128 / 255))
    assert not np.allclose(blended[0, 0], 128 / 255)
