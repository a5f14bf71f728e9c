"""The second paper's three-class study end to end: a cohort with osteopenia scans, CNN21 and the
SVM baseline trained on `label_scheme=three_class`, then `evaluate` (macro metrics, per-class
figures, the patient-bootstrap macro-AUC test instead of DeLong/McNemar's binary forms)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from osteo_testkit import TEST_COHORT, make_project, run_kedro

pytestmark = pytest.mark.slow

THREE = {"label_scheme": "three_class"}
CLASSES = ["normal", "osteopenia", "osteoporosis"]


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from osteo_pipeline.cohort import generate_cohort

    root = make_project(tmp_path_factory.mktemp("three_class") / "project")
    generate_cohort(root / "data" / "01_raw", **{**TEST_COHORT, "n_normal": 12, "n_osteoporosis": 12, "n_osteopenia": 12})
    run_kedro(root, ["ingest", "roi_resize", "split_augment"], params=THREE)
    run_kedro(root, ["train_cnn21"], params={**THREE, "train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}}})
    run_kedro(root, ["train_baselines"], params=THREE, namespaces=["svm"])
    run_kedro(root, ["evaluate"], params=THREE)
    return root


def test_predictions_carry_all_three_classes_and_sum_to_one(project):
    predictions = pd.read_csv(latest(project / "data" / "08_reporting" / "test_predictions.csv"))
    assert set(predictions.model) == {"cnn21", "svm"}
    assert set(predictions.label) == set(CLASSES)  # the test partition holds every class
    probs = predictions[[f"p_{c}" for c in CLASSES]]
    assert probs.sum(axis=1).round(6).eq(1).all()
    assert set(predictions.prediction) <= set(CLASSES)


def summary(project: Path) -> dict:
    return json.loads(latest(project / "data" / "08_reporting" / "evaluation_summary.json").read_text())


def test_metrics_are_macro_with_per_class_figures(project):
    result = summary(project)
    assert result["label_scheme"] == "three_class" and result["class_names"] == CLASSES
    for model in ("cnn21", "svm"):
        metrics = result["test_metrics"][model]
        assert set(metrics["per_class"]) == set(CLASSES)
        for figures in metrics["per_class"].values():
            assert 0.0 <= figures["recall"] <= 1.0 and 0.0 <= figures["specificity"] <= 1.0
        assert metrics["ci"]["auc"]["lo"] <= metrics["auc"] <= metrics["ci"]["auc"]["hi"]


def test_significance_uses_the_three_class_tests_and_says_so(project):
    comparison = summary(project)["comparison"]
    auc_test = comparison["test"]["auc_difference"]["svm"]
    assert auc_test["test"] == "patient-bootstrap AUC difference"  # DeLong is binary-only
    assert auc_test["lo"] <= auc_test["statistic"] <= auc_test["hi"] and "macro AUC" in auc_test["detail"]
    assert comparison["test"]["mcnemar"]["svm"]["test"] == "exact McNemar test"  # correct/wrong pairs: any number of classes
    assert comparison["cv"]["auc"]["svm"]["n"] == 3  # the paired t-test over the test env's 3 folds
    md = (project / "data" / "08_reporting" / "report.md").read_text()
    assert "three-class" in md and "macro" in md
    assert "not comparable" in md  # the paper's binary reference figures are not set beside these
