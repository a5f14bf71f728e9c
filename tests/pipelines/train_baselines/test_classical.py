"""train_baselines, classical part: `kedro run --pipelines=train_baselines --namespaces=svm,random_forest`
on the test-scale cohort: CNN21's folds and fold-table format, a saved image -> probability model,
one MLflow child run per grid point x fold, registered models."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from osteo_testkit import REPO, run_kedro


CLASSICAL = ("svm", "random_forest")
# cnn21_fold_metrics.csv's columns, with the grid point ("setting") where CNN21 has its learning rate
FOLD_COLUMNS = ["model", "setting", "fold", "n_train", "n_val", "accuracy", "precision", "recall", "specificity",
                "f1", "auc", "loss", "best_epoch", "epochs_run", "still_improving", "train_seconds", "mlflow_run_id"]


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@pytest.fixture(scope="module")
def project(prepared_project: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classical") / "project"
    shutil.copytree(prepared_project, root)  # the shared prepared project stays as other tests expect it
    run_kedro(root, ["train_baselines"], namespaces=list(CLASSICAL))
    return root


def _training_split(project: Path) -> pd.DataFrame:
    split = pd.read_csv(latest(project / "data" / "05_model_input" / "split_table.csv"))
    return split[split.partition == "train"]


def _grid_size(model: str) -> int:
    grid = yaml.safe_load((REPO / "conf" / "test" / "parameters_train_baselines.yml").read_text())["train_baselines"][model]["grid"]
    return int(np.prod([len(v) for v in grid.values()]))


@pytest.mark.parametrize("model", CLASSICAL)
def test_fold_metrics_use_cnn21s_folds_and_pick_the_best_mean_auc(project: Path, model: str):
    reporting = project / "data" / "08_reporting"
    table = pd.read_csv(latest(reporting / f"{model}_fold_metrics.csv"))
    summary = json.loads(latest(reporting / f"{model}_cv_summary.json").read_text())
    train = _training_split(project)
    folds = sorted(train.fold.unique())
    assert list(table.columns) == FOLD_COLUMNS
    assert len(table) == _grid_size(model) * len(folds) and (table.model == model).all()
    for fold, rows in table.groupby("fold"):  # the very scans CNN21 trains and validates on per fold
        assert (rows.n_val == (train.fold == fold).sum()).all()
        assert (rows.n_train == (train.fold != fold).sum()).all()
    assert table[["accuracy", "specificity", "auc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert table.best_epoch.isna().all() and table.mlflow_run_id.notna().all()
    means = table.groupby("setting", sort=False).auc.mean()
    assert summary["best_setting"] == means.idxmax()
    assert summary["by_setting"][summary["best_setting"]]["val_auc_mean"] == pytest.approx(means.max())


@pytest.mark.parametrize("model", CLASSICAL)
def test_saved_model_predicts_from_images_and_was_fitted_on_the_training_partition(project: Path, model: str):
    data = project / "data"
    with latest(data / "06_models" / f"{model}.pkl").open("rb") as f:
        fitted = pickle.load(f)
    final = json.loads(latest(data / "08_reporting" / f"{model}_final_fit.json").read_text())
    info = json.loads(latest(data / "08_reporting" / f"{model}_baseline_info.json").read_text())
    split = pd.read_csv(latest(data / "05_model_input" / "split_table.csv")).set_index("scan_id")
    inputs = joblib.load(latest(data / "05_model_input" / "model_input_150.joblib"))
    test = (split.loc[inputs["scan_id"], "partition"] == "test").to_numpy()
    proba = fitted.predict_proba(inputs["images"][test])  # uint8 images in, as baseline_info says
    assert proba.shape == (test.sum(), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert info["input"]["dtype"] == "uint8" and info["class_names"] == ["normal", "osteoporosis"]
    n_training = int((~test).sum())
    assert fitted.named_steps["scale"].n_samples_seen_ == n_training == final["n_train"]
    assert final["setting"] == json.loads(latest(data / "08_reporting" / f"{model}_cv_summary.json").read_text())["best_setting"]


@pytest.mark.parametrize("model", CLASSICAL)
def test_mlflow_child_runs_per_setting_and_fold_and_registered_model(project: Path, model: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    table = pd.read_csv(latest(project / "data" / "08_reporting" / f"{model}_fold_metrics.csv"))
    final = json.loads(latest(project / "data" / "08_reporting" / f"{model}_final_fit.json").read_text())
    for row in table.itertuples():
        run = client.get_run(row.mlflow_run_id)
        assert run.data.tags["model"] == model and run.data.tags["stage"] == "cv"
        assert "mlflow.parentRunId" in run.data.tags  # nested under the `kedro run` parent
        assert run.data.metrics["val_auc"] == pytest.approx(row.auc)
        assert run.data.params["setting"] == row.setting and int(run.data.params["fold"]) == row.fold
    assert client.get_run(final["mlflow_run_id"]).data.tags["stage"] == "final"
    versions = client.search_model_versions(f"name='osteo-{model}'")
    assert [v.run_id for v in versions] == [final["mlflow_run_id"]]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:  # the registered model reloads (skops, trusted types named) and answers in probabilities
        served = mlflow.pyfunc.load_model(f"models:/osteo-{model}/{versions[0].version}")
        proba = served.predict(np.zeros((2, 150, 150, 3), dtype=np.uint8))
    finally:
        mlflow.set_tracking_uri(None)
    assert np.asarray(proba).shape == (2, 2)
