"""Precomputed model inputs: frozen-network activations and penultimate-layer features.

``FeatureStreams`` feeds the training loop from arrays computed once (activations of a frozen
backbone, image features joined with clinical covariates) instead of from images; it has the
interface of ``training.streams.InputStreams``, so ``loop.fit_model`` trains on it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from osteo_pipeline.imaging.augment import build_augmenter
from osteo_pipeline.imaging.preprocess import scale_images
from osteo_pipeline.training.data import TrainingSet, assert_no_test_scans

logger = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeatureStreams:
    """tf.data streams over precomputed inputs of one ``TrainingSet``, row-aligned with it.

    ``clean`` (N, ...) is what validation and prediction see. ``views`` (N, K, ...), if given, holds
    K augmented versions of each row: each training epoch draws one of them per row at random
    (seeded), which stands in for on-the-fly augmentation. Arrays may be float16 (compact);
    batches come out float32.
    """

    def __init__(self, training_set: TrainingSet, clean: np.ndarray, views: np.ndarray | None = None, batch_size: int = 16):
        if len(clean) != len(training_set.labels) or (views is not None and len(views) != len(clean)):
            raise ValueError("features must have one row per training-set scan")
        self.training_set = training_set
        self.batch_size = batch_size
        self.num_classes = len(training_set.class_names)
        self.input_shape = tuple(int(d) for d in clean.shape[1:])
        self.n_views = 0 if views is None else int(views.shape[1])
        # Created once and shared by every fold's streams, like InputStreams' image tensor.
        self._clean = tf.constant(clean)
        self._views = None if views is None else tf.constant(views)
        self._labels = tf.one_hot(training_set.labels, self.num_classes)

    def _indices(self, indices: np.ndarray, shuffle_seed: int | None) -> tf.data.Dataset:
        assert_no_test_scans(self.training_set.scan_ids[indices], self.training_set.test_scan_ids)
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(indices), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds

    def train(self, indices: np.ndarray, augmentation_policy: dict[str, Any] | None, seed: int) -> tf.data.Dataset:
        """Shuffled batches; one random cached view per row and epoch when augmenting and views exist."""
        ds = self._indices(indices, shuffle_seed=seed)
        if augmentation_policy and self._views is not None:
            draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip(ds, draws).batch(self.batch_size).map(self._gather_views, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = ds.batch(self.batch_size).map(self._gather_clean, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def evaluate(self, indices: np.ndarray) -> tf.data.Dataset:
        """Ordered batches of the clean rows (validation and prediction)."""
        return self._indices(indices, shuffle_seed=None).batch(self.batch_size).map(
            self._gather_clean, num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE)

    def _gather_clean(self, i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(tf.gather(self._clean, i), tf.float32), tf.gather(self._labels, i)

    def _gather_views(self, i: tf.Tensor, draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        view = tf.math.floormod(draw, self.n_views)
        x = tf.gather_nd(self._views, tf.stack([i, view], axis=1))
        return tf.cast(x, tf.float32), tf.gather(self._labels, i)


def compact(activations: np.ndarray, what: str) -> np.ndarray:
    """float16 copy of ``activations`` (half the memory of float32), or float32 if they overflow it."""
    peak = float(np.abs(activations).max()) if activations.size else 0.0
    if peak >= FLOAT16_MAX:
        logger.warning("%s: activations reach %.3g, beyond float16; cached as float32", what, peak)
        return activations.astype(np.float32)
    return activations.astype(np.float16)


def predict_images(
    model: keras.Model, images: np.ndarray, batch_size: int, augmentation_policy: dict[str, Any] | None = None
) -> np.ndarray:
    """``model`` on uint8 images scaled to [0, 1], in order; augmented first (one seeded random
    transform per image, the training stream's augmenter) if a policy is given."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    if augmentation_policy:
        augmenter = build_augmenter(augmentation_policy)
        # sequential map: the augmenter's random stream is consumed in image order (reproducible)
        ds = ds.map(lambda x: augmenter(tf.cast(x, tf.float32)))
    ds = ds.map(scale_images, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return np.asarray(model.predict(ds, verbose=0))


def embedding_model(model: keras.Model) -> keras.Model:
    """``model`` up to the input of its output layer: the penultimate-layer features
    (CNN21: the 64-unit dense layer; dropout is inactive at inference)."""
    return keras.Model(model.inputs, model.layers[-1].input, name=f"{model.name}_features")


def embedding_table(
    model: keras.Model, images: np.ndarray, scan_ids: np.ndarray, batch_size: int = 32, **columns: Any
) -> pd.DataFrame:
    """One row per scan: ``scan_id``, the constant ``columns`` given, and features ``f00``, ``f01``..."""
    features = predict_images(embedding_model(model), images, batch_size).astype(np.float32)
    width = len(str(features.shape[1] - 1))
    table = pd.DataFrame(features, columns=[f"f{j:0{width}d}" for j in range(features.shape[1])])
    for name, value in reversed(columns.items()):
        table.insert(0, name, value)
    table.insert(0, "scan_id", np.asarray(scan_ids).astype(str))
    return table
