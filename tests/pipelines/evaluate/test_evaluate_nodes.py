"""evaluate's nodes on tiny real models: which models are evaluated, metrics, paired tests, report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from evaluate_kit import SIZE, fake_cohort, tiny_image_model
from osteo_pipeline.core.metrics import classification_metrics
from osteo_pipeline.evaluation.stats import delong_test, holm, mcnemar_exact
from osteo_pipeline.evaluation.models import NotTrained, TrainedModel, model_artifacts
from osteo_pipeline.core.leakage import LeakageError
from osteo_pipeline.pipelines.evaluate import nodes

CLASSES = ["normal", "osteoporosis"]
FINGERPRINT = {"manifest_sha256": "abc", "split_seed": 42}
PARAMS = {
    "reference_model": "cnn21", "batch_size": 8, "bootstrap": {"n_boot": 200, "alpha": 0.05},
    "cv_test_metrics": ["accuracy", "auc"], "small_sample": {"scans": 100}, "calibration_bins": 5,
    "gradcam": {"per_class": 1, "alpha": 0.45}, "figure_dpi": 40, "figure_dir": "evaluate",
}
PAPER = {
    "label": "Reported by paper 1, not ours.",
    "table5_percent": {"cnn21": {"accuracy": 97.14, "precision": 99.04, "recall": 95.41, "f1": 97.16},
                       "vgg16": {"accuracy": 88.09, "precision": 85.71, "recall": 90.0, "f1": 87.8}},
    "figure7_auc": {"cnn21": 0.9823, "vgg16": 0.958},
    "test_set": "210 images", "significance": "p < 0.05", "discrepancies": ["one"],
}


def _folds(name: str, accuracy: list[float], auc: list[float], n_val: int = 4) -> pd.DataFrame:
    k = len(accuracy)
    rows = pd.DataFrame({"model": name, "learning_rate": 1e-3, "fold": range(k), "n_val": n_val,
                         "accuracy": accuracy, "auc": auc})
    other = rows.assign(learning_rate=1e-4, accuracy=0.0, auc=0.0)  # a grid point not chosen
    return pd.concat([other, rows], ignore_index=True)


def _model(name, family, net, accuracy, auc, **extra) -> TrainedModel:
    return TrainedModel(name, family, net, {"class_names": CLASSES, "val_patients": ["p00"]},
                        cv_summary={"best_learning_rate": 1e-3, "data_fingerprint": FINGERPRINT},
                        fold_metrics=_folds(name, accuracy, auc), **extra)


def _check(models: dict[str, TrainedModel], families: dict[str, str], test, params=PARAMS):
    """``check_models`` as the pipeline calls it: every declared model's catalog entries, a
    ``NotTrained`` stand-in for those of a model no run saved (as the before-run hook gives)."""
    artifacts = {}
    for name, family in families.items():
        for what, dataset in model_artifacts(name, family).items():
            model = models.get(name)
            value = NotTrained(dataset) if model is None else (model.model if what == "model" else getattr(model, what))
            artifacts[f"{name}__{what}"] = NotTrained(dataset) if value is None and what != "model" else value
    blocks = {name: {"family": family} for name, family in families.items() if family != "cnn21"}
    return nodes.check_models(FINGERPRINT, test, "binary", params, blocks, **artifacts)


@pytest.fixture(scope="module")
def setup():
    inputs, table, manifest = fake_cohort(n_patients=24)
    test = nodes.select_test_set(inputs, table, manifest, "binary")
    models = {
        "cnn21": _model("cnn21", "cnn21", tiny_image_model(SIZE, seed=1), [.80, .85, .90, .70, .75], [.9, .92, .95, .85, .8]),
        "vgg16": _model("vgg16", "transfer", tiny_image_model(2 * SIZE, seed=2), [.70, .80, .85, .60, .70], [.8, .9, .9, .7, .75],
                        baseline_info={"pretrained": False, "warnings": ["vgg16 was trained WITHOUT ImageNet weights"]}),
        "resnet50": _model("resnet50", "transfer", tiny_image_model(2 * SIZE, seed=3), [.75, .8, .8, .7, .7], [.85, .9, .9, .8, .8],
                           baseline_info={"pretrained": True}),
    }
    usable, status = _check(models, {"cnn21": "cnn21", "vgg16": "transfer", "resnet50": "transfer", "svm": "classical"}, test)
    predictions = nodes.predict_test_set(usable, test, PARAMS)
    metrics = nodes.compute_test_metrics(predictions, "binary", PARAMS, 7)
    comparison = nodes.compare_models(predictions, usable, "binary", PARAMS, 7)
    return {"test": test, "table": table, "models": usable, "status": status, "predictions": predictions,
            "metrics": metrics, "comparison": comparison}


# ---------------------------------------------------------------- which models


def test_status_lists_evaluated_missing_and_pretraining(setup):
    status = setup["status"]
    assert status["evaluated"] == ["cnn21", "vgg16", "resnet50"]
    assert status["missing"] == {"svm": "not trained yet (no saved svm.sklearn_model or svm.final_fit)"}
    assert status["pretrained"] == {"cnn21": None, "vgg16": False, "resnet50": True}
    assert status["families"]["svm"] == "classical"
    assert any("WITHOUT ImageNet" in w for w in status["warnings"]["vgg16"])


def test_stale_or_other_scheme_models_are_left_out_and_a_leak_stops_the_run(setup):
    test, models = setup["test"], setup["models"]
    stale = _model("vgg16", "transfer", None, [.5] * 5, [.5] * 5)
    stale.cv_summary["data_fingerprint"] = {**FINGERPRINT, "split_seed": 7}
    three = _model("resnet50", "transfer", None, [.5] * 5, [.5] * 5)
    three.final_fit["class_names"] = ["normal", "osteopenia", "osteoporosis"]
    unverified = _model("svm", "classical", None, [.5] * 5, [.5] * 5)
    del unverified.cv_summary["data_fingerprint"]
    families = {"cnn21": "cnn21", "vgg16": "transfer", "resnet50": "transfer", "svm": "classical"}
    usable, status = _check({"cnn21": models["cnn21"], "vgg16": stale, "resnet50": three, "svm": unverified}, families, test)
    assert list(usable) == ["cnn21", "svm"]
    assert "data fingerprint differs" in status["excluded"]["vgg16"] and "train_baselines" in status["excluded"]["vgg16"]
    assert "classes" in status["excluded"]["resnet50"]
    assert any("not verified" in w for w in status["warnings"]["svm"])
    # the reference model itself unusable: nothing to compare against
    with pytest.raises(ValueError, match="reference model cnn21"):
        _check({"cnn21": stale}, {"cnn21": "cnn21"}, test, {**PARAMS, "reference_model": "cnn21"})
    leaky = _model("cnn21", "cnn21", None, [.5] * 5, [.5] * 5)
    leaky.final_fit["val_patients"] = [test.patient_ids[0]]
    with pytest.raises(LeakageError):
        _check({"cnn21": leaky}, {"cnn21": "cnn21"}, test)


# ---------------------------------------------------------------- predictions and metrics


def test_predictions_cover_every_model_on_the_test_scans_only(setup):
    predictions, test, table = setup["predictions"], setup["test"], setup["table"]
    assert predictions.groupby("model").size().to_dict() == {m: len(test) for m in setup["models"]}
    test_ids = set(table.loc[table.partition == "test", "scan_id"])
    assert set(predictions.scan_id) <= test_ids
    assert {"scan_id", "patient_id", "label", "p_normal", "p_osteoporosis", "prediction", "model"} <= set(predictions)


def test_metrics_are_the_evaluation_metrics_with_covering_patient_cis(setup):
    for model, m in setup["metrics"].items():
        rows = setup["predictions"].query("model == @model").sort_values("scan_id")
        ref = classification_metrics(rows.label.to_numpy(), rows[["p_normal", "p_osteoporosis"]].to_numpy(), CLASSES)
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "auc"):
            assert m[name] == pytest.approx(ref[name])
            assert m["ci"][name]["lo"] <= m[name] <= m["ci"][name]["hi"]
            assert "patient bootstrap" in m["ci"][name]["describe"]
        assert m["confusion_matrix"] == ref["confusion_matrix"]
        assert m["n_patients"] == rows.patient_id.nunique() and m["bootstrap"]["n_boot"] == 200


# ---------------------------------------------------------------- comparisons


def test_cv_paired_ttest_uses_the_chosen_setting_on_shared_folds(setup):
    cv = setup["comparison"]["cv"]["accuracy"]
    ref = sps.ttest_rel([.80, .85, .90, .70, .75], [.70, .80, .85, .60, .70])
    assert cv["vgg16"]["test"] == "paired t-test" and cv["vgg16"]["n"] == 5
    assert cv["vgg16"]["p_value"] == pytest.approx(ref.pvalue) and cv["vgg16"]["statistic"] == pytest.approx(ref.statistic)
    assert cv["vgg16"]["p_holm"] == pytest.approx(holm({k: v["p_value"] for k, v in cv.items()})["vgg16"])
    summary = setup["comparison"]["cv_summary"]["accuracy"]["cnn21"]
    assert (summary["mean"], summary["sd"], summary["n_folds"]) == pytest.approx((0.8, np.std([.8, .85, .9, .7, .75], ddof=1), 5))


def test_folds_that_do_not_pair_are_not_tested(setup):
    models = dict(setup["models"])
    other = models["vgg16"]
    shifted = TrainedModel("vgg16", "transfer", other.model, other.final_fit, cv_summary=other.cv_summary,
                           fold_metrics=other.fold_metrics.assign(n_val=9), baseline_info=other.baseline_info)
    comparison = nodes.compare_models(setup["predictions"], {**models, "vgg16": shifted}, "binary", PARAMS, 7)
    assert comparison["cv"]["accuracy"]["vgg16"]["p_value"] is None
    assert "do not pair" in comparison["cv"]["accuracy"]["vgg16"]["skipped"]


def test_test_set_tests_are_mcnemar_and_delong_on_the_paired_predictions(setup):
    predictions, comparison = setup["predictions"], setup["comparison"]
    ref = predictions.query("model == 'cnn21'").sort_values("scan_id")
    base = predictions.query("model == 'vgg16'").sort_values("scan_id")
    y = (ref.label == "osteoporosis").to_numpy().astype(int)
    expected_m = mcnemar_exact(ref.correct.to_numpy(), base.correct.to_numpy())
    expected_d = delong_test(y, ref.p_osteoporosis.to_numpy(), base.p_osteoporosis.to_numpy())
    got_m, got_d = comparison["test"]["mcnemar"]["vgg16"], comparison["test"]["auc_difference"]["vgg16"]
    assert got_m["p_value"] == pytest.approx(expected_m.p_value) and got_m["n"] == len(ref)
    assert got_m["test"] == "exact McNemar test" and got_d["test"] == "DeLong test"
    assert got_d["p_value"] == pytest.approx(expected_d.p_value)
    raw = {k: v["p_value"] for k, v in comparison["test"]["mcnemar"].items()}
    assert {k: v["p_holm"] for k, v in comparison["test"]["mcnemar"].items()} == pytest.approx(holm(raw))


def test_a_hand_made_mcnemar_case_through_the_node():
    # 12 scans: the reference alone right on 1, the baseline alone right on 7 -> 2 * P(X<=1 | Bin(8, 1/2)) = 18/256
    y = np.array(["osteoporosis"] * 6 + ["normal"] * 6)
    ref_right = np.r_[np.ones(1), np.zeros(7), np.ones(2), np.zeros(2)].astype(bool)
    base_right = np.r_[np.zeros(1), np.ones(7), np.ones(2), np.zeros(2)].astype(bool)

    def table(model, right):
        truth_pos = y == "osteoporosis"
        p_pos = np.where(right == truth_pos, 0.8, 0.2)
        return pd.DataFrame({"model": model, "scan_id": [f"s{i:02d}" for i in range(12)], "patient_id": [f"p{i}" for i in range(12)],
                             "label": y, "p_normal": 1 - p_pos, "p_osteoporosis": p_pos,
                             "prediction": np.where(p_pos > 0.5, "osteoporosis", "normal"), "correct": right})
    predictions = pd.concat([table("cnn21", ref_right), table("svm", base_right)])
    empty = TrainedModel("x", "classical", None, {"class_names": CLASSES})
    out = nodes.compare_models(predictions, {"cnn21": empty, "svm": empty}, "binary", PARAMS, 0)
    res = out["test"]["mcnemar"]["svm"]
    assert (res["reference_only_correct"], res["baseline_only_correct"], res["n"]) == (1, 7, 12)
    assert res["p_value"] == pytest.approx(18 / 256)
    assert out["cv"]["accuracy"]["svm"]["skipped"] == "no CV fold metrics"


def test_three_classes_compare_macro_auc_by_patient_bootstrap():
    classes = ["normal", "osteopenia", "osteoporosis"]
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 30)
    rows = []
    for model, signal in (("cnn21", 3.0), ("svm", 0.0)):
        logits = signal * np.eye(3)[y] + rng.normal(0, 1, (30, 3))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        rows.append(pd.DataFrame({"model": model, "scan_id": [f"s{i:02d}" for i in range(30)],
                                  "patient_id": [f"p{i // 2}" for i in range(30)], "label": np.asarray(classes)[y],
                                  **{f"p_{c}": p[:, k] for k, c in enumerate(classes)},
                                  "prediction": np.asarray(classes)[p.argmax(1)]}))
    predictions = pd.concat(rows).assign(correct=lambda d: d.label == d.prediction)
    empty = TrainedModel("x", "classical", None, {"class_names": classes})
    out = nodes.compare_models(predictions, {"cnn21": empty, "svm": empty}, "three_class", PARAMS, 0)
    res = out["test"]["auc_difference"]["svm"]
    assert res["test"] == "patient-bootstrap AUC difference" and res["statistic"] > 0 and res["lo"] <= res["statistic"] <= res["hi"]
    assert "15 patients" in res["describe"]


# ---------------------------------------------------------------- Grad-CAM, figures, report


def test_gradcam_explains_the_reference_and_the_best_image_baseline_on_the_same_scans(setup):
    panels = nodes.explain_predictions(setup["models"], setup["test"], setup["predictions"], setup["metrics"], PARAMS)
    by_model = {}
    for p in panels:
        by_model.setdefault(p["model"], []).append(p["scan_id"])
    best = max(["vgg16", "resnet50"], key=lambda m: (setup["metrics"][m]["auc"], setup["metrics"][m]["accuracy"]))
    assert list(by_model) == ["cnn21", best] and by_model["cnn21"] == by_model[best]
    ref = setup["predictions"].query("model == 'cnn21'").set_index("scan_id").loc[by_model["cnn21"]]
    assert len(ref) <= 4 and ref.groupby(["label", "correct"]).size().max() == 1  # <= 1 per class x right/wrong
    assert all(p["overlay"].shape[:2] == (SIZE if p["model"] == "cnn21" else 2 * SIZE,) * 2 for p in panels)


@pytest.fixture(scope="module")
def report(setup):
    panels = nodes.explain_predictions(setup["models"], setup["test"], setup["predictions"], setup["metrics"], PARAMS)
    *figs, encoded = nodes.plot_figures(setup["predictions"], setup["metrics"], setup["models"], panels, "binary", PARAMS)
    ingest = {"raw_dir": "data/01_raw", "layout": "class_folders",
              "counts": {"accepted": 48, "scan_files": 48, "patients": 24, "accepted_by_class": {"normal": 16}}}
    md, html, summary, record = nodes.build_report(
        setup["test"], setup["status"], setup["metrics"], setup["comparison"], encoded, ingest, FINGERPRINT,
        setup["table"], "binary", PARAMS, PAPER)
    return {"figs": figs, "encoded": encoded, "md": md, "html": html, "summary": summary, "record": record}


def test_figures_are_made_and_inlined(report):
    assert len(report["figs"]) == 5 and set(report["encoded"]) == set(nodes.FIGURES)
    for name in nodes.FIGURES:
        assert f"data:image/png;base64,{report['encoded'][name]}" in report["html"]
        assert f"(evaluate/{name}.png)" in report["md"]


def test_every_p_value_is_printed_with_its_test_and_n(report):
    lines = [line for line in report["md"].splitlines() if re.search(r"\bp[=<]\s?\d", line)]
    assert lines  # there are p-values to check
    for line in lines:
        for cell in line.split("|"):
            if re.search(r"\bp[=<]\s?\d", cell):
                assert re.search(r"(t-test|McNemar|DeLong|bootstrap)", cell), cell
                assert re.search(r"\bn=\d+", cell), cell


def test_report_says_what_is_missing_untrained_and_small(report):
    md = report["md"]
    assert "svm" in md and "missing" in md and "Baselines missing from this report: svm" in md
    assert "NOT pretrained" in md and "WITHOUT ImageNet" in md
    assert "Small samples" in md and "fewer than 100" in md and "4 degrees of freedom" in md
    # the paper's numbers are there, labelled as the paper's
    assert "Reference: the numbers paper 1 reports (not ours)" in md and "97.14" in md and "0.9823" in md
    best = max(["vgg16", "resnet50"], key=lambda m: (report["summary"]["test_metrics"][m]["auc"],
                                                      report["summary"]["test_metrics"][m]["accuracy"]))
    assert f"the best baseline by test AUC ({best})" in md


def test_report_numbers_come_from_the_metrics(report, setup):
    m = setup["metrics"]["cnn21"]
    row = next(line for line in report["md"].splitlines() if line.startswith(f"| cnn21 | {m['n_scans']} ({m['n_patients']}) |"))
    assert f"{100 * m['accuracy']:.1f} ({100 * m['ci']['accuracy']['lo']:.1f}–{100 * m['ci']['accuracy']['hi']:.1f})" in row
    assert report["summary"]["test_metrics"] is setup["metrics"]


def test_mlflow_record_uses_the_shared_metric_names(report, setup):
    runs, parent = report["record"]["runs"], report["record"]["parent_metrics"]
    assert set(runs) == set(setup["models"])
    for model, run in runs.items():
        assert {"test_auc", "test_accuracy", "test_precision", "test_recall", "test_specificity", "test_f1",
                "test_loss"} <= set(run["metrics"])
        assert run["metrics"]["test_auc"] == setup["metrics"][model]["auc"]
        assert parent[f"{model}.test_auc"] == setup["metrics"][model]["auc"]
    assert "test_mcnemar_p_vs_cnn21" in runs["vgg16"]["metrics"]


def test_three_class_run_reports_macro_and_per_class_figures():
    inputs, table, manifest = fake_cohort(n_patients=24)
    test = nodes.select_test_set(inputs, table, manifest, "three_class")
    classes = ["normal", "osteopenia", "osteoporosis"]

    def model(name, seed):
        return TrainedModel(name, "cnn21" if name == "cnn21" else "transfer", tiny_image_model(SIZE, 3, seed),
                            {"class_names": classes}, cv_summary={"best_learning_rate": 1e-3},
                            fold_metrics=_folds(name, [.5, .6, .7], [.6, .7, .8]))
    models = {"cnn21": model("cnn21", 1), "vgg16": model("vgg16", 2)}
    predictions = nodes.predict_test_set(models, test, PARAMS)
    metrics = nodes.compute_test_metrics(predictions, "three_class", PARAMS, 0)
    rows = predictions.query("model == 'cnn21'").sort_values("scan_id")
    ref = classification_metrics(rows.label.to_numpy(), rows[[f"p_{c}" for c in classes]].to_numpy(), classes)
    assert metrics["cnn21"]["specificity"] == pytest.approx(ref["specificity"])  # macro one-vs-rest
    assert set(metrics["cnn21"]["per_class"]) == set(classes)
    comparison = nodes.compare_models(predictions, models, "three_class", PARAMS, 0)
    assert comparison["test"]["auc_difference"]["vgg16"]["test"] == "patient-bootstrap AUC difference"
    status = {"expected": ["cnn21", "vgg16"], "evaluated": ["cnn21", "vgg16"], "missing": {}, "excluded": {},
              "warnings": {}, "pretrained": {"vgg16": True}, "families": {"cnn21": "cnn21", "vgg16": "transfer"}, "training_runs": {}}
    md, *_ = nodes.build_report(test, status, metrics, comparison, {}, {}, FINGERPRINT, table, "three_class", PARAMS, PAPER)
    assert "### Per class (one-vs-rest)" in md and "| cnn21 | osteopenia |" in md
    assert "one-vs-rest macro ROC-AUC" in md and "this run is three-class, so they are not comparable" in md
    assert "AUC difference: patient bootstrap" in md
