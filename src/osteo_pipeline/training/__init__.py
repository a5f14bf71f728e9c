"""The one training loop shared by CNN21 and every baseline (see ``loop`` for how a model plugs in)."""

from osteo_pipeline.training.data import CLASS_SCHEMES, DataLeakageError, InputStreams, TrainingSet, select_training_set
from osteo_pipeline.training.loop import (
    FitResult,
    ModelBuilder,
    TrainingConfig,
    cross_validate,
    final_fit,
    fit_model,
    summarise_cv,
)
from osteo_pipeline.training.metrics import METRIC_NAMES, classification_metrics, metric_key

__all__ = [
    "CLASS_SCHEMES",
    "METRIC_NAMES",
    "DataLeakageError",
    "FitResult",
    "InputStreams",
    "ModelBuilder",
    "TrainingConfig",
    "TrainingSet",
    "classification_metrics",
    "cross_validate",
    "final_fit",
    "fit_model",
    "metric_key",
    "select_training_set",
    "summarise_cv",
]
