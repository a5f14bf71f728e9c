"""Classification metrics, computed one way for every model: the fold tables training chooses
by, the test tables evaluate reports, and the external validation.

Conventions: ``classes`` lists the labels in the column order of ``proba``; in binary problems the
positive class is the last one (osteoporosis), so sensitivity = recall of ``classes[-1]`` and the
ROC-AUC is computed on its probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Scalar metrics shared by every model's fold and test tables (prefixed ``val_`` / ``test_`` there).
METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "loss")


def finite_or_none(value: Any) -> float | None:
    """JSON-safe number: NaN, inf, None and non-numbers -> None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def as_proba_matrix(proba: Any, n_classes: int) -> np.ndarray:
    """(n, k) probabilities; a 1-d binary input is the positive (last) class's probability."""
    p = np.asarray(proba, dtype=float)
    if p.ndim == 1:
        if n_classes != 2:
            raise ValueError("a 1-d probability vector is only meaningful for two classes")
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba must have shape (n, {n_classes}), got {p.shape}")
    return p


def midrank_auc(y_positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney midrank formula (ties count one half); fast enough for bootstraps."""
    pos = np.asarray(y_positive, dtype=bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: the core package loads without scipy and scikit-learn

    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[pos].sum() - m * (m + 1) / 2) / (m * n))


def classification_metrics(y_true: Any, proba: Any, classes: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC, log loss and confusion matrix.

    Predictions are the arg-max class. Binary: precision/recall/F1/specificity of the positive
    (last) class and the AUC of its probability. More classes: macro averages over classes, with
    specificity TN/(TN+FP) one-vs-rest and the one-vs-rest macro ROC-AUC. ``per_class`` holds the
    one-vs-rest figures of every class; ``loss`` is the log loss (the CNN's cross-entropy).
    AUC is NaN where ``y_true`` holds a single class.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = list(classes)
    y = np.asarray(y_true)
    p = as_proba_matrix(proba, len(classes))
    y_pred = np.asarray(classes, dtype=object)[p.argmax(axis=1)]
    y_obj = y.astype(object)

    prec, rec, f1, support = precision_recall_fscore_support(
        y_obj, y_pred, labels=classes, average=None, zero_division=0
    )
    # Rows of each 2x2 matrix: [[TN, FP], [FN, TP]] for "this class vs the rest".
    mcm = multilabel_confusion_matrix(y_obj, y_pred, labels=classes)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    spec = np.divide(tn, tn + fp, out=np.zeros(len(classes)), where=(tn + fp) > 0)
    auc_k = [midrank_auc(y == c, p[:, k]) for k, c in enumerate(classes)]

    present = np.isin(classes, y)
    if present.sum() < 2:
        auc = float("nan")
    elif len(classes) == 2:
        auc = float(roc_auc_score(y == classes[-1], p[:, -1]))
    elif present.all():
        auc = float(roc_auc_score(y_obj, p, multi_class="ovr", average="macro", labels=classes))
    else:  # sklearn's ovr refuses absent classes; average the ones that can be scored
        auc = float(np.nanmean(auc_k))

    pick = slice(-1, None) if len(classes) == 2 else slice(None)  # binary: the positive class only
    return {
        "n": int(y.size),
        "classes": classes,
        "accuracy": float(accuracy_score(y_obj, y_pred)),
        "precision": float(np.mean(prec[pick])),
        "recall": float(np.mean(rec[pick])),
        "specificity": float(np.mean(spec[pick])),
        "f1": float(np.mean(f1[pick])),
        "auc": auc,
        "loss": float(log_loss(y_obj, p, labels=classes)),
        "confusion_matrix": confusion_matrix(y_obj, y_pred, labels=classes).tolist(),
        "per_class": {
            str(c): {
                "precision": float(prec[k]),
                "recall": float(rec[k]),
                "specificity": float(spec[k]),
                "f1": float(f1[k]),
                "auc": float(auc_k[k]),
                "support": int(support[k]),
            }
            for k, c in enumerate(classes)
        },
    }
