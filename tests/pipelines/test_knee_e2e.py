"""Real, messy data end to end: knee X-rays in three class folders (the second paper's three-class
study) through every pipeline at test scale, `ingest` to `evaluate`, with CNN21 and the SVM.

The shared collection has exact duplicates, some of them in two class folders; a class-balanced
subset of it that keeps one duplicate pair of each kind is copied into the project's raw folder,
so the run also shows how those are reported. Each file is its own patient (no ids).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from osteo_testkit import KNEE, make_project, run_kedro

pytestmark = pytest.mark.slow

# Knee radiographs are not spine scans: the spine-view classifier's calls mean nothing here, so
# every view is studied (the default, AP only, would keep the ~30% it calls AP).
THREE = {"label_scheme": "three_class", "split": {"views": ["AP", "lateral"]}}
CLASSES = ["normal", "osteopenia", "osteoporosis"]
PREFIX = {"normal": "N", "osteopenia": "OP", "osteoporosis": "OS"}
PER_CLASS = 16  # files 1..16 of each class: N1 = OP13 (two classes), OS8 = OS9 (one class)


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    if not KNEE.is_dir():
        pytest.skip(f"{KNEE} not present (CI and developer machines have ../shared)")
    root = make_project(tmp_path_factory.mktemp("knee") / "project")
    raw = root / "data" / "01_raw"
    for cls, prefix in PREFIX.items():
        (raw / cls).mkdir()
        for k in range(1, PER_CLASS + 1):
            shutil.copy(KNEE / cls / f"{prefix}{k}.jpg", raw / cls / f"{prefix}{k}.jpg")
    run_kedro(root, ["ingest", "roi_resize", "split_augment"], params=THREE)
    run_kedro(root, ["train_cnn21"], params={**THREE, "train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}}})
    run_kedro(root, ["train_baselines"], params=THREE, namespaces=["svm"])
    run_kedro(root, ["evaluate"], params=THREE)
    return root


def summary(project: Path) -> dict:
    return json.loads(latest(project / "data" / "08_reporting" / "evaluation_summary.json").read_text())


def test_duplicates_are_excluded_and_listed(project):
    ingest = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    manifest = pd.read_parquet(latest(project / "data/02_intermediate/scan_manifest.parquet"))
    conflicted = {f for g in ingest["conflict_groups"] for f in g["file_refs"]}
    dropped = {f for g in ingest["duplicate_groups"] for f in g["file_refs"] if f != g["kept"]}
    assert len(conflicted) == 2 and len(dropped) == 1  # N1/OP13 across classes, OS9 of OS8/OS9
    assert not (conflicted | dropped) & set(manifest.file_ref)
    assert len(manifest) == 3 * PER_CLASS - 3
    md = (project / "data/08_reporting/report.md").read_text()
    for ref in conflicted | dropped:
        assert ref in md  # the report names every excluded copy by its file_ref
    assert "KNEE" not in md and "N1.jpg" not in md and "OP13" not in md  # never a raw name


def test_test_set_is_patient_disjoint_and_holds_every_class(project):
    split = pd.read_csv(latest(project / "data/05_model_input/split_table.csv"))
    test_patients = set(split.loc[split.partition == "test", "patient_id"])
    assert test_patients and not test_patients & set(split.loc[split.partition != "test", "patient_id"])
    predictions = pd.read_csv(latest(project / "data/08_reporting/test_predictions.csv"))
    assert set(predictions.model) == {"cnn21", "svm"}
    assert set(predictions.scan_id) == set(split.loc[split.partition == "test", "scan_id"])
    assert set(predictions.label) == set(CLASSES)
    probs = predictions[[f"p_{c}" for c in CLASSES]]
    assert probs.sum(axis=1).round(6).eq(1).all()
    assert set(predictions.prediction) <= set(CLASSES)


def test_per_class_metrics_with_cis(project):
    result = summary(project)
    assert result["label_scheme"] == "three_class" and result["class_names"] == CLASSES
    for model in ("cnn21", "svm"):
        metrics = result["test_metrics"][model]
        assert set(metrics["per_class"]) == set(CLASSES)
        for figures in metrics["per_class"].values():
            assert 0.0 <= figures["recall"] <= 1.0 and 0.0 <= figures["specificity"] <= 1.0
        assert metrics["ci"]["auc"]["lo"] <= metrics["auc"] <= metrics["ci"]["auc"]["hi"]
    md = (project / "data/08_reporting/report.md").read_text()
    assert "three-class" in md and "macro" in md and "95% CI" in md
    assert "not comparable" in md  # the paper's binary reference figures are not set beside these


def test_significance_uses_the_three_class_tests_and_says_so(project):
    comparison = summary(project)["comparison"]
    auc_test = comparison["test"]["auc_difference"]["svm"]
    assert auc_test["test"] == "patient-bootstrap AUC difference"  # DeLong is binary-only
    assert auc_test["lo"] <= auc_test["statistic"] <= auc_test["hi"] and "macro AUC" in auc_test["detail"]
    assert comparison["test"]["mcnemar"]["svm"]["test"] == "exact McNemar test"  # any number of classes
    assert comparison["cv"]["auc"]["svm"]["n"] == 3  # the paired t-test over the test env's 3 folds
