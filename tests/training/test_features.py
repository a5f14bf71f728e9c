"""Precomputed inputs: compact storage, streams that draw cached views, never a test scan."""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import pytest

from osteo_pipeline.training.data import DataLeakageError, select_training_set
from osteo_pipeline.training.features import FeatureStreams, compact, embedding_table, predict_images


@pytest.fixture(scope="module")
def training_set(inputs):
    return select_training_set(*inputs, "binary")


def _features(n: int, k: int):
    """Row i's clean features are all i; its view v all 1000 * (v + 1) + i: any row or view mix-up shows."""
    rows = np.arange(n, dtype=np.float16)[:, None]
    clean = np.repeat(rows, 3, axis=1)
    views = np.stack([clean + 1000 * (v + 1) for v in range(k)], axis=1)
    return clean, views


def test_training_batches_draw_one_cached_view_per_row_and_validation_the_clean_rows(training_set, policy):
    n = len(training_set.labels)
    clean, views = _features(n, k=3)
    streams = FeatureStreams(training_set, clean, views, batch_size=5)
    assert streams.input_shape == (3,) and streams.n_views == 3
    idx = np.arange(0, n, 2)
    drawn = []
    for _ in range(2):  # two epochs
        for x, y in streams.train(idx, policy, seed=1):
            assert x.dtype == "float32"
            row = np.asarray(x[:, 0]) % 1000
            view = np.asarray(x[:, 0]) // 1000 - 1
            assert set(row.astype(int)) <= set(idx) and set(view.astype(int)) <= {0, 1, 2}
            np.testing.assert_array_equal(np.asarray(y).argmax(1), training_set.labels[row.astype(int)])
            drawn += list(view)
    assert set(drawn) == {0, 1, 2}  # every view gets used
    no_policy = np.concatenate([np.asarray(x) for x, _ in streams.train(idx, None, seed=1)])
    assert sorted(no_policy[:, 0]) == list(idx)  # not augmenting: the clean rows, shuffled
    ordered = np.concatenate([np.asarray(x) for x, _ in streams.evaluate(idx)])
    np.testing.assert_array_equal(ordered[:, 0], idx)


def test_a_test_partition_scan_never_enters_a_stream(training_set):
    clean, _ = _features(len(training_set.labels), k=1)
    leaky = dataclasses.replace(training_set, test_scan_ids=frozenset({str(training_set.scan_ids[0])}))
    streams = FeatureStreams(leaky, clean)
    with pytest.raises(DataLeakageError):
        streams.evaluate(np.arange(3))
    streams.evaluate(np.arange(1, 3))  # the other scans stream
    with pytest.raises(ValueError, match="one row per"):
        FeatureStreams(training_set, clean[:-1])


def test_compact_halves_storage_unless_float16_would_overflow(caplog):
    small = np.linspace(-3, 3, 12, dtype=np.float32)
    assert compact(small, "x").dtype == np.float16
    with caplog.at_level(logging.WARNING):
        assert compact(small * 1e5, "huge").dtype == np.float32
    assert "beyond float16" in caplog.text


def test_predict_images_scales_and_augments_reproducibly(training_set, policy):
    images = training_set.images[:6]
    mean = keras.Sequential([keras.Input((100, 100, 3)), keras.layers.GlobalAveragePooling2D()])
    clean = predict_images(mean, images, batch_size=4)
    np.testing.assert_allclose(clean, images.astype(np.float64).mean(axis=(1, 2)) / 255.0, rtol=1e-4)
    first = predict_images(mean, images, 4, policy)
    assert not np.allclose(first, clean, atol=1e-3)
    np.testing.assert_allclose(predict_images(mean, images, 4, policy), first)  # the seed replays the views
    table = embedding_table(keras.Sequential([mean, keras.layers.Dense(2)]), images, training_set.scan_ids[:6], fold=1)
    assert list(table.columns) == ["scan_id", "fold", "f0", "f1", "f2"]
    np.testing.assert_allclose(table[["f0", "f1", "f2"]].to_numpy(), clean, rtol=1e-4)
