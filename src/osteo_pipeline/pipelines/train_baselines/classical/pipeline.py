"""Wiring of the classical template (instantiated as svm and random_forest by train_baselines)."""

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.pipelines.train_baselines.classical.nodes import (
    cross_validate_classical,
    extract_features,
    fit_final_classical_model,
)
from osteo_pipeline.training.data import select_training_set

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
            Node(extract_features, inputs="training_set", outputs="features", name="extract_features"),
            Node(
                cross_validate_classical,
                inputs=["features", "training_set", "data_fingerprint", *_SETTINGS],
                outputs=["fold_metrics", "cv_summary", "cv_metrics"],
                name="cross_validate",
            ),
            Node(
                fit_final_classical_model,
                inputs=["training_set", "data_fingerprint", "cv_summary", *_SETTINGS],
                outputs=["sklearn_model", "final_fit", "baseline_info"],
                name="fit_final",
            ),
        ]
    )
