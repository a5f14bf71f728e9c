"""Nodes of train_cnn21: cross-validate CNN21 over the learning-rate grid, fit the final model.

TensorFlow is imported inside the nodes, so loading the pipeline (``kedro registry list``,
``kedro viz``) does not pay for it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import keras

    from osteo_pipeline.training.data import TrainingSet
    from osteo_pipeline.training.loop import TrainingConfig

MODEL_NAME = "cnn21"


def _builder_and_config(params: dict[str, Any], seed: int) -> tuple[partial, TrainingConfig]:
    from osteo_pipeline.models.cnn21 import build_cnn21
    from osteo_pipeline.training.loop import TrainingConfig

    config = TrainingConfig.from_params(params["training"], seed=seed, model_name=MODEL_NAME)
    return partial(build_cnn21, **params["model"]), config


def cross_validate_cnn21(
    training_set: TrainingSet,
    augmentation_policy: dict[str, Any],
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    params: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, dict[str, float]], pd.DataFrame]:
    """Per-fold metrics for each learning rate, the CV summary with the chosen rate, the
    chosen rate's CV means as parent-run metrics, and each fold model's image features
    (penultimate layer) of every training-partition scan."""
    from osteo_pipeline.training.features import embedding_table
    from osteo_pipeline.training.loop import cross_validate, cv_outputs, summarise_cv

    builder, config = _builder_and_config(params, seed)
    features: list[pd.DataFrame] = []

    def take_features(model: keras.Model, learning_rate: float, fold: int) -> None:
        # Every training-partition scan through this fold's model: the fusion baseline trains on
        # the fold's training rows and validates on its held-out rows, never seen by this model.
        features.append(embedding_table(model, training_set.images, training_set.scan_ids,
                                        batch_size=config.batch_size, learning_rate=learning_rate, fold=fold))

    fold_metrics = cross_validate(
        builder, training_set, config=config, augmentation_policy=augmentation_policy,
        class_weights=class_weights, data_fingerprint=data_fingerprint, on_fold_trained=take_features,
    )
    summary, parent_metrics = cv_outputs(summarise_cv(fold_metrics), training_set, data_fingerprint)
    return fold_metrics, summary, parent_metrics, pd.concat(features, ignore_index=True)


def fit_final_cnn21(
    training_set: TrainingSet,
    augmentation_policy: dict[str, Any],
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    cv_summary: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    roi_resize: dict[str, Any],
    ingest: dict[str, Any],
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit CNN21 at the chosen learning rate on the whole training partition; model and report.
    The registered model takes raw scans, preprocessed with ``roi_resize``'s settings and ingest's limits."""
    from osteo_pipeline.serving.preprocessing import preprocessing_settings
    from osteo_pipeline.training.loop import final_fit

    builder, config = _builder_and_config(params, seed)
    return final_fit(
        builder, training_set, learning_rate=cv_summary["best_learning_rate"], config=config,
        augmentation_policy=augmentation_policy, class_weights=class_weights, data_fingerprint=data_fingerprint,
        preprocessing=preprocessing_settings(roi_resize, ingest),
    )
