"""Wiring of ``external_validation``: the registered models on a separate labelled folder.

The external folder goes through the project's own ``ingest`` and ``roi_resize`` pipelines,
reused under the ``external`` namespace (their outputs are the catalog's ``external.*`` entries,
under ``data/*/external/``), with the same parameters and the same pseudonym key as the training
data, so a patient in both sets has the same pseudonym. Then every requested registered model
(MLflow registry, by alias or version) predicts those scans with its own preprocessing, and the
evaluate stage's metrics, patient-bootstrap CIs and figures are computed for them.

Nothing here trains: no node comes from a training module, and the pipeline writes no model
(``tests/pipelines/external_validation`` asserts both). It is not part of ``__default__``.
"""

from __future__ import annotations

import warnings
from typing import Any

from kedro.pipeline import Node, Pipeline

from osteo_pipeline.pipelines.evaluate.nodes import report_figure_files
from osteo_pipeline.pipelines.ingest import pipeline as ingest
from osteo_pipeline.pipelines.roi_resize import pipeline as roi_resize

from .nodes import (
    build_external_report,
    check_patient_overlap,
    compute_external_metrics,
    label_external_ingest_report,
    load_registered_models,
    plot_external_figures,
    predict_external_scans,
)

NAMESPACE = "external"


def external_data_pipeline() -> Pipeline:
    """ingest + roi_resize on the external folder (``external.raw_scans``), same code and settings:
    every parameter keeps its name (``params:ingest``, ``params:roi_resize``...), not a namespaced copy."""
    stages = ingest.create_pipeline() + roi_resize.create_pipeline()
    shared = {name.removeprefix("params:") for name in stages.inputs() if name.startswith("params:")}
    return Pipeline(
        stages,
        namespace=NAMESPACE,
        inputs={"pseudonym_key"},  # the project's key: same patient id, same pseudonym
        # ingest's report names the training folder; relabelled below
        outputs={"ingest_report": "external_ingest_report_draft"},
        parameters=shared,
    ) + Pipeline([Node(label_external_ingest_report, "external_ingest_report_draft", f"{NAMESPACE}.ingest_report",
                       name="label_ingest_report", namespace=NAMESPACE)])


def create_pipeline(**kwargs: Any) -> Pipeline:
    with warnings.catch_warnings():
        # The namespaced datasets (`external.scan_manifest`) are named on purpose here.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        return external_data_pipeline() + _validation_pipeline()


def _validation_pipeline() -> Pipeline:
    ns = f"{NAMESPACE}."
    return Pipeline(
        [
            Node(
                load_registered_models,
                inputs="params:external_validation",
                outputs=["external_validation_models", "external_validation_model_info"],
                name="load_registered_models",
            ),
            Node(
                predict_external_scans,
                inputs=["external_validation_models", f"{ns}raw_scans", f"{ns}scan_manifest", f"{ns}file_index",
                        f"{ns}model_input_150", f"{ns}model_input_300", "params:roi_resize", "params:ingest.max_pixels",
                        "params:external_validation"],
                outputs=["external_predictions", "external_cohort"],
                name="predict_external_scans",
            ),
            Node(
                compute_external_metrics,
                inputs=["external_predictions", "external_validation_model_info", "params:evaluate", "params:seed"],
                outputs="external_metrics",
                name="compute_external_metrics",
            ),
            Node(
                check_patient_overlap,
                inputs=[f"{ns}scan_manifest", "training_scan_manifest", "training_split_table",
                        "training_data_fingerprint", "external_validation_model_info"],
                outputs="external_overlap",
                name="check_patient_overlap",
            ),
            Node(
                plot_external_figures,
                inputs=["external_predictions", "external_metrics", "external_validation_model_info", "params:evaluate"],
                outputs=["external_roc_curves", "external_confusion_matrices", "external_calibration",
                         "external_figures_base64"],
                name="plot_external_figures",
            ),
            Node(
                report_figure_files,
                inputs="external_figures_base64",
                outputs="external_report_figures",
                name="external_report_figure_files",
            ),
            Node(
                build_external_report,
                inputs=["external_cohort", "external_validation_model_info", "external_metrics", "external_overlap",
                        "internal_evaluation_summary", "external_figures_base64", f"{ns}ingest_report",
                        "params:external_validation"],
                outputs=["external_report_html", "external_validation_summary", "external_validation_mlflow"],
                name="build_external_report",
            ),
        ]
    )
