"""Training data: the label-scheme selection of scans and the tf.data input streams.

Images stay uint8 in one host tensor per training set; each stream gathers a batch by index,
augments it (training stream only), scales it to [0, 1] and prefetches. Folds and epochs reuse
that one tensor, so memory does not grow with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from osteo_pipeline.imaging.augment import build_augmenter
from osteo_pipeline.leakage import LeakageError

CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    "binary": ("normal", "osteoporosis"),
    "three_class": ("normal", "osteopenia", "osteoporosis"),
}
# Fold value of scans in the fixed "val" partition (70/15/15 split variant): never a CV fold,
# they serve as the final fit's early-stopping set.
VAL_PARTITION_FOLD = -1


# One leakage exception for the project: split_augment and training raise the same kind.
DataLeakageError = LeakageError


@dataclass(frozen=True)
class TrainingSet:
    """Training (and fixed validation) scans of one label scheme, aligned row by row."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int class index into class_names
    class_names: tuple[str, ...]
    scan_ids: np.ndarray
    patient_ids: np.ndarray
    folds: np.ndarray  # CV fold, or VAL_PARTITION_FOLD for the "val" partition
    test_scan_ids: frozenset[str]  # held out: must never be streamed
    counts: dict[str, Any] = field(default_factory=dict)  # for the report

    @property
    def cv_folds(self) -> list[int]:
        return sorted(int(f) for f in np.unique(self.folds) if f != VAL_PARTITION_FOLD)


def assert_no_test_scans(scan_ids: np.ndarray, test_scan_ids: frozenset[str]) -> None:
    """Raise ``DataLeakageError`` if any of ``scan_ids`` belongs to the test partition."""
    leaked = test_scan_ids.intersection(map(str, scan_ids))
    if leaked:
        raise DataLeakageError(f"{len(leaked)} test-partition scans in a training stream, e.g. {sorted(leaked)[:3]}")


def select_training_set(model_input: dict[str, np.ndarray], split_table: pd.DataFrame, label_scheme: str) -> TrainingSet:
    """Keep the train/val-partition scans whose label belongs to ``label_scheme``.

    Binary drops osteopenia scans (counted in ``counts``); the test partition is set aside whole.
    """
    if label_scheme not in CLASS_SCHEMES:
        raise ValueError(f"label_scheme must be one of {sorted(CLASS_SCHEMES)}, got {label_scheme!r}")
    class_names = CLASS_SCHEMES[label_scheme]
    table = split_table.set_index("scan_id")
    scan_ids = np.asarray(model_input["scan_id"]).astype(str)
    missing = set(scan_ids) - set(table.index)
    if missing:
        raise ValueError(f"{len(missing)} scans of the model input are not in the split table, e.g. {sorted(missing)[:3]}")
    rows = table.loc[scan_ids]
    in_training = rows["partition"].isin(["train", "val"]).to_numpy()
    in_scheme = rows["label"].isin(class_names).to_numpy()
    keep = in_training & in_scheme
    kept = rows[keep]
    test_ids = frozenset(table.index[table["partition"] == "test"].astype(str))
    training_set = TrainingSet(
        images=np.asarray(model_input["images"])[keep],
        labels=kept["label"].map({c: i for i, c in enumerate(class_names)}).to_numpy(dtype=np.int32),
        class_names=class_names,
        scan_ids=scan_ids[keep],
        patient_ids=kept["patient_id"].astype(str).to_numpy(),
        folds=np.where(kept["partition"] == "val", VAL_PARTITION_FOLD, kept["fold"]).astype(int),
        test_scan_ids=test_ids,
        counts={
            "label_scheme": label_scheme,
            "n_training_scans": int(keep.sum()),
            "n_training_patients": int(kept["patient_id"].nunique()),
            "n_excluded_out_of_scheme": int((in_training & ~in_scheme).sum()),
            "excluded_labels": sorted(rows.loc[in_training & ~in_scheme, "label"].unique().tolist()),
            "n_test_scans_held_out": int((~in_training).sum()),
            "class_counts": kept["label"].value_counts().reindex(class_names, fill_value=0).astype(int).to_dict(),
        },
    )
    assert_no_test_scans(training_set.scan_ids, test_ids)
    return training_set


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


def scale_images(images: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Pixel scaling the models expect: [0, 255] -> [0, 1] float32 (also for serving)."""
    return tf.cast(images, tf.float32) / 255.0
