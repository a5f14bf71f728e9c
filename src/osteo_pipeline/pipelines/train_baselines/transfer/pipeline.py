"""The transfer-learning template, instantiated per backbone by ``train_baselines.pipeline``.

Names here are the template's: under namespace ``vgg16`` its outputs become ``vgg16.fold_metrics``,
... (conf/base/catalog_train_baselines.yml) and ``params:model`` the ``train_baselines.vgg16`` block.
"""

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.pipelines.train_baselines.transfer.nodes import (
    cache_frozen_activations,
    cross_validate_transfer,
    fit_final_transfer,
)
from osteo_pipeline.training.data import select_training_set

_TRAINING_INPUTS = ["augmentation_policy", "class_weights", "data_fingerprint"]
_PARAMS = ["params:model", "params:train_baselines", "params:seed"]
# How raw scans became model input: the registered model repeats it on raw scans (serving).
_SERVING_PARAMS = ["params:roi_resize", "params:ingest"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                select_training_set,
                inputs=["model_input_300", "split_table", "params:label_scheme"],
                outputs="training_set",
                name="select_training_scans",
            ),
            Node(
                cache_frozen_activations,
                inputs=["training_set", "augmentation_policy", *_PARAMS],
                outputs=["frozen_activations", "baseline_info"],
                name="cache_frozen_activations",
            ),
            Node(
                cross_validate_transfer,
                inputs=["frozen_activations", *_TRAINING_INPUTS, *_PARAMS],
                outputs=["fold_metrics", "cv_summary", "cv_metrics"],
                name="cross_validate",
            ),
            Node(
                fit_final_transfer,
                inputs=["frozen_activations", *_TRAINING_INPUTS, "cv_summary", *_PARAMS, *_SERVING_PARAMS],
                outputs=["model", "final_fit"],
                name="fit_final",
            ),
        ]
    )
