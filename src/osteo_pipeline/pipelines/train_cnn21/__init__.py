"""train_cnn21: the paper's 21-layer CNN, cross-validated and fitted by its protocol, tracked in MLflow."""

from osteo_pipeline.pipelines.train_cnn21.pipeline import create_pipeline

__all__ = ["create_pipeline"]
