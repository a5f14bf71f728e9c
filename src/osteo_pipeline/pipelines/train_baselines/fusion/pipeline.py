"""Wiring of the fusion template (namespace ``fusion``; needs train_cnn21's outputs)."""

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.pipelines.train_baselines.fusion.nodes import (
    cross_validate_fusion,
    fit_final_fusion,
    prepare_covariates,
)
from osteo_pipeline.training.data import select_training_set

_TRAINING_INPUTS = ["training_set", "covariates", "class_weights", "data_fingerprint"]
_SETTINGS = ["params:model", "params:train_baselines", "params:seed"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                select_training_set,
                inputs=["model_input_150", "split_table", "params:label_scheme"],
                outputs="training_set",
                name="select_training_scans",
            ),
            Node(
                prepare_covariates,
                inputs=["params:model", "training_set", "scan_manifest"],
                outputs=["covariates", "covariate_report"],
                name="prepare_covariates",
            ),
            Node(
                cross_validate_fusion,
                inputs=[*_TRAINING_INPUTS, "covariate_report", "cnn21_fold_features", "cnn21_cv_summary", *_SETTINGS],
                outputs=["fold_metrics", "cv_summary", "cv_metrics"],
                name="cross_validate",
            ),
            Node(
                fit_final_fusion,
                inputs=[*_TRAINING_INPUTS, "cnn21_model", "cnn21_final_fit", "cv_summary", *_SETTINGS],
                outputs=["model", "final_fit", "baseline_info"],
                name="fit_final",
            ),
        ]
    )
