"""train_baselines: the papers' comparison models on CNN21's folds, test split and metrics.

One template per model family, instantiated per model with a Kedro namespace:
``transfer/`` (vgg16, vgg19, resnet50, inceptionv3), ``classical/`` (svm, random_forest) and
``fusion/`` (CNN21 image features + clinical covariates).
"""

from osteo_pipeline.pipelines.train_baselines.pipeline import create_pipeline

__all__ = ["create_pipeline"]
