"""Scheme selection, leakage guard and input streams (augmentation on training batches only)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from osteo_pipeline.imaging.augment import augment_preview, build_augmenter
from osteo_pipeline.training.data import DataLeakageError, select_training_set
from osteo_pipeline.training.streams import InputStreams




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


def test_augmenter_draws_within_the_policy(policy):
    aug = build_augmenter(policy)
    t = aug.sample_transforms(4000, 150.0, 150.0).numpy()
    linear = t[:, [0, 1, 3, 4]].reshape(-1, 2, 2)
    # |det| = zoom^2 (rotation, shear and flips keep area): zoom within 0.8-1.2
    zoom = np.sqrt(np.abs(np.linalg.det(linear)))
    assert 0.8 <= zoom.min() < 0.85 and 1.15 < zoom.max() <= 1.2
    # rotation angle of the first column (flip-corrected): within +-40 degrees, and uses the range
    flip = np.sign(np.linalg.det(linear))
    angle = np.degrees(np.arctan2(linear[:, 1, 0] * flip, linear[:, 0, 0] * flip))
    assert np.abs(angle).max() <= 40.0 + 1e-3 and np.abs(angle).max() > 38
    assert 0.4 < (flip < 0).mean() < 0.6  # horizontal flip half of the time
    # shifts: the centre moves by at most 20 % of the size (plus what rotation/zoom do about it)
    centre = 74.5
    shift = t[:, [2, 5]] - (centre - linear @ np.array([centre, centre]))
    assert np.abs(shift).max() <= 0.2 * 150 + 1e-3 and np.abs(shift).max() > 0.18 * 150
    np.testing.assert_allclose(aug.sample_transforms(3, 150.0, 150.0)[:, 6:], 0.0)  # affine, not projective


def test_augmenter_pieces_move_pixels_as_expected():
    dot = np.zeros((8, 50, 60, 1), np.float32)
    dot[:, 20, 30, 0] = 255.0
    assert np.array_equal(build_augmenter({"seed": 1})(dot).numpy(), dot)  # empty policy: identity
    flipped = build_augmenter({"horizontal_flip": True, "seed": 0})(dot).numpy()
    columns = {int(np.argwhere(f[..., 0] > 100)[0][1]) for f in flipped}
    assert columns == {30, 29}  # x -> 59 - x, vertical position kept
    np.testing.assert_array_equal(build_augmenter({"rotation_deg": 40})(dot, training=False), dot)


def test_augment_preview_is_reproducible(policy):
    images = np.random.default_rng(0).integers(0, 255, (2, 100, 100, 3), dtype=np.uint8)
    views = augment_preview(images, policy, n_views=3)
    assert views.shape == (2, 3, 100, 100, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, augment_preview(images, policy, n_views=3))
    assert not np.array_equal(views[:, 0], views[:, 1])
