"""The tf.data input streams over one training set.

Images stay uint8 in one host tensor per training set; each stream gathers a batch by index,
augments it (training stream only), scales it to [0, 1] and prefetches. Folds and epochs reuse
that one tensor, so memory does not grow with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from osteo_pipeline.imaging.augment import build_augmenter
from osteo_pipeline.imaging.preprocess import scale_images
from osteo_pipeline.training.data import TrainingSet, assert_no_test_scans


class InputStreams:
    """tf.data streams over one ``TrainingSet``, sharing a single uint8 image tensor."""

    def __init__(self, training_set: TrainingSet, batch_size: int):
        self.training_set = training_set
        self.batch_size = batch_size
        self.num_classes = len(training_set.class_names)
        self.input_shape = tuple(int(d) for d in training_set.images.shape[1:])  # what the model takes
        # Created once: every fold's streams gather from it instead of copying arrays.
        self._images = tf.constant(training_set.images, dtype=tf.uint8)
        self._labels = tf.one_hot(training_set.labels, self.num_classes)

    def _batches(self, indices: np.ndarray, shuffle_seed: int | None) -> tf.data.Dataset:
        assert_no_test_scans(self.training_set.scan_ids[indices], self.training_set.test_scan_ids)
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(indices), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.batch(self.batch_size).map(
            lambda i: (tf.cast(tf.gather(self._images, i), tf.float32), tf.gather(self._labels, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def train(self, indices: np.ndarray, augmentation_policy: dict[str, Any] | None, seed: int) -> tf.data.Dataset:
        """Shuffled, augmented (if a policy is given), scaled batches; reshuffled every epoch."""
        ds = self._batches(indices, shuffle_seed=seed)
        if augmentation_policy:
            augmenter = build_augmenter(augmentation_policy)
            # Sequential map (no num_parallel_calls): the augmenter's RNG state advances in
            # batch order, so a seeded run replays the same augmentations.
            ds = ds.map(lambda x, y: (augmenter(x, training=True), y))
        return ds.map(_scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def evaluate(self, indices: np.ndarray) -> tf.data.Dataset:
        """Ordered, scaled batches, never augmented (validation and prediction)."""
        return self._batches(indices, shuffle_seed=None).map(_scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )


def _scale(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return scale_images(images), labels
