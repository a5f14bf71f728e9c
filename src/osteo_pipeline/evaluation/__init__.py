"""Evaluation: patient-bootstrap confidence intervals, paired model comparisons, figures and the report.

Import from the modules (``from osteo_pipeline.evaluation.stats import bootstrap_ci``): the package
itself imports nothing, so a light module never pays for scipy or TensorFlow.
"""
