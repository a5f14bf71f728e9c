"""train_baselines / fusion: CNN21 image features + clinical covariates in a small dense head
(second paper), trained by the one training loop on CNN21's folds; label-defining covariates refused."""

from osteo_pipeline.pipelines.train_baselines.fusion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
