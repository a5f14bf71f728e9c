"""train_baselines / classical: SVM (RBF) and Random Forest on handcrafted intensity and texture
features (second paper), on CNN21's folds, metrics and MLflow runs; one namespace per model."""

from osteo_pipeline.pipelines.train_baselines.classical.pipeline import create_pipeline

__all__ = ["create_pipeline"]
