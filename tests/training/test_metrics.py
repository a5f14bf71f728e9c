"""Shared metric names and the integer-label view of the evaluation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from osteo_pipeline.training.metrics import METRIC_NAMES, classification_metrics, metric_key, prefixed


def test_binary_metrics_by_hand():
    # 3 normal, 5 osteoporosis; predictions: TN=2, FP=1, TP=4, FN=1
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.6, 0.55, 0.3], dtype=np.float32)
    m = classification_metrics(y, np.column_stack([1 - p1, p1]), ("normal", "osteoporosis"))
    assert set(m) == set(METRIC_NAMES)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert m["auc"] == pytest.approx(12 / 15)  # 0.7 (normal) outranks 0.6, 0.55, 0.3: 12 of 15 pairs right
    assert m["loss"] == pytest.approx(-np.mean(np.log(np.where(y == 1, p1, 1 - p1))), rel=1e-5)


def test_three_class_and_single_class_auc():
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ("normal", "osteopenia", "osteoporosis"))
    assert m["accuracy"] == pytest.approx(0.75) and 0 < m["auc"] <= 1
    single = classification_metrics(np.array([1, 1]), np.array([[0.4, 0.6], [0.3, 0.7]]), ("normal", "osteoporosis"))
    assert math.isnan(single["auc"])


def test_names_are_shared():
    assert metric_key("val", "auc") == "val_auc" and metric_key("test", "accuracy") == "test_accuracy"
    assert prefixed({"auc": 0.9, "loss": 0.3}, "val") == {"val_auc": 0.9, "val_loss": 0.3}
    with pytest.raises(ValueError):
        metric_key("val", "AUC")
