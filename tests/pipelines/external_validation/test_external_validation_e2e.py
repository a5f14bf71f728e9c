"""`kedro run --pipelines=external_validation --params=external_dir=...` on a trained, registered
project (the serving tests' fixture): a second synthetic cohort plus two training scans copied in.

Checks the report, the one MLflow run (FINISHED, tagged, metrics and artifacts, no raw path in its
params or tags), the overlap count, and that nothing was trained or registered.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from osteo_pipeline.pipelines.external_validation.nodes import EXTERNAL_DIR_LABEL
from osteo_testkit import latest, run_kedro

pytestmark = pytest.mark.slow


def _external_folder(root: Path, training_raw: Path) -> Path:
    """A small cohort of another seed (patient ids renamed so none matches a training id by chance)
    plus one training scan per class, copied with its training patient id: 2 overlapping patients."""
    from osteo_pipeline.cohort import generate_cohort

    folder = root / "site B scans"  # a space: the path travels through --params
    generate_cohort(folder, seed=7, n_normal=5, n_osteoporosis=6, scale=0.25, workers=1)
    clinical = pd.read_csv(folder / "clinical.csv")
    clinical["patient_id"] = "X" + clinical["patient_id"].astype(str)
    training = pd.read_csv(training_raw / "clinical.csv")
    copied = []
    for label in ("normal", "osteoporosis"):
        row = training[training["label"] == label].iloc[0].copy()
        shutil.copy(training_raw / row["file"], folder / label / "copied_from_training.png")
        row["file"] = f"{label}/copied_from_training.png"
        copied.append(row)
    pd.concat([clinical, pd.DataFrame(copied)], ignore_index=True).to_csv(folder / "clinical.csv", index=False)
    return folder


def test_external_validation_end_to_end(served_project, tmp_path, monkeypatch):  # noqa: F811
    import keras
    from mlflow import MlflowClient

    project = tmp_path / "project"
    shutil.copytree(served_project["root"], project)  # its own store (mlflow.db) and data/
    external = _external_folder(tmp_path, project / "data/01_raw")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    versions_before = len(client.search_model_versions("name = 'osteo-cnn21'"))
    client.set_registered_model_alias("osteo-cnn21", "champion", "1")

    def no_training(*args, **kwargs):
        raise AssertionError("external validation must not train")

    monkeypatch.setattr(keras.Model, "fit", no_training)
    run_kedro(project, ["external_validation"], params={"external_dir": str(external)})

    # -- the report
    report = (project / "data/08_reporting/external_report.html").read_text()
    assert "External validation" in report and "cnn21" in report and "data:image/png;base64," in report
    assert str(external) not in report and "site B" not in report
    ingest_report = json.loads((project / "data/08_reporting/external/ingest_report.json").read_text())
    assert ingest_report["raw_dir"] == EXTERNAL_DIR_LABEL and ingest_report["counts"]["accepted"] == 13
    summary = json.loads(latest(project / "data/08_reporting/external/external_validation_summary.json").read_text())
    assert summary["cohort"]["n_scans"] == 13 and summary["cohort"]["label_scheme"] == "binary"
    overlap = summary["overlap"]
    assert overlap["checked"] and overlap["n_overlap_patients"] == 2 and overlap["n_overlap_scans"] == 2
    assert f"2 of {overlap['n_external_patients']} external patients" in report
    assert summary["models"]["cnn21"]["chosen_by"] == "alias champion"
    metrics = summary["metrics"]["cnn21"]
    assert metrics["n_scans"] == 13 and metrics["ci"]["auc"]["describe"]
    assert summary["internal_test_metrics"]["cnn21"] is None or "auc" in summary["internal_test_metrics"]["cnn21"]
    predictions = pd.read_csv(latest(project / "data/08_reporting/external/predictions.csv"))
    assert set(predictions["patient_id"].str[:3]) == {"pt-"} and len(predictions) == 13

    # -- the MLflow run: one, FINISHED, tagged, with metrics and artifacts, no raw path
    runs = client.search_runs(client.get_experiment_by_name("osteo_pipeline").experiment_id,
                              "tags.stage = 'external_validation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "external_validation"
    assert run.data.tags["validation"] == "external" and run.data.tags["external.cnn21.model_version"] == "1"
    for key in ("cnn21.external_auc", "cnn21.external_accuracy", "cnn21.external_auc_ci_lo", "external.n_scans"):
        assert key in run.data.metrics, key
    assert run.data.metrics["external.overlap_patients"] == 2
    recorded = " ".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    assert str(external) not in recorded and "site B" not in recorded
    assert run.data.tags["runtime_params"] == "{'external_dir': '<not recorded>'}"  # RedactRunParamsHook
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "external_validation")}
    assert "external_validation/external_report.html" in artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "external_validation/latest_figures")}
    assert {f"external_validation/latest_figures/{n}.png" for n in ("roc_curves", "confusion_matrices", "calibration")} <= figures

    # -- nothing trained or registered; not part of a plain `kedro run`
    assert len(client.search_model_versions("name = 'osteo-cnn21'")) == versions_before
    from kedro.framework.project import pipelines

    assert not any(n.name.startswith("external") for n in pipelines["__default__"].nodes)
