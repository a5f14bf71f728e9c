"""Wiring of evaluate (prerequisite: `kedro run --pipelines=train_cnn21`; baselines are optional).

``check_models`` reads every declared model (``declared_models``: CNN21 and the baselines of
parameters_train_baselines.yml) through its training pipeline's own catalog entries, so the graph
orders evaluate after training and kedro-viz draws each model into it. A baseline no run has
trained yet is reported as missing: the before-run hook gives its entries a ``NotTrained`` stand-in.
"""

from __future__ import annotations

import warnings
from typing import Any

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.evaluation.models import REFERENCE, model_artifacts
from osteo_pipeline.pipelines.declared_models import declared_models
from osteo_pipeline.pipelines.evaluate.nodes import (
    build_report,
    check_models,
    compare_models,
    compute_subgroup_metrics,
    compute_test_metrics,
    explain_predictions,
    plot_figures,
    predict_test_set,
    report_figure_files,
    select_test_scans,
    update_model_registry,
)

FIGURE_OUTPUTS = [
    "evaluate_roc_curves",
    "evaluate_confusion_matrices",
    "evaluate_training_curves",
    "evaluate_calibration",
    "evaluate_gradcam",
]


def model_inputs() -> dict[str, str]:
    """``check_models``' keyword -> catalog dataset, for every artifact of every declared model."""
    return {f"{name}__{what}": dataset for name, family in declared_models().items()
            for what, dataset in model_artifacts(name, family).items()}


def optional_model_inputs() -> set[str]:
    """What evaluate runs without: every artifact but the reference model's file and final-fit
    report (a baseline without them is reported as missing; reports that are absent are empty)."""
    required = {f"{REFERENCE}__model", f"{REFERENCE}__final_fit"}
    return {dataset for key, dataset in model_inputs().items() if key not in required}


def _check_models_node() -> Node:
    with warnings.catch_warnings():
        # The baselines' namespaced outputs (`vgg16.model`) are named on purpose: this plain node
        # reads every model, so Kedro's warning about dotted names in it is noise here.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        return Node(
            check_models,
            inputs={"data_fingerprint": "data_fingerprint", "test_set": "evaluation_test_set",
                    "label_scheme": "params:label_scheme", "params": "params:evaluate",
                    "train_baselines": "params:train_baselines", **model_inputs()},
            outputs=["evaluation_models", "evaluation_model_status"],
            name="check_models",
        )


def create_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline(
        [
            Node(
                select_test_scans,
                inputs=["model_input_150", "model_input_300", "split_table", "scan_manifest", "params:label_scheme"],
                outputs="evaluation_test_set",
                name="select_test_scans",
            ),
            _check_models_node(),
            Node(
                predict_test_set,
                inputs=["evaluation_models", "evaluation_test_set", "params:evaluate"],
                outputs="test_predictions",
                name="predict_test_set",
            ),
            Node(
                compute_test_metrics,
                inputs=["test_predictions", "params:label_scheme", "params:evaluate", "params:seed"],
                outputs="test_metrics",
                name="compute_test_metrics",
            ),
            Node(
                compute_subgroup_metrics,
                inputs=["test_predictions", "evaluation_test_set", "params:label_scheme", "params:evaluate", "params:seed"],
                outputs="subgroup_metrics",
                name="compute_subgroup_metrics",
            ),
            Node(
                compare_models,
                inputs=["test_predictions", "evaluation_models", "params:label_scheme", "params:evaluate", "params:seed"],
                outputs="model_comparison",
                name="compare_models",
            ),
            Node(
                explain_predictions,
                inputs=["evaluation_models", "evaluation_test_set", "test_predictions", "test_metrics", "params:evaluate"],
                outputs="gradcam_panels",
                name="explain_predictions",
            ),
            Node(
                plot_figures,
                inputs=["test_predictions", "test_metrics", "evaluation_models", "gradcam_panels",
                        "params:label_scheme", "params:evaluate"],
                outputs=[*FIGURE_OUTPUTS, "report_figures_base64"],
                name="plot_figures",
            ),
            Node(
                report_figure_files,
                inputs="report_figures_base64",
                outputs="report_figures",
                name="report_figure_files",
            ),
            Node(
                update_model_registry,
                inputs=["evaluation_models", "test_metrics", "data_fingerprint", "params:label_scheme", "params:evaluate"],
                outputs="registry_update",
                name="update_model_registry",
            ),
            Node(
                build_report,
                inputs=["evaluation_test_set", "evaluation_model_status", "test_metrics", "model_comparison",
                        "report_figures_base64", "ingest_report", "data_fingerprint", "split_table",
                        "params:label_scheme", "params:evaluate", "params:paper_reference", "subgroup_metrics"],
                outputs=["report_md", "report_html", "evaluation_summary", "evaluation_mlflow"],
                name="build_report",
            ),
        ]
    )
