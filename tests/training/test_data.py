"""Scheme selection, leakage guard and input streams (augmentation on training batches only)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from osteo_pipeline.imaging.augment import augment_preview, build_augmenter
from osteo_pipeline.training.data import DataLeakageError, InputStreams, select_training_set


def test_binary_scheme_drops_osteopenia_and_the_test_partition(inputs):
    model_input, table = inputs
    ts = select_training_set(model_input, table, "binary")
    kept = table.set_index("scan_id").loc[ts.scan_ids]
    assert set(kept.label) == {"normal", "osteoporosis"} and ts.class_names == ("normal", "osteoporosis")
    assert (kept.partition == "train").all()
    assert ts.test_scan_ids == frozenset(table.scan_id[table.partition == "test"])
    train = table[table.partition == "train"]
    assert ts.counts["n_excluded_out_of_scheme"] == (train.label == "osteopenia").sum() > 0
    assert ts.counts["n_training_scans"] == len(ts.images) == len(ts.labels)
    assert ts.cv_folds == [0, 1]
    assert list(ts.labels) == [ts.class_names.index(lbl) for lbl in kept.label]
    np.testing.assert_array_equal(ts.images[0], model_input["images"][list(model_input["scan_id"]).index(ts.scan_ids[0])])


def test_three_class_scheme_keeps_every_training_scan(inputs):
    model_input, table = inputs
    ts = select_training_set(model_input, table, "three_class")
    assert ts.counts["n_training_scans"] == (table.partition == "train").sum()
    assert ts.counts["n_excluded_out_of_scheme"] == 0
    with pytest.raises(ValueError, match="label_scheme"):
        select_training_set(model_input, table, "four_class")


def test_a_test_scan_in_a_stream_raises(inputs):
    model_input, table = inputs
    ts = select_training_set(model_input, table, "binary")
    leaky = dataclasses.replace(ts, test_scan_ids=ts.test_scan_ids | {ts.scan_ids[3]})
    streams = InputStreams(leaky, batch_size=4)
    with pytest.raises(DataLeakageError):
        streams.train(np.arange(6), None, seed=1)
    with pytest.raises(DataLeakageError):
        streams.evaluate(np.arange(6))


def test_validation_stream_is_scaled_never_augmented(inputs):
    ts = select_training_set(*inputs, "binary")
    idx = np.arange(7)
    x, y = map(np.concatenate, zip(*[(a.numpy(), b.numpy()) for a, b in InputStreams(ts, 4).evaluate(idx)]))
    np.testing.assert_array_equal(x, ts.images[idx].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y.argmax(1), ts.labels[idx])


def test_training_stream_is_shuffled_augmented_and_seeded(inputs, policy):
    ts = select_training_set(*inputs, "binary")
    idx = np.arange(12)

    def one_epoch(seed):
        batches = list(InputStreams(ts, 4).train(idx, policy, seed=seed))
        return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])

    x1, y1 = one_epoch(seed=3)
    x2, y2 = one_epoch(seed=3)
    np.testing.assert_array_equal(x1, x2)  # same seed, same shuffle and augmentations
    assert x1.shape == (12, *ts.images.shape[1:]) and 0.0 <= x1.min() and x1.max() <= 1.0
    plain = ts.images[idx].astype(np.float32) / 255.0
    # augmented: no training image equals any plain one
    assert not any(np.allclose(a, b) for a in x1 for b in plain)
    assert sorted(y1.argmax(1)) == sorted(ts.labels[idx])  # each scan once per epoch


def test_augmenter_follows_the_policy_in_float32(policy):
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        aug = build_augmenter(policy)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom", "RandomFlip"]
    assert all(layer.compute_dtype == "float32" for layer in aug.layers)
    rotation, translation, shear, zoom, flip = aug.layers
    assert rotation.factor == pytest.approx((-40 / 360, 40 / 360))  # +-40 degrees
    assert (translation.height_factor, translation.width_factor) == (0.2, 0.2)
    assert shear.x_factor == pytest.approx((-0.2, 0.2))
    assert zoom.height_factor == 0.2
    assert flip.mode == "horizontal"
    assert {layer.fill_mode for layer in aug.layers[:-1]} == {"constant"}
    assert names[:-1] == [type(layer).__name__ for layer in build_augmenter({**policy, "horizontal_flip": False}).layers]


def test_augment_preview_is_reproducible(policy):
    images = np.random.default_rng(0).integers(0, 255, (2, 100, 100, 3), dtype=np.uint8)
    views = augment_preview(images, policy, n_views=3)
    assert views.shape == (2, 3, 100, 100, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, augment_preview(images, policy, n_views=3))
    assert not np.array_equal(views[:, 0], views[:, 1])
