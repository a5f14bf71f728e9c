"""external_validation without a trained model: wiring (no training), model choice, overlap, labels."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from osteo_pipeline.pipelines.external_validation import create_pipeline
from osteo_pipeline.pipelines.external_validation import nodes as ev
from osteo_testkit import REPO

PACKAGE = Path(ev.__file__).parent
TRAINING_MODULES = ("osteo_pipeline.training", "osteo_pipeline.pipelines.train_", "osteo_pipeline.pipelines.split_augment",
                    "osteo_pipeline.models")


def test_no_training_node_and_no_training_import():
    pipeline = create_pipeline()
    for node in pipeline.nodes:
        assert not node.func.__module__.startswith(TRAINING_MODULES), node.name
    for path in PACKAGE.glob("*.py"):
        for stmt in ast.walk(ast.parse(path.read_text())):
            names = ([stmt.module or ""] if isinstance(stmt, ast.ImportFrom)
                     else [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [])
            for name in names:
                assert not name.startswith(TRAINING_MODULES), f"{path.name} imports {name}"
    outputs = pipeline.all_outputs()
    training_catalog = {}
    for file in (REPO / "conf/base").glob("catalog_train_*.yml"):
        training_catalog.update(yaml.safe_load(file.read_text()) or {})
    assert not outputs & set(training_catalog), "writes a training dataset"
    assert not any("model_input_" in o and not o.startswith("external.") for o in outputs)


def test_reuses_ingest_and_roi_resize_under_the_namespace_with_shared_settings():
    pipeline = create_pipeline()
    names = {n.name for n in pipeline.nodes}
    assert {"external.index_scans", "external.build_manifest", "external.crop_and_resize"} <= names
    assert not any(i.startswith("params:external.") for i in pipeline.inputs()), "settings must be the training data's"
    assert "pseudonym_key" in pipeline.inputs()  # the project's key: same patient, same pseudonym
    catalog = yaml.safe_load((REPO / "conf/base/catalog_external_validation.yml").read_text())
    assert "${runtime_params:external_dir" in catalog["external.raw_scans"]["path"]
    stored = [o for o in pipeline.all_outputs() if o.startswith("external.") and not o.endswith("scan_index")]
    for name in stored:
        entry = catalog.get(name) or catalog.get("external.model_input_{size}" if "model_input_" in name else name)
        assert entry is not None, f"{name} has no catalog entry (it would stay in memory)"
        path = entry.get("filepath") or entry.get("path")
        assert "/external/" in path, name


class FakeClient:
    def __init__(self, versions: dict[str, list[int]], aliases: dict[str, dict[str, int]]):
        self.versions, self.aliases = versions, aliases

    def get_registered_model(self, name):
        from mlflow.exceptions import MlflowException

        if name not in self.versions:
            raise MlflowException(f"Registered Model with name={name} not found")
        return SimpleNamespace(aliases=self.aliases.get(name, {}))

    def search_model_versions(self, query):
        name = query.split("'")[1]
        return [SimpleNamespace(version=v) for v in self.versions[name]]


def test_model_version_choice_and_clear_errors():
    client = FakeClient({"osteo-cnn21": [1, 2, 3], "osteo-vgg16": [1]}, {"osteo-cnn21": {"champion": 2}})
    resolve = lambda entry: ev.resolve_version(client, *ev.parse_model_entry(entry), "champion")  # noqa: E731
    assert resolve("osteo-cnn21") == ("2", "alias champion")
    assert resolve("osteo-vgg16") == ("1", "latest version (no alias 'champion')")
    assert resolve("osteo-cnn21/3") == ("3", "version 3")
    assert resolve("osteo-cnn21/latest") == ("3", "latest version")
    assert resolve("osteo-cnn21@champion") == ("2", "alias champion")
    with pytest.raises(ev.ExternalValidationError, match="'osteo-cnn21' has no alias 'staging'.*champion"):
        resolve("osteo-cnn21@staging")
    with pytest.raises(ev.ExternalValidationError, match="'osteo-cnn21' has no version 9"):
        resolve("osteo-cnn21/9")
    with pytest.raises(ev.ExternalValidationError, match="registered model 'osteo-resnet50' not found"):
        resolve("osteo-resnet50")


def test_overlap_is_counted_by_pseudonym_and_scan_and_partition():
    external = pd.DataFrame({"scan_id": ["a", "b", "c", "x"], "patient_id": ["pt-1", "pt-2", "pt-9", "pt-8"]})
    training = pd.DataFrame({"scan_id": ["x", "y", "z"], "patient_id": ["pt-1", "pt-2", "pt-3"]})
    split = training.assign(partition=["train", "test", "train"])
    info = {"cnn21": {"trained_on": {"manifest_sha256": "abc"}}}
    result = ev.check_patient_overlap(external, training, split, {"manifest_sha256": "abc"}, info)
    assert result["n_overlap_patients"] == 2 and result["n_overlap_scans"] == 1
    assert result["overlap_patients_by_partition"] == {"test": 1, "train": 1}
    assert result["models_trained_on_this_data"] == {"cnn21": True}
    assert "pt-1" not in str(result), "counts only"
    assert ev.check_patient_overlap(external, None, None, None, info)["checked"] is False


class FakeClassifier:
    class_names = ["normal", "osteoporosis"]
    preprocessing = SimpleNamespace(size=8, to_dict=lambda: {"size": 8, "margin": 0.05, "low_percentile": 1.0,
                                                             "high_percentile": 99.0})

    def probabilities(self, images):
        return np.tile([0.3, 0.7], (len(images), 1))


def _inputs(labels: list[str]):
    ids = [f"s{i}" for i in range(len(labels))]
    manifest = pd.DataFrame({"scan_id": ids, "patient_id": [f"pt-{i}" for i in range(len(labels))], "label": labels})
    arrays = {"scan_id": np.asarray(ids), "images": np.zeros((len(ids), 8, 8, 3), np.uint8)}
    roi = {"size_cnn21": 8, "size_baselines": 16, "margin": 0.05, "low_percentile": 1.0, "high_percentile": 99.0}
    model = ev.RegisteredModel("osteo-cnn21", "1", "latest version", "run", FakeClassifier())
    return {"cnn21": model}, manifest, arrays, roi


def test_labels_outside_the_models_scheme_stop_or_are_counted():
    models, manifest, arrays, roi = _inputs(["normal", "osteopenia", "osteoporosis"])
    with pytest.raises(ev.ExternalValidationError, match=r"labels the models do not predict: \{'osteopenia': 1\}.*out_of_scheme=exclude"):
        ev.predict_external_scans(models, {}, manifest, pd.DataFrame(), arrays, arrays, roi, 10**8, {"out_of_scheme": "error"})
    predictions, cohort = ev.predict_external_scans(models, {}, manifest, pd.DataFrame(), arrays, arrays, roi, 10**8,
                                                    {"out_of_scheme": "exclude"})
    assert cohort["n_excluded_out_of_scheme"] == 1 and cohort["n_scans"] == 2
    assert list(predictions["label"]) == ["normal", "osteoporosis"]
    assert list(predictions["prediction"]) == ["osteoporosis", "osteoporosis"]
