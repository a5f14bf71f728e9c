"""Wiring of evaluate (prerequisite: `kedro run --pipelines=train_cnn21`; baselines are optional).

The trained models come in through one collection dataset (``trained_models``), so a run after
``train_cnn21`` alone evaluates CNN21 alone. ``cnn21_final_fit`` is also a declared input: it
orders evaluate after train_cnn21 in a combined run, and the before-run hook names train_cnn21
when it is missing. Kedro orders nodes by datasets only, so a combined run that also trains
baselines must say so: ``create_pipeline(after=<training pipeline>)`` makes the first node wait
for that pipeline's ``*final_fit`` outputs (pipeline_registry does it for ``__default__``).
"""

from __future__ import annotations

import warnings
from typing import Any

from kedro.pipeline import Node, Pipeline

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
)

FIGURE_OUTPUTS = [
    "evaluate_roc_curves",
    "evaluate_confusion_matrices",
    "evaluate_training_curves",
    "evaluate_calibration",
    "evaluate_gradcam",
]


def training_outputs(after: Pipeline | None) -> list[str]:
    """The final-fit reports of ``after`` that evaluate must wait for (ordering only)."""
    if after is None:
        return []
    return sorted(n for n in after.all_outputs() if n.split(".")[-1].endswith("final_fit") and n != "cnn21_final_fit")


def _check_models_node(after: Pipeline | None) -> Node:
    with warnings.catch_warnings():
        # The baselines' namespaced outputs (`vgg16.final_fit`) are named on purpose: they only
        # order this node, so Kedro's warning about dotted names in a plain node is noise here.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        return Node(
            check_models,
            inputs=["trained_models", "cnn21_final_fit", "data_fingerprint", "evaluation_test_set",
                    "params:label_scheme", "params:evaluate", *training_outputs(after)],
            outputs=["evaluation_models", "evaluation_model_status"],
            name="check_models",
        )


def create_pipeline(after: Pipeline | None = None, **kwargs: Any) -> Pipeline:
    return Pipeline(
        [
            Node(
                select_test_scans,
                inputs=["model_input_150", "model_input_300", "split_table", "scan_manifest", "params:label_scheme"],
                outputs="evaluation_test_set",
                name="select_test_scans",
            ),
            _check_models_node(after),
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
                build_report,
                inputs=["evaluation_test_set", "evaluation_model_status", "test_metrics", "model_comparison",
                        "report_figures_base64", "ingest_report", "data_fingerprint", "split_table",
                        "params:label_scheme", "params:evaluate", "params:paper_reference", "subgroup_metrics"],
                outputs=["report_md", "report_html", "evaluation_summary", "evaluation_mlflow"],
                name="build_report",
            ),
        ]
    )
