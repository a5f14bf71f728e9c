"""Metric names shared by every model's MLflow runs and tables, on top of the evaluate stage's metrics.

A metric is logged as ``<split>_<name>``: ``val_auc``, ``val_loss``, ``test_auc``,
``test_accuracy``... so ``mlflow ui`` lines up CNN21, the transfer-learning and the classical
baselines column by column. The computation itself lives once, in
``osteo_pipeline.core.metrics.classification_metrics`` (sklearn), shared with evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from osteo_pipeline.core.metrics import METRIC_NAMES
from osteo_pipeline.core.metrics import classification_metrics as _evaluate_metrics

SPLITS = ("train", "val", "test")
# Keras' per-epoch AUC (training curves, epoch logs) is computed over the flattened one-hot labels:
# a micro average, for two classes as for three. It is named apart from ``auc``, the fold and test
# tables' scikit-learn AUC (the positive class's, or the macro one-vs-rest), which models are chosen
# and compared on; the two differ (0.668 against 0.723 on one three-class fold).
EPOCH_AUC = "auc_micro"
EPOCH_METRICS = ("loss", "accuracy", EPOCH_AUC)

__all__ = ["EPOCH_AUC", "EPOCH_METRICS", "METRIC_NAMES", "SPLITS", "classification_metrics", "metric_key", "prefixed"]


def metric_key(split: str, name: str) -> str:
    """``metric_key("val", "auc") == "val_auc"``."""
    if split not in SPLITS or name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {split}_{name}")
    return f"{split}_{name}"


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """The scalar metrics (``METRIC_NAMES``) of class probabilities against integer labels.

    Two classes: the last (osteoporosis) is positive; more: macro averages, one-vs-rest AUC.
    ``loss`` is plain cross-entropy (no class weights, no L2), comparable across models.
    AUC is NaN when ``y_true`` holds a single class.
    """
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_prob = y_prob / y_prob.sum(axis=1, keepdims=True)  # float32 softmax rows miss 1 by ~1e-7
    names = np.asarray(class_names, dtype=object)[np.asarray(y_true, dtype=int)]
    full = _evaluate_metrics(names, y_prob, list(class_names))
    return {name: float(full[name]) for name in METRIC_NAMES}


def prefixed(metrics: dict[str, float], split: str) -> dict[str, float]:
    """Name metrics for a split: ``{"auc": .9} -> {"val_auc": .9}``."""
    return {metric_key(split, k): v for k, v in metrics.items()}
