"""`kedro run --env test --pipelines=train_cnn21`, twice: MLflow runs, registered model, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

METRICS = ["accuracy", "precision", "recall", "specificity", "f1", "auc", "loss"]


def _versions(root: Path, relpath: str) -> list[Path]:
    """Saved versions of a versioned dataset, oldest first."""
    name = Path(relpath).name
    return sorted((root / relpath).glob(f"*/{name}"))


@pytest.fixture(scope="module")
def store(trained_cnn21_project):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained_cnn21_project["tracking_uri"])
    experiment = client.get_experiment_by_name("osteo_pipeline")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents}
    return client, parents, children


def test_pipeline_is_registered():
    from kedro.framework.project import configure_project

    from osteo_pipeline.pipeline_registry import register_pipelines

    configure_project("osteo_pipeline")
    pipelines = register_pipelines()
    assert "train_cnn21" in pipelines
    assert {"model_input_150", "split_table", "augmentation_policy", "class_weights", "data_fingerprint"} <= pipelines[
        "train_cnn21"
    ].inputs()


def test_one_parent_run_per_kedro_run_with_nested_fold_and_final_runs(store):
    client, parents, children = store
    assert len(parents) == 2
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert "cnn21.cv_val_auc_mean" in parent.data.metrics  # chosen setting's CV mean
        kids = children[parent.info.run_id]
        stages = sorted(k.data.tags["stage"] for k in kids)
        assert stages == ["cv", "cv", "final"]
        for kid in kids:
            assert kid.info.status == "FINISHED"
            params, tags = kid.data.params, kid.data.tags
            assert {"learning_rate", "batch_size", "max_epochs", "early_stopping_patience", "precision_resolved"} <= set(params)
            assert tags["data.manifest_sha256"] == "f" * 64 and tags["data.split_seed"] == "42"
            assert tags["device"] and tags["git_commit"] and tags["precision"] in {"float32", "bfloat16", "float16"}
            assert {"version.keras", "version.mlflow"} <= set(tags)
            assert "version.tensorflow" in tags or "version.tensorflow-cpu" in tags
            epochs = int(kid.data.metrics["epochs_run"])
            # Keras' per-epoch AUC is logged as auc_micro; val_auc is scikit-learn's, once, after the last epoch
            for key in ("loss", "accuracy", "auc_micro", "val_loss", "val_accuracy", "val_auc_micro"):
                history = client.get_metric_history(kid.info.run_id, key)
                assert [m.step for m in history][:epochs] == list(range(epochs)), key
            assert [m.step for m in client.get_metric_history(kid.info.run_id, "val_auc")] == [epochs]
            assert {f"val_{m}" for m in METRICS} <= set(kid.data.metrics)
            artifacts = {a.path for a in client.list_artifacts(kid.info.run_id)}
            assert "training_curves.png" in artifacts


def test_final_model_is_registered_with_a_signature(store, trained_cnn21_project):
    import mlflow

    client, _, _ = store
    versions = client.search_model_versions("name='osteo-cnn21'")
    assert len(versions) == 2  # a new version per run
    latest = max(versions, key=lambda v: int(v.version))
    mlflow.set_tracking_uri(trained_cnn21_project["tracking_uri"])
    info = mlflow.models.get_model_info(f"models:/osteo-cnn21/{latest.version}")
    # raw scan bytes in (serving.model), cropped and resized to the network's own 100 px input
    assert info.signature.inputs.input_names() == ["image", "name"]
    assert info.flavors["python_function"]["config"]["preprocessing"]["size"] == 100
    assert info.saved_input_example_info is not None


def test_saved_model_reloads_and_predicts(trained_cnn21_project):
    from kedro.io import Version
    from kedro_datasets.tensorflow import TensorFlowModelDataset

    root = trained_cnn21_project["root"]
    saved = _versions(root, "data/06_models/cnn21.keras")
    assert len(saved) == 2
    model = TensorFlowModelDataset(filepath=str(saved[-1].parent.parent), version=Version(None, None)).load()
    images = trained_cnn21_project["model_input"]["images"][:5].astype(np.float32) / 255.0
    probs = model.predict(images, verbose=0)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_reports_and_determinism(trained_cnn21_project):
    root = trained_cnn21_project["root"]
    tables = [pd.read_csv(p) for p in _versions(root, "data/08_reporting/cnn21_fold_metrics.csv")]
    assert len(tables) == 2
    first, second = tables
    assert list(first.fold) == [0, 1] and set(METRICS) <= set(first.columns)
    # deterministic: true (conf/test) -> the rerun reproduces every fold metric
    pd.testing.assert_frame_equal(first[METRICS + ["best_epoch"]], second[METRICS + ["best_epoch"]])
    summary = json.loads(_versions(root, "data/08_reporting/cnn21_cv_summary.json")[-1].read_text())
    assert summary["best_learning_rate"] == 1e-3
    table = trained_cnn21_project["split_table"]
    train = table[table.partition == "train"]
    assert summary["data"]["n_excluded_out_of_scheme"] == (train.label == "osteopenia").sum() > 0
    final = json.loads(_versions(root, "data/08_reporting/cnn21_final_fit.json")[-1].read_text())
    assert final["registered_model_name"] == "osteo-cnn21" and final["mlflow_model_uri"].startswith("models:/")
    assert final["n_train"] + final["n_val"] == summary["data"]["n_training_scans"]
    assert not set(final["val_patients"]) & set(table.patient_id[table.partition == "test"])


def test_fold_features_come_from_each_fold_model(trained_cnn21_project):
    """cnn21_fold_features (the fusion baseline's input): every training scan once per fold
    model, 64 features each, from models that differ by fold, and no test scan."""
    root = trained_cnn21_project["root"]
    features = pd.read_parquet(_versions(root, "data/05_model_input/cnn21_fold_features.parquet")[-1])
    summary = json.loads(_versions(root, "data/08_reporting/cnn21_cv_summary.json")[-1].read_text())
    feature_cols = [c for c in features if c.startswith("f") and c[1:].isdigit()]
    assert len(feature_cols) == 64 and np.isfinite(features[feature_cols].to_numpy()).all()
    assert sorted(features.fold.unique()) == [0, 1] and set(features.learning_rate) == {1e-3}
    per_fold = features.groupby("fold").scan_id.apply(lambda s: sorted(s))
    assert per_fold[0] == per_fold[1] and len(per_fold[0]) == summary["data"]["n_training_scans"]
    table = trained_cnn21_project["split_table"]
    assert not set(features.scan_id) & set(table.scan_id[table.partition == "test"])
    by_fold = features.sort_values(["fold", "scan_id"]).groupby("fold")[feature_cols]
    assert not np.allclose(by_fold.get_group(0).to_numpy(), by_fold.get_group(1).to_numpy())
