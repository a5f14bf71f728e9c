"""Model files as the catalog reads them, evaluate's collection of the declared models, and the
MLflow evaluation dataset."""

from __future__ import annotations


import keras
import numpy as np
import pandas as pd
import pytest
from kedro.io.core import DatasetError, Version

from evaluate_kit import tiny_image_model
from osteo_pipeline.datasets import KerasModelDataset, MlflowEvaluationDataset, SklearnModelDataset
from osteo_pipeline.evaluation.models import NotTrained, declared_families, model_artifacts
from osteo_pipeline.pipelines.evaluate.nodes import collect_models

CLASSES = ["normal", "osteoporosis"]


def test_model_files_load_the_latest_version(tmp_path):
    from sklearn.dummy import DummyClassifier

    first, second = tiny_image_model(seed=1), tiny_image_model(seed=2)
    path = str(tmp_path / "cnn21.keras")
    KerasModelDataset(filepath=path, version=Version(None, "2026-01-01T00.00.00.000Z")).save(first)
    KerasModelDataset(filepath=path, version=Version(None, "2026-01-02T00.00.00.000Z")).save(second)
    loaded = KerasModelDataset(filepath=path, version=Version(None, None)).load()
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    assert isinstance(loaded, keras.Model)
    assert np.allclose(loaded.predict(x, verbose=0), second.predict(x, verbose=0))
    svm = SklearnModelDataset(filepath=str(tmp_path / "svm.pkl"), version=Version(None, "2026-01-01T00.00.00.000Z"))
    svm.save(DummyClassifier().fit(np.zeros((2, 1)), [0, 1]))
    assert list(SklearnModelDataset(filepath=str(tmp_path / "svm.pkl"), version=Version(None, None)).load().classes_) == [0, 1]


@pytest.mark.parametrize("kind", [KerasModelDataset, SklearnModelDataset])
def test_a_corrupt_model_file_is_named_with_the_cure(tmp_path, kind):
    suffix = ".keras" if kind is KerasModelDataset else ".pkl"
    version = "2026-01-01T00.00.00.000Z"
    broken = tmp_path / f"vgg16{suffix}" / version / f"vgg16{suffix}"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a model file")
    with pytest.raises(DatasetError) as raised:
        kind(filepath=str(tmp_path / f"vgg16{suffix}"), version=Version(None, None)).load()
    said = str(raised.value)
    assert f"vgg16{suffix}/{version}/vgg16{suffix} cannot be read: it is truncated or corrupt" in said
    assert "Retrain the model" in said


def test_the_declaration_gives_every_model_its_family_and_catalog_entries():
    blocks = {"training": {"max_epochs": 3}, "transfer": {"input_size": 300},
              "vgg16": {"family": "transfer"}, "svm": {"family": "classical"}, "fusion": {"family": "fusion"}}
    assert declared_families(blocks) == {"cnn21": "cnn21", "vgg16": "transfer", "svm": "classical", "fusion": "fusion"}
    assert model_artifacts("cnn21", "cnn21")["model"] == "cnn21_model"
    assert model_artifacts("svm", "classical")["model"] == "svm.sklearn_model"
    assert model_artifacts("vgg16", "transfer") == {
        "model": "vgg16.model", "final_fit": "vgg16.final_fit", "cv_summary": "vgg16.cv_summary",
        "fold_metrics": "vgg16.fold_metrics", "baseline_info": "vgg16.baseline_info"}
    with pytest.raises(ValueError, match="unknown family 'boosting'"):
        declared_families({"xgb": {"family": "boosting"}})


def test_collect_models_reports_the_untrained_ones_as_missing():
    families = {"cnn21": "cnn21", "vgg16": "transfer", "svm": "classical"}
    folds = pd.DataFrame({"learning_rate": [1e-3, 1e-3], "fold": [0, 1], "accuracy": [0.5, 0.6]})
    artifacts = {
        "cnn21__model": tiny_image_model(), "cnn21__final_fit": {"class_names": CLASSES, "history": {"loss": [1.0, 0.5]}},
        "cnn21__cv_summary": {"best_learning_rate": 1e-3}, "cnn21__fold_metrics": folds,
        **{f"vgg16__{w}": NotTrained(f"vgg16.{w}") for w in ("model", "final_fit", "cv_summary", "fold_metrics", "baseline_info")},
        "svm__model": NotTrained("svm.sklearn_model"), "svm__final_fit": {"class_names": CLASSES},
        "svm__cv_summary": NotTrained("svm.cv_summary"), "svm__fold_metrics": NotTrained("svm.fold_metrics"),
        "svm__baseline_info": NotTrained("svm.baseline_info"),
    }
    models, missing = collect_models(families, artifacts)
    assert list(models) == ["cnn21"]
    assert missing == {"vgg16": "not trained yet (no saved vgg16.model or vgg16.final_fit)",
                       "svm": "not trained yet (no saved svm.sklearn_model)"}
    cnn21 = models["cnn21"]
    assert cnn21.family == "cnn21" and cnn21.class_names == CLASSES
    assert cnn21.history == {"loss": [1.0, 0.5]}  # from the report when it holds one
    assert list(cnn21.fold_metrics.columns) == ["learning_rate", "fold", "accuracy"]


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
