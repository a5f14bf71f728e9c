"""Wiring of the ``split_augment`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import augmentation_policy, augmentation_preview, class_weights, data_fingerprint, split_patients


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(split_patients, ["scan_manifest", "params:split", "params:seed"], "split_table", name="split_patients"),
            Node(class_weights, "split_table", "class_weights", name="class_weights"),
            Node(augmentation_policy, ["params:augmentation", "params:seed"], "augmentation_policy",
                 name="augmentation_policy"),
            Node(
                augmentation_preview,
                ["model_input_150", "split_table", "augmentation_policy",
                 "params:augmentation.preview_scans", "params:augmentation.preview_views"],
                "augmentation_preview",
                name="augmentation_preview",
            ),
            Node(data_fingerprint, ["scan_manifest", "split_table", "params:seed"], "data_fingerprint",
                 name="data_fingerprint"),
        ]
    )
