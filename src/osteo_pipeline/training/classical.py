"""SVM / Random-Forest baselines through CNN21's protocol: same folds, same metrics, same MLflow runs.

Every grid point x CV fold is one nested MLflow child run (``val_auc``, ``val_accuracy``, ... as
the CNNs' runs), the grid point with the best mean validation AUC is refitted on the whole
training partition as the final model, logged with the sklearn flavour and registered. Rows of
the fold table have CNN21's columns, with ``setting`` (the grid point) where CNN21 has its
learning rate and no epochs (``best_epoch``/``epochs_run`` empty).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import ParameterGrid, PredefinedSplit, cross_validate
from sklearn.pipeline import Pipeline

from osteo_pipeline.core.metrics import classification_metrics, finite_or_none
from osteo_pipeline.models.classical import (
    SKOPS_TRUSTED_TYPES,
    Kind,
    full_probabilities,
    make_classifier,
    make_image_classifier,
    setting_label,
)
from osteo_pipeline.training import runtime, tracking
from osteo_pipeline.training.data import VAL_PARTITION_FOLD, TrainingSet, assert_no_test_scans
from osteo_pipeline.training.loop import SELECTION_METRIC, TrainingConfig
from osteo_pipeline.training.metrics import METRIC_NAMES, prefixed

logger = logging.getLogger(__name__)

FOLD_TABLE_COLUMNS = (
    "model", "setting", "fold", "n_train", "n_val", *METRIC_NAMES,
    "best_epoch", "epochs_run", "still_improving", "train_seconds", "mlflow_run_id",
)


@dataclass
class FoldFit:
    """One grid point on one CV fold: validation metrics, fit time, the fitted pipeline."""

    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    metrics: dict[str, float]
    seconds: float
    fitted: Pipeline


def cross_validate_setting(
    features: pd.DataFrame,
    labels: np.ndarray,
    folds: np.ndarray,
    kind: Kind,
    params: Mapping[str, Any],
    class_names: Sequence[str],
    seed: int = 0,
    n_jobs: int | None = None,
) -> list[FoldFit]:
    """Fit one grid point on each CV fold's training rows and score its validation rows.

    ``labels`` are class indices into ``class_names``; ``folds`` (0..k-1, one per row) define the
    splits (``PredefinedSplit``). Metrics are the project's (``core.metrics``), so the rows
    line up with the CNNs'. The scaler and imputer of every fold see that fold's training rows
    only (checked).
    """
    x = pd.DataFrame(features).reset_index(drop=True)
    y, fold_ids = np.asarray(labels, dtype=int), np.asarray(folds, dtype=int)
    if not len(x) == len(y) == len(fold_ids):
        raise ValueError("features, labels and folds must have one entry per training scan")
    if (fold_ids < 0).any():
        raise ValueError("every row needs a CV fold (0..k-1); leave the fixed val partition out")
    names = np.asarray(class_names, dtype=object)  # the last class is the positive one

    def score(estimator: Pipeline, x_val: pd.DataFrame, y_val: np.ndarray) -> dict[str, float]:
        proba = full_probabilities(estimator, x_val, len(names))
        metrics = classification_metrics(names[y_val], proba, list(names))
        return {m: float(metrics[m]) for m in METRIC_NAMES}

    out = cross_validate(
        make_classifier(kind, params, seed), x, y, cv=PredefinedSplit(fold_ids), scoring=score,
        return_estimator=True, return_indices=True, n_jobs=n_jobs, error_score="raise",
    )
    fits = []
    for i, (fold, fitted) in enumerate(zip(np.unique(fold_ids), out["estimator"], strict=True)):
        train_idx, val_idx = out["indices"]["train"][i], out["indices"]["test"][i]
        # scaling inside the fold: this fold's scaler was fitted on its training rows and no others
        assert fitted.named_steps["scale"].n_samples_seen_ == len(train_idx)
        assert (fold_ids[val_idx] == fold).all() and not (fold_ids[train_idx] == fold).any()
        metrics = {m: float(out[f"test_{m}"][i]) for m in METRIC_NAMES}
        fits.append(FoldFit(int(fold), train_idx, val_idx, metrics, float(out["fit_time"][i]), fitted))
    return fits


def _tags(config: TrainingConfig, stage: str, data_fingerprint: dict[str, Any] | None) -> dict[str, str]:
    # sklearn computes in float64 on the CPU; the tags otherwise match the CNNs' runs
    return {**tracking.environment_tags("float64", "default"), "model": config.model_name, "stage": stage,
            **tracking.fingerprint_tags(data_fingerprint or {})}


def cross_validate_grid(
    features: pd.DataFrame,
    training_set: TrainingSet,
    *,
    kind: Kind,
    grid: Mapping[str, Sequence[Any]],
    config: TrainingConfig,
    data_fingerprint: dict[str, Any] | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """One row (and one MLflow child run) per grid point x CV fold, on CNN21's folds.

    ``features`` are row-aligned with ``training_set``; scans of the fixed "val" partition (70/15/15
    split) take no part in CV, as in ``loop.cross_validate``.
    """
    if len(features) != len(training_set.labels):
        raise ValueError("features must have one row per training-set scan")
    in_cv = training_set.folds != VAL_PARTITION_FOLD
    assert_no_test_scans(training_set.scan_ids[in_cv], training_set.test_scan_ids)
    cv_rows = np.flatnonzero(in_cv)
    x, y, folds = features.iloc[cv_rows], training_set.labels[cv_rows], training_set.folds[cv_rows]
    settings = list(ParameterGrid({k: list(v) for k, v in grid.items()}))
    n_folds = len(training_set.cv_folds)
    if n_folds < 2:
        raise ValueError(f"cross-validation needs >= 2 folds in the split table, got {training_set.cv_folds}")
    rows, total, done = [], len(settings) * n_folds, 0
    for params in settings:
        label = setting_label(params)
        for fit in cross_validate_setting(x, y, folds, kind, params, training_set.class_names, config.seed, n_jobs):
            done += 1
            run_name = f"{config.model_name}-{label}-fold{fit.fold} ({done}/{total})"
            run_params = {
                **params, "kind": kind, "setting": label, "fold": fit.fold, "n_folds": n_folds, "stage": "cv",
                "n_train": len(fit.train_idx), "n_val": len(fit.val_idx), "n_features": features.shape[1],
                "class_names": ",".join(training_set.class_names), "seed": config.seed,
                "label_scheme": training_set.counts.get("label_scheme"),
            }
            with tracking.child_run(run_name, run_params, _tags(config, "cv", data_fingerprint), enabled=config.track) as run_id:
                tracking.log_metrics({**prefixed(fit.metrics, "val"), "train_seconds": fit.seconds})
            logger.info("[%s] val_auc %.3f, val_accuracy %.3f", run_name, fit.metrics["auc"], fit.metrics["accuracy"])
            rows.append({
                "model": config.model_name, "setting": label, "fold": fit.fold,
                "n_train": len(fit.train_idx), "n_val": len(fit.val_idx), **fit.metrics,
                "best_epoch": None, "epochs_run": None, "still_improving": None,  # no epochs: a fit is one pass
                "train_seconds": round(fit.seconds, 3), "mlflow_run_id": run_id,
            })
    return pd.DataFrame(rows, columns=list(FOLD_TABLE_COLUMNS))


def summarise_grid(fold_metrics: pd.DataFrame, grid: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Mean and SD of each metric per grid point and the point with the best mean validation AUC
    (first in grid order on ties; folds with an undefined AUC are skipped)."""
    metric_cols = [c for c in METRIC_NAMES if c in fold_metrics]
    grouped = fold_metrics.groupby("setting", sort=False)[metric_cols]  # sort=False: grid order
    means, sds = grouped.mean(), grouped.std(ddof=1)
    if means["auc"].isna().all():
        raise ValueError("validation AUC undefined in every fold: each fold needs scans of every class")
    best = str(means["auc"].idxmax())
    params = {setting_label(p): p for p in ParameterGrid({k: list(v) for k, v in grid.items()})}
    return {
        "selection": f"mean {SELECTION_METRIC} over {fold_metrics['fold'].nunique()} folds",
        "best_setting": best,
        "best_params": params[best],
        "by_setting": {
            s: {**{f"val_{m}_mean": finite_or_none(means.loc[s, m]) for m in metric_cols},
                **{f"val_{m}_sd": finite_or_none(sds.loc[s, m]) for m in metric_cols}}
            for s in means.index
        },
    }


