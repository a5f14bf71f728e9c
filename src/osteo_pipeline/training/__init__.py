"""The one training loop shared by CNN21 and every baseline (see ``loop`` for how a model plugs in).

Import from the modules (``from osteo_pipeline.training.loop import cross_validate``): the package
itself imports nothing, so ``training.data`` (numpy, pandas) loads without TensorFlow.
"""
