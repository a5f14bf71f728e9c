"""Training data: the label-scheme selection of scans (the tf.data streams are ``training.streams``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from osteo_pipeline.core.labels import LabelScheme
from osteo_pipeline.core.leakage import LeakageError

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


def select_training_set(
    model_input: dict[str, np.ndarray], split_table: pd.DataFrame, label_scheme: str | LabelScheme
) -> TrainingSet:
    """Keep the train/val-partition scans whose label belongs to ``label_scheme``.

    Binary drops osteopenia scans (counted in ``counts``); the test partition is set aside whole.
    """
    scheme = LabelScheme.of(label_scheme)
    class_names = scheme.classes
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
        # Only the kept rows are read: the model input may be a lazy, memory-mapped ShardedImages.
        images=np.asarray(model_input["images"][keep]),
        labels=kept["label"].map(scheme.index()).to_numpy(dtype=np.int32),
        class_names=class_names,
        scan_ids=scan_ids[keep],
        patient_ids=kept["patient_id"].astype(str).to_numpy(),
        folds=np.where(kept["partition"] == "val", VAL_PARTITION_FOLD, kept["fold"]).astype(int),
        test_scan_ids=test_ids,
        counts={
            "label_scheme": scheme.name,
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
