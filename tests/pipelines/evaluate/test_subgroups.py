"""Subgroup metrics (view, sex, age band, scanner) on a small hand-made test set: no models trained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.evaluation.models import TestSet
from osteo_pipeline.evaluation.report_builder import compose_report
from osteo_pipeline.pipelines.evaluate import nodes

CLASSES = ["normal", "osteoporosis"]
SUBGROUPS = {
    "attributes": ["view", "sex", "age_band", "scanner"], "min_scans": 10, "age_bands": [60, 70, 80],
    "sex": {"female": ["f", "woman"], "male": ["m"]}, "scanner": {"scanner_a": ["a"], "scanner_b": ["b"]},
}
PARAMS = {"reference_model": "cnn21", "bootstrap": {"n_boot": 50, "alpha": 0.05}, "small_sample": {"scans": 100},
          "subgroups": SUBGROUPS}


@pytest.fixture(scope="module")
def data():
    """60 test scans of 30 patients (two scans each, same view); lateral scans are all osteoporosis."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        label = CLASSES[p % 2]
        view = "lateral" if p % 5 == 4 else "AP"
        label = "osteoporosis" if view == "lateral" else label
        for s in range(2):
            rows.append({"scan_id": f"s{p:02d}{s}", "patient_id": f"pt-{p:02d}", "label": label, "view": view,
                         "sex": ["F", "male", "Woman", "DOE JANE free text"][p % 4], "age": [55, 65, 72, 85, None][p % 5],
                         "scanner": ["scanner_a", "B", "scanner_a"][p % 3]})
    manifest = pd.DataFrame(rows)
    test = TestSet(scan_ids=manifest["scan_id"].to_numpy(), patient_ids=manifest["patient_id"].to_numpy(),
                   labels=manifest["label"].map(CLASSES.index).to_numpy(), class_names=tuple(CLASSES), images={},
                   manifest=manifest, counts={"n_test_patients": 30, "class_counts": {}, "n_excluded_out_of_scheme": 0})
    tables = []
    for model, noise in (("cnn21", 0.3), ("vgg16", 0.6)):
        p1 = np.clip(np.where(manifest["label"] == "osteoporosis", 0.7, 0.3) + rng.normal(0, noise, len(manifest)), 0, 1)
        table = manifest[["scan_id", "patient_id", "label"]].assign(model=model, p_normal=1 - p1, p_osteoporosis=p1)
        table["prediction"] = np.where(p1 >= 0.5, "osteoporosis", "normal")
        table["correct"] = table["prediction"] == table["label"]
        tables.append(table)
    predictions = pd.concat(tables, ignore_index=True)
    return test, predictions, nodes.compute_subgroup_metrics(predictions, test, "binary", PARAMS, 7)


def test_groups_counts_and_metrics(data):
    test, predictions, sub = data
    view = sub["attributes"]["view"]["groups"]
    assert {g: v["n_scans"] for g, v in view.items()} == {"AP": 48, "lateral": 12}
    assert view["lateral"]["skipped"].startswith("a class is absent (normal)") and "models" not in view["lateral"]
    ap = view["AP"]["models"]["cnn21"]
    # the same numbers as the whole-test-set metrics computed on the AP scans alone
    alone = nodes.compute_test_metrics(predictions[predictions["scan_id"].isin(test.manifest.loc[test.manifest.view == "AP", "scan_id"])],
                                       "binary", PARAMS, 7)["cnn21"]
    assert ap["accuracy"] == alone["accuracy"] and ap["ci"]["auc"] == alone["ci"]["auc"] and ap["n_patients"] == 24
    assert view["AP"]["key"] == "view_AP"


def test_free_text_is_never_shown_and_small_groups_say_so(data):
    _, _, sub = data
    sex = sub["attributes"]["sex"]
    assert set(sex["groups"]) == {"female", "male"} and sex["n_unassigned"] == 14  # "DOE JANE free text"
    assert "DOE" not in json.dumps(sub)
    ages = sub["attributes"]["age_band"]
    assert list(ages["groups"]) == ["<60", "60–69", "70–79", "≥80"]
    assert ages["n_unassigned"] == 12 and ages["groups"]["≥80"]["key"] == "age_ge80"
    assert set(sub["attributes"]["scanner"]["groups"]) == {"scanner_a", "scanner_b"}
    small = nodes.compute_subgroup_metrics(data[1], data[0], "binary", {**PARAMS, "subgroups": {**SUBGROUPS, "min_scans": 50}}, 7)
    assert small["attributes"]["view"]["groups"]["AP"]["skipped"] == "n=48 scans, under evaluate.subgroups.min_scans = 50"
    no_scanner = data[0].manifest.drop(columns="scanner")
    absent = nodes.subgroup_assignments(no_scanner, SUBGROUPS)
    assert list(absent) == ["view", "sex", "age_band"]


def test_report_section_and_mlflow_names(data):
    test, predictions, sub = data
    metrics = nodes.compute_test_metrics(predictions, "binary", PARAMS, 7)
    comparison = {"reference": "cnn21", "baselines": ["vgg16"], "cv": {}, "cv_summary": {},
                  "test": {"mcnemar": {}, "auc_difference": {}}}
    status = {"expected": ["cnn21", "vgg16"], "evaluated": ["cnn21", "vgg16"], "missing": {}, "excluded": {},
              "warnings": {}, "pretrained": {}, "families": {"cnn21": "cnn21", "vgg16": "transfer"}, "training_runs": {}}
    paper = {"label": "paper", "table5_percent": {}, "figure7_auc": {}, "test_set": "", "significance": ""}
    table = test.manifest.assign(partition="test")
    fingerprint = {"views": {"studied": ["AP", "lateral"], "n_split_by_view": {"AP": 48, "lateral": 12},
                             "n_left_out_by_view": {"AP": 0, "lateral": 0}}}
    doc, summary, record = compose_report(test, status, metrics, comparison, {}, fingerprint, table, "binary", PARAMS,
                                          paper, sub)
    md = doc.markdown("evaluate")
    assert "## Test-set performance per subgroup" in md and "### Age band (years)" in md
    assert "| lateral | all | 12 (6) | normal 0, osteoporosis 12 | not computed: a class is absent (normal) |" in md
    ap = sub["attributes"]["view"]["groups"]["AP"]["models"]["cnn21"]
    assert "| AP | cnn21 | 48 (24) |" in md and f"{100 * ap['accuracy']:.1f} (" in md
    assert "14 test scan(s) in no group" in md and "DOE" not in md
    assert "### Views" in md and "| test | 48 | 12 |" in md
    child, parent = record["runs"]["cnn21"]["metrics"], record["parent_metrics"]
    assert child["test_auc.view_AP"] == ap["auc"] and child["n_scans.view_lateral"] == 12
    assert "test_auc.view_lateral" not in child and "test_auc_ci_lo.view_AP" in child
    assert parent["cnn21.test_auc.view_AP"] == ap["auc"] and "cnn21.test_auc_ci_lo.view_AP" not in parent
    assert summary["subgroups"] is sub
