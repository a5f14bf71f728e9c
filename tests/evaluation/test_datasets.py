"""The read-only collection of trained models and the MLflow evaluation dataset."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from kedro.io.core import DatasetError, Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.pickle import PickleDataset
from kedro_datasets.tensorflow import TensorFlowModelDataset

from evaluate_kit import tiny_image_model
from osteo_pipeline.datasets import MlflowEvaluationDataset, TrainedModelsDataset

FAMILIES = {"cnn21": "cnn21", "vgg16": "transfer", "svm": "classical"}
CLASSES = ["normal", "osteoporosis"]


def _save(root: Path, name: str, model, suffix: str, version: str, final_fit: dict) -> None:
    """As the training catalogs save a model and its reports (versioned folders)."""
    v = Version(None, version)
    ds = (TensorFlowModelDataset(filepath=str(root / "06_models" / f"{name}.keras"), version=v) if suffix == ".keras"
          else PickleDataset(filepath=str(root / "06_models" / f"{name}.pkl"), version=v))
    ds.save(model)
    JSONDataset(filepath=str(root / "08_reporting" / f"{name}_final_fit.json"), version=v).save(final_fit)
    JSONDataset(filepath=str(root / "08_reporting" / f"{name}_cv_summary.json"), version=v).save({"best_learning_rate": 1e-3})
    CSVDataset(filepath=str(root / "08_reporting" / f"{name}_fold_metrics.csv"), version=v).save(
        pd.DataFrame({"learning_rate": [1e-3, 1e-3], "fold": [0, 1], "accuracy": [0.5, 0.6]}))


def _dataset(root: Path) -> TrainedModelsDataset:
    return TrainedModelsDataset(families=FAMILIES, models_dir=str(root / "06_models"),
                                reporting_dir=str(root / "08_reporting"), history_from_mlflow=False)


def test_exists_once_cnn21_is_trained_and_lists_the_missing_baselines(tmp_path):
    ds = _dataset(tmp_path)
    assert not ds.exists()
    with pytest.raises(DatasetError, match="train_cnn21"):
        ds.load()
    _save(tmp_path, "cnn21", tiny_image_model(), ".keras", "2026-01-01T00.00.00.000Z",
          {"class_names": CLASSES, "history": {"loss": [1.0, 0.5]}})
    assert ds.exists()
    collection = ds.load()
    assert list(collection.models) == ["cnn21"] and set(collection.missing) == {"vgg16", "svm"}
    assert collection.expected == ["cnn21", "vgg16", "svm"] and collection.families == FAMILIES
    cnn21 = collection.models["cnn21"]
    assert isinstance(cnn21.model, keras.Model) and cnn21.class_names == CLASSES
    assert cnn21.history == {"loss": [1.0, 0.5]}  # from the report when it holds one
    assert list(cnn21.fold_metrics.columns) == ["learning_rate", "fold", "accuracy"]
    assert set(cnn21.versions) == {"model", "final_fit", "cv_summary", "fold_metrics"}


def test_loads_the_latest_version_and_pickled_baselines(tmp_path):
    from sklearn.dummy import DummyClassifier

    first, second = tiny_image_model(seed=1), tiny_image_model(seed=2)
    _save(tmp_path, "cnn21", first, ".keras", "2026-01-01T00.00.00.000Z", {"class_names": CLASSES, "run": 1})
    _save(tmp_path, "cnn21", second, ".keras", "2026-01-02T00.00.00.000Z", {"class_names": CLASSES, "run": 2})
    _save(tmp_path, "svm", DummyClassifier().fit(np.zeros((2, 1)), [0, 1]), ".pkl", "2026-01-02T00.00.00.000Z",
          {"class_names": CLASSES})
    collection = _dataset(tmp_path).load()
    assert collection.models["cnn21"].final_fit["run"] == 2
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    assert np.allclose(collection.models["cnn21"].model.predict(x, verbose=0), second.predict(x, verbose=0))
    assert collection.models["cnn21"].versions["model"] == "2026-01-02T00.00.00.000Z"
    assert collection.models["svm"].family == "classical" and list(collection.missing) == ["vgg16"]


def test_a_baseline_that_cannot_be_loaded_is_reported_not_fatal(tmp_path):
    _save(tmp_path, "cnn21", tiny_image_model(), ".keras", "2026-01-01T00.00.00.000Z", {"class_names": CLASSES})
    broken = tmp_path / "06_models" / "vgg16.keras" / "2026-01-01T00.00.00.000Z" / "vgg16.keras"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a keras file")
    JSONDataset(filepath=str(tmp_path / "08_reporting" / "vgg16_final_fit.json"),
                version=Version(None, "2026-01-01T00.00.00.000Z")).save({"class_names": CLASSES})
    collection = _dataset(tmp_path).load()
    assert "vgg16" not in collection.models and collection.missing["vgg16"].startswith("could not be loaded")


def test_the_collection_is_read_only_and_checks_its_configuration(tmp_path):
    with pytest.raises(DatasetError, match="read-only"):
        _dataset(tmp_path).save({})
    with pytest.raises(DatasetError, match="unknown model families"):
        TrainedModelsDataset(families={"cnn21": "cnn21", "x": "boosting"})
    with pytest.raises(DatasetError, match="required"):
        TrainedModelsDataset(families={"vgg16": "transfer"})


def test_mlflow_dataset_logs_child_runs_and_parent_metrics(tmp_path, monkeypatch):
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)  # this test's own store, restored afterwards
    ds = MlflowEvaluationDataset()
    record = {"parent_metrics": {"cnn21.test_auc": 0.9, "cnn21.test_f1": float("nan")},
              "runs": {"cnn21": {"metrics": {"test_auc": 0.9, "test_auc_ci_lo": None}, "params": {"model": "cnn21"},
                                 "tags": {"family": "cnn21"}}}}
    ds.save(record)  # no active run: nothing logged, no error
    assert mlflow.search_runs(search_all_experiments=True).empty
    try:
        with mlflow.start_run(run_name="parent") as parent:
            ds.save(record)
        client = MlflowClient(uri)
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert [c.info.run_name for c in children] == ["evaluate-cnn21"]
        child = children[0]
        assert child.info.status == "FINISHED" and child.data.metrics == {"test_auc": 0.9}  # None/NaN skipped
        assert child.data.params == {"model": "cnn21"} and child.data.tags["family"] == "cnn21"
        assert client.get_run(parent.info.run_id).data.metrics == {"cnn21.test_auc": 0.9}
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    with pytest.raises(DatasetError):
        ds.load()