def fit_final_classical(
    training_set: TrainingSet,
    *,
    kind: Kind,
    params: Mapping[str, Any],
    config: TrainingConfig,
    cv_means: Mapping[str, float | None] | None = None,
    data_fingerprint: dict[str, Any] | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit the chosen grid point on every training-partition scan, as one MLflow child run; log
    the image -> probabilities pipeline (sklearn flavour) and register it. No early stopping, so
    the fixed "val" partition, if any, is training data here."""
    assert_no_test_scans(training_set.scan_ids, training_set.test_scan_ids)
    label = setting_label(params)
    model = make_image_classifier(kind, params, config.seed)
    run_params = {
        **params, "kind": kind, "setting": label, "stage": "final", "n_train": len(training_set.labels),
        "class_names": ",".join(training_set.class_names), "seed": config.seed,
        "label_scheme": training_set.counts.get("label_scheme"),
    }
    uri = None
    with tracking.child_run(f"{config.model_name}-final-{label}", run_params, _tags(config, "final", data_fingerprint),
                            enabled=config.track) as run_id:
        start = time.perf_counter()
        model.fit(training_set.images, training_set.labels)
        seconds = time.perf_counter() - start
        # the chosen setting's CV means: the figures this model is compared on (no held-out rows here)
        tracking.log_metrics({"train_seconds": seconds, **{f"cv_{k}": v for k, v in (cv_means or {}).items() if v is not None}})
        if config.track:
            uri = tracking.log_sklearn_model(model, training_set.class_names, config.registered_model_name,
                                             training_set.images[:1], SKOPS_TRUSTED_TYPES[kind])
    logger.info("[%s] final fit on %d scans in %.1f s, RSS %.0f MB", config.model_name, len(training_set.labels),
                seconds, runtime.resident_memory_mb())
    report = {
        "model": config.model_name,
        "kind": kind,
        "setting": label,
        "params": dict(params),
        "n_train": len(training_set.labels),
        "train_seconds": round(seconds, 2),
        **{f"cv_{k}": v for k, v in (cv_means or {}).items()},
        "mlflow_run_id": run_id,
        "mlflow_model_uri": uri,
        "registered_model_name": config.registered_model_name if config.track else None,
        "class_names": list(training_set.class_names),
        **training_set.counts,
    }
    return model, report
