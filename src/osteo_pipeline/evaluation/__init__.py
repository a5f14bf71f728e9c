"""Evaluation: metrics, patient-bootstrap confidence intervals and paired model comparisons."""

from osteo_pipeline.evaluation.stats import (
    METRIC_NAMES,
    BootstrapCI,
    BootstrapDifference,
    DeLongResult,
    McNemarResult,
    PairedTTest,
    bootstrap_auc_difference,
    bootstrap_ci,
    classification_metrics,
    delong_covariance,
    delong_test,
    holm,
    mcnemar_exact,
    midrank_auc,
    paired_ttest,
)

__all__ = [
    "METRIC_NAMES",
    "BootstrapCI",
    "BootstrapDifference",
    "DeLongResult",
    "McNemarResult",
    "PairedTTest",
    "bootstrap_auc_difference",
    "bootstrap_ci",
    "classification_metrics",
    "delong_covariance",
    "delong_test",
    "holm",
    "mcnemar_exact",
    "midrank_auc",
    "paired_ttest",
]
