"""evaluate: every trained model on the held-out test partition, CNN21 against the baselines, report."""

from osteo_pipeline.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
