"""Wiring of train_cnn21 (prerequisite: `kedro run --pipelines=roi_resize,split_augment`)."""

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.pipelines.train_cnn21.nodes import cross_validate_cnn21, fit_final_cnn21
from osteo_pipeline.training.data import select_training_set

_TRAINING_INPUTS = ["augmentation_policy", "class_weights", "data_fingerprint"]
# How raw scans became model input: the registered model repeats it on raw scans (serving).
_SERVING_PARAMS = ["params:roi_resize", "params:ingest"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                select_training_set,
                inputs=["model_input_150", "split_table", "params:label_scheme"],
                outputs="cnn21_training_set",
                name="select_cnn21_training_scans",
            ),
            Node(
                cross_validate_cnn21,
                inputs=["cnn21_training_set", *_TRAINING_INPUTS, "params:train_cnn21", "params:seed"],
                outputs=["cnn21_fold_metrics", "cnn21_cv_summary", "cnn21_cv_metrics", "cnn21_fold_features"],
                name="cross_validate_cnn21",
            ),
            Node(
                fit_final_cnn21,
                inputs=["cnn21_training_set", *_TRAINING_INPUTS, "cnn21_cv_summary", "params:train_cnn21", "params:seed",
                        *_SERVING_PARAMS],
                outputs=["cnn21_model", "cnn21_final_fit"],
                name="fit_final_cnn21",
            ),
        ]
    )
