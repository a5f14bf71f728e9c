"""Transfer-learning baselines (paper 1, section 3.3): one template for VGG16, VGG19, ResNet50, InceptionV3."""

from osteo_pipeline.pipelines.train_baselines.transfer.pipeline import create_pipeline

__all__ = ["create_pipeline"]
