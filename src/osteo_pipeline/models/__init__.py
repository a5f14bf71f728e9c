"""Model builders, one module per family (``cnn21``, ``backbones``, ``classical``, ``fusion``).

A Keras builder takes ``(input_shape, num_classes, **hyper_parameters)`` and returns an uncompiled
model with a softmax output; the training loop (``osteo_pipeline.training``) does the rest.
Import from the module (``from osteo_pipeline.models.cnn21 import build_cnn21``): the package
imports nothing, so the classical models do not pay for importing TensorFlow.
"""
