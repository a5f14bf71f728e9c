"""train_baselines, transfer part: one template in four namespaces, the offline (no ImageNet
weights) path said everywhere, and `kedro run --pipelines=train_baselines --namespaces=vgg16`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from osteo_testkit import REPO, make_project, run_kedro


TRANSFER = ("vgg16", "vgg19", "resnet50", "inceptionv3")
SHARED_INPUTS = {"model_input_300", "split_table", "augmentation_policy", "class_weights", "data_fingerprint"}
OUTPUTS = ("training_set", "frozen_activations", "fold_metrics", "cv_summary", "cv_metrics", "model", "final_fit",
           "baseline_info")
NODES = ("select_training_scans", "cache_frozen_activations", "cross_validate", "fit_final")
# cnn21_fold_metrics.csv's columns, in order: the same loop writes both
FOLD_COLUMNS = ["model", "learning_rate", "fold", "n_train", "n_val", "accuracy", "precision", "recall", "specificity",
                "f1", "auc", "loss", "best_epoch", "epochs_run", "still_improving", "train_seconds", "mlflow_run_id"]


def latest(path: Path) -> Path:
    """The newest version of a versioned dataset (``<file>/<timestamp>/<file>``)."""
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


def test_one_template_in_four_namespaces_sharing_the_upstream_inputs():
    from kedro.io import DataCatalog

    from osteo_pipeline.pipelines.train_baselines import create_pipeline

    pipeline = create_pipeline()
    catalog = DataCatalog.from_config(yaml.safe_load((REPO / "conf/base/catalog_train_baselines.yml").read_text()))
    for name in TRANSFER:
        own = pipeline.only_nodes_with_namespaces([name])  # what --namespaces=<name> runs
        assert sorted(n.name for n in own.nodes) == sorted(f"{name}.{n}" for n in NODES)
        assert {n.namespace for n in own.nodes} == {name}
        assert own.inputs() == SHARED_INPUTS | {
            "params:label_scheme", "params:seed", "params:train_baselines", f"params:train_baselines.{name}",
            "params:roi_resize", "params:ingest"}  # the served model repeats roi_resize on raw scans
        assert own.all_outputs() == {f"{name}.{o}" for o in OUTPUTS}
        assert catalog.get(f"{name}.model")._filepath.name == f"{name}.keras"  # a dataset factory names the file
    transfer = pipeline.only_nodes_with_namespaces(list(TRANSFER))
    assert len(transfer.nodes) == 4 * len(NODES)


def _tiny_training_set(size: int = 32):
    from osteo_pipeline.training.data import select_training_set

    labels = ["normal", "osteoporosis"] * 6
    table = pd.DataFrame({"scan_id": [f"s{i}" for i in range(12)], "patient_id": [f"p{i}" for i in range(12)],
                          "label": labels, "partition": ["train"] * 10 + ["test"] * 2, "fold": [0, 0, 1, 1] * 2 + [0, 1, -1, -1]})
    images = np.random.default_rng(0).integers(0, 256, (12, size, size, 3), dtype=np.uint8)
    return select_training_set({"scan_id": table.scan_id.to_numpy(), "images": images}, table, "binary")


def _params(weights_dir: Path) -> dict:
    return {
        "training": {"batch_size": 4, "precision": "float32", "track": False},
        "transfer": {"weights": "imagenet", "weights_dir": str(weights_dir), "allow_download": False, "input_size": 32,
                     "views_per_scan": 1, "head": {"dense_units": 4, "dropout": 0.0, "l2": 0.0},
                     "fine_tune": {"learning_rate_factor": 0.1, "max_epochs": 1, "early_stopping_patience": 1}},
    }


@pytest.mark.parametrize("supplied", [False, True], ids=["offline", "weights_dir"])
def test_the_weights_actually_used_are_what_every_record_says(tmp_path, monkeypatch, caplog, supplied):
    """No weights anywhere and no download: a random backbone, a warning, pretrained=false in the
    info and the MLflow tags. A no-top file in ``weights_dir``: loaded, pretrained=true, no warning."""
    import keras

    from osteo_pipeline.models.backbones import BACKBONES
    from osteo_pipeline.pipelines.train_baselines.transfer.nodes import cache_frozen_activations

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    if supplied:  # Keras' own legacy .h5 layout, as the ImageNet files are
        legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
        h5py = pytest.importorskip("h5py")
        reference = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
        with h5py.File(tmp_path / BACKBONES["vgg16"].weights_file, "w") as f:
            legacy.save_weights_to_hdf5_group(f, reference)
    model = {"name": "vgg16", "backbone": "vgg16", "unfreeze_blocks": 1, "registered_model_name": "osteo-vgg16"}
    with caplog.at_level(logging.WARNING):
        cache, info = cache_frozen_activations(_tiny_training_set(), {"zoom": 0.2, "seed": 1}, model,
                                               _params(tmp_path), seed=1)
    assert info["pretrained"] is supplied and cache.tags["pretrained"] == str(supplied).lower()
    assert ("NO ImageNet weights" in caplog.text) is not supplied
    assert bool(info["warnings"]) is not supplied and all("WITHOUT ImageNet" in w for w in info["warnings"])
    assert [p["boundary"] for p in info["phases"]] == ["block5_pool", "block4_pool"]
    assert info["views_per_scan"] == 1 and cache.views["block4_pool"].shape[:2] == (10, 1)
    if supplied:
        kernel = cache.tops["block4_pool"].get_layer("block5_conv3").get_weights()[0]
        np.testing.assert_array_equal(kernel, reference.get_layer("block5_conv3").get_weights()[0])


@pytest.fixture(scope="module")
def vgg16_run(prepared_project: Path, tmp_path_factory) -> Path:
    """A copy of the prepared test project after `kedro run --pipelines=train_baselines --namespaces=vgg16`,
    offline (an empty Keras cache, downloads off in conf/test)."""
    root = make_project(tmp_path_factory.mktemp("transfer_project"))
    shutil.rmtree(root / "data" / "05_model_input")
    shutil.copytree(prepared_project / "data" / "05_model_input", root / "data" / "05_model_input")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("empty_keras_home")))
        run_kedro(root, ["train_baselines"], namespaces=["vgg16"])
    return root


@pytest.mark.slow
def test_one_namespace_trains_saves_and_reports_like_cnn21(vgg16_run: Path):
    reporting = vgg16_run / "data" / "08_reporting"
    assert not list(reporting.glob("vgg19_*")) and not list(reporting.glob("svm_*"))  # only the namespace asked for
    folds = pd.read_csv(latest(reporting / "vgg16_fold_metrics.csv"))
    assert list(folds.columns) == FOLD_COLUMNS and list(folds.fold) == [0, 1, 2] and (folds.model == "vgg16").all()
    assert (folds.epochs_run >= 2).all()  # a head epoch and a fine-tuning epoch at least
    info = json.loads(latest(reporting / "vgg16_baseline_info.json").read_text())
    assert info["pretrained"] is False and "WITHOUT ImageNet" in info["warnings"][0]
    final = json.loads(latest(reporting / "vgg16_final_fit.json").read_text())
    assert final["registered_model_name"] == "osteo-vgg16" and final["pretrained"] is False
    assert final["cache_vs_network_max_abs_prob_diff"] < 1e-3  # the saved network predicts what training saw

    from kedro.io import Version
    from kedro_datasets.tensorflow import TensorFlowModelDataset

    network = TensorFlowModelDataset(filepath=str(vgg16_run / "data/06_models/vgg16.keras"), version=Version(None, None)).load()
    inputs = __import__("joblib").load(latest(vgg16_run / "data/05_model_input/model_input_300.joblib"))
    probs = network.predict(inputs["images"][:4].astype(np.float32) / 255.0, verbose=0)
    assert network.input_shape == (None, 300, 300, 3) and probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_every_mlflow_run_is_nested_tagged_not_pretrained_and_the_model_registered(vgg16_run: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{vgg16_run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("osteo_pipeline").experiment_id], max_results=200)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and "vgg16.cv_val_auc_mean" in parent[0].data.metrics
    fits = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.data.tags["stage"] for r in fits) == ["cv", "cv", "cv", "final"]
    for fit in fits:
        phases = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == fit.info.run_id]
        assert sorted(r.data.tags["phase"] for r in phases) == ["fine_tune", "head"]
        assert "val_auc" in fit.data.metrics or "val_loss" in fit.data.metrics
    assert len(runs) == 1 + 4 + 8
    assert all(r.data.tags["pretrained"] == "false" for r in runs if r is not parent[0])
    versions = client.search_model_versions("name='osteo-vgg16'")
    assert len(versions) == 1
