"""Nodes of train_baselines / classical: handcrafted features, grid CV on CNN21's folds, final fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from osteo_pipeline.training.data import TrainingSet


def extract_features(training_set: TrainingSet) -> pd.DataFrame:
    """Intensity, histogram, GLCM and LBP features of every training scan (row-aligned, stateless)."""
    from osteo_pipeline.models.classical import handcrafted_features

    return handcrafted_features(training_set.images)


def cross_validate_classical(
    features: pd.DataFrame,
    training_set: TrainingSet,
    data_fingerprint: dict[str, Any],
    model: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, dict[str, float]]]:
    """Per-fold metrics of every grid point, the CV summary with the chosen point, and the chosen
    point's CV means as parent-run metrics."""
    from osteo_pipeline.training.classical import cross_validate_grid, summarise_grid
    from osteo_pipeline.training.loop import TrainingConfig, cv_outputs

    config = TrainingConfig.for_model(baselines["training"], model, seed)
    fold_metrics = cross_validate_grid(
        features, training_set, kind=model["kind"], grid=model["grid"], config=config,
        data_fingerprint=data_fingerprint, n_jobs=model.get("n_jobs"),
    )
    summary = {
        **summarise_grid(fold_metrics, model["grid"]),
        "kind": model["kind"],
        "features": {"n": int(features.shape[1]), "names": list(features.columns)},
    }
    return fold_metrics, *cv_outputs(summary, training_set, data_fingerprint)


def fit_final_classical_model(
    training_set: TrainingSet,
    data_fingerprint: dict[str, Any],
    cv_summary: dict[str, Any],
    model: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[Pipeline, dict[str, Any], dict[str, Any]]:
    """The chosen grid point fitted on the whole training partition; its report; what evaluate needs."""
    from osteo_pipeline.training.classical import fit_final_classical
    from osteo_pipeline.training.loop import TrainingConfig

    config = TrainingConfig.for_model(baselines["training"], model, seed)
    fitted, report = fit_final_classical(
        training_set, kind=model["kind"], params=cv_summary["best_params"], config=config,
        cv_means=cv_summary["by_setting"][cv_summary["best_setting"]], data_fingerprint=data_fingerprint,
    )
    info = {
        "model": model["name"],
        "family": "classical",
        "kind": model["kind"],
        "setting": cv_summary["best_setting"],
        "input": {"dtype": "uint8", "shape": [int(d) for d in training_set.images.shape[1:]],
                  "source": "model_input_150 (not scaled: the features are computed from uint8 pixels)"},
        "predict": "model.predict_proba(images) -> one column per class, in class_names order",
        "class_names": list(training_set.class_names),
        "warnings": [],
    }
    return fitted, report, info
