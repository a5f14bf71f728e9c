"""train_baselines, fusion part, on the test-scale cohort: the label-leak guard stops the run,
fold-honest image features and in-fold imputation, the fracture-history AUC beside the fusion
model's, and a saved two-input network whose image branch is the final CNN21.

train_cnn21's outputs are written through the catalog from real but untrained CNN21s (one per
fold, one final): training CNN21 here would triple the test's time and tests nothing of fusion.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from osteo_pipeline.models.cnn21 import build_cnn21
from osteo_pipeline.models.fusion import EXTRACTOR_NAME, LabelLeakError, clinical_table
from osteo_pipeline.training.data import select_training_set
from osteo_pipeline.training.features import embedding_model, embedding_table
from osteo_testkit import project_catalog, run_kedro


FOLD_COLUMNS = ["model", "learning_rate", "fold", "n_train", "n_val", "accuracy", "precision", "recall", "specificity",
                "f1", "auc", "loss", "best_epoch", "epochs_run", "still_improving", "train_seconds", "mlflow_run_id"]
CNN21_RATE = 1e-4


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


def read_json(path: Path) -> dict:
    return json.loads(latest(path).read_text())


@pytest.fixture(scope="module")
def project(prepared_project: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fusion") / "project"
    shutil.copytree(prepared_project, root)
    with project_catalog(root) as catalog:
        ts = select_training_set(catalog.load("model_input_150"), catalog.load("split_table"), "binary")
        features = []
        for fold in ts.cv_folds:  # a different network per fold: each fold's table is its own
            keras.utils.set_random_seed(fold)
            features.append(embedding_table(build_cnn21((150, 150, 3), 2), ts.images, ts.scan_ids,
                                            learning_rate=CNN21_RATE, fold=fold))
        catalog.save("cnn21_fold_features", pd.concat(features, ignore_index=True))
        catalog.save("cnn21_cv_summary", {"best_learning_rate": CNN21_RATE,
                                          "by_learning_rate": {f"{CNN21_RATE:g}": {"val_auc_mean": 0.5}}})
        keras.utils.set_random_seed(99)
        catalog.save("cnn21_model", build_cnn21((150, 150, 3), 2))
        catalog.save("cnn21_final_fit", {"model": "cnn21", "val_patients": []})
    run_kedro(root, ["train_baselines"], namespaces=["fusion"])
    return root


def test_label_defining_covariates_stop_the_run_naming_the_leak(project: Path):
    model_dir = project / "data" / "06_models" / "fusion.keras"
    before = sorted(model_dir.iterdir())
    with pytest.raises(LabelLeakError, match=r"'t_score' \(T-score\).*define the label"):
        run_kedro(project, ["train_baselines"], namespaces=["fusion"],
                  params={"train_baselines": {"fusion": {"covariates": ["age", "t_score"]}}})
    assert sorted(model_dir.iterdir()) == before  # nothing trained, nothing saved


def test_each_fold_uses_its_own_cnn21_features_and_in_fold_imputation(project: Path):
    reporting = project / "data" / "08_reporting"
    table = pd.read_csv(latest(reporting / "fusion_fold_metrics.csv"))
    summary = read_json(reporting / "fusion_cv_summary.json")
    split = pd.read_csv(latest(project / "data" / "05_model_input" / "split_table.csv"))
    train = split[split.partition == "train"]
    assert list(table.columns) == FOLD_COLUMNS and table.mlflow_run_id.notna().all()
    for fold, rows in table.groupby("fold"):  # CNN21's folds
        assert (rows.n_val == (train.fold == fold).sum()).all() and (rows.n_train == (train.fold != fold).sum()).all()
    assert summary["image_features"]["cnn21_learning_rate"] == CNN21_RATE  # CNN21's chosen rate's fold models
    assert summary["covariates"]["used"] == ["age", "sex", "bmi", "fracture_history"]
    for row in table.drop_duplicates("fold").itertuples():
        assert summary["imputation"]["per_fold"][str(row.fold)]["n_fit_rows"] == row.n_train  # training rows only


def test_fracture_history_auc_is_reported_beside_the_fusion_models(project: Path):
    data = project / "data"
    summary = read_json(data / "08_reporting" / "fusion_cv_summary.json")
    split = pd.read_csv(latest(data / "05_model_input" / "split_table.csv"))
    manifest = pd.read_parquet(latest(data / "02_intermediate" / "scan_manifest.parquet"))
    train = split[split.partition == "train"].merge(manifest[["scan_id", "fracture_history"]], on="scan_id")
    expected = roc_auc_score(train.label == "osteoporosis", train.fracture_history)  # independent recomputation
    fracture = summary["fracture_history"]
    assert fracture["auc"] == pytest.approx(expected)
    assert fracture["fusion_val_auc_mean"] == pytest.approx(summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]["val_auc_mean"])
    # the warning follows the data: present exactly when fracture history alone separates the classes
    warned = any(w.startswith("fracture_history") for w in summary["warnings"])
    assert warned == (max(expected, 1 - expected) >= fracture["warn_at"])


def test_saved_network_takes_images_and_raw_covariates_through_the_final_cnn21(project: Path):
    data = project / "data"
    network = keras.models.load_model(latest(data / "06_models" / "fusion.keras"))
    cnn21 = keras.models.load_model(latest(data / "06_models" / "cnn21.keras"))
    info = read_json(data / "08_reporting" / "fusion_baseline_info.json")
    final = read_json(data / "08_reporting" / "fusion_final_fit.json")
    inputs = joblib.load(latest(data / "05_model_input" / "model_input_150.joblib"))
    split = pd.read_csv(latest(data / "05_model_input" / "split_table.csv")).set_index("scan_id")
    manifest = pd.read_parquet(latest(data / "02_intermediate" / "scan_manifest.parquet"))
    test = (split.loc[inputs["scan_id"], "partition"] == "test").to_numpy()
    images = inputs["images"][test].astype(np.float32) / 255.0
    covariates = clinical_table(manifest, inputs["scan_id"][test], info["inputs"]["covariates"]["columns"]).to_numpy(np.float32, copy=True)
    covariates[0, 0] = np.nan  # an unknown value is imputed inside the network
    proba = network.predict({"image": images, "covariates": covariates}, verbose=0)
    assert proba.shape == (test.sum(), 2) and np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(network.get_layer(EXTRACTOR_NAME).predict(images, verbose=0),
                               embedding_model(cnn21).predict(images, verbose=0), atol=1e-5)  # test features: final CNN21
    assert final["export_gap"] < 1e-4 and final["covariates"] == info["inputs"]["covariates"]["columns"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert [v.run_id for v in client.search_model_versions("name='osteo-fusion'")] == [final["mlflow_run_id"]]
    run = client.get_run(final["mlflow_run_id"])
    assert run.data.tags["model"] == "fusion" and run.data.tags["stage"] == "final" and "val_auc" in run.data.metrics
