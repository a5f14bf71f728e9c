"""Model builders: each takes (input_shape, num_classes, **hyper-parameters) and returns an uncompiled keras.Model."""

from osteo_pipeline.models.cnn21 import build_cnn21

__all__ = ["build_cnn21"]
