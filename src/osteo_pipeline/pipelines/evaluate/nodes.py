"""Nodes of evaluate: the held-out test scans, every trained model's predictions, metrics with
patient-bootstrap CIs, CNN21 against each baseline, figures, the report and its MLflow record.

scipy, matplotlib and TensorFlow are imported by the nodes that use them, so loading the
pipeline (``kedro registry list``, ``kedro viz``) stays fast."""

from __future__ import annotations

import base64
import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from osteo_pipeline.core.labels import LabelScheme
from osteo_pipeline.core.metrics import classification_metrics, finite_or_none
from osteo_pipeline.evaluation.models import (
    NotTrained,
    TestSet,
    TrainedModel,
    assert_not_trained_on,
    declared_families,
    mlflow_history,
    model_artifacts,
    predict_proba,
    predictions_table,
    proba_columns,
    select_test_set,
)
from osteo_pipeline.evaluation.report_builder import CI_METRICS, FIGURES, compose_report
from osteo_pipeline.imaging.view import VIEWS
from osteo_pipeline.pipelines.ingest.privacy import normalise_header, spelling_map

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

IMAGE_FAMILIES = ("cnn21", "transfer")  # Keras models with one image input: Grad-CAM applies


def select_test_scans(
    model_input_150: dict[str, np.ndarray],
    model_input_300: dict[str, np.ndarray],
    split_table: pd.DataFrame,
    scan_manifest: pd.DataFrame,
    label_scheme: str,
) -> TestSet:
    """The test partition of ``label_scheme`` at both input sizes: the only read of test scans.

    Keyed by the images' own side, not the datasets' names: ``roi_resize.size_cnn21`` and
    ``size_baselines`` may be set to other sizes than the names say.
    """
    by_size = {int(inputs["images"].shape[1]): inputs for inputs in (model_input_150, model_input_300)}
    return select_test_set(by_size, split_table, scan_manifest, label_scheme)


# ----------------------------------------------------------------------------- which models


def collect_models(families: dict[str, str], artifacts: dict[str, Any]) -> tuple[dict[str, TrainedModel], dict[str, str]]:
    """The declared models whose model and final-fit report are saved, and why the others are missing.

    ``artifacts`` holds ``<model>__<what>`` -> the loaded catalog dataset (``NotTrained`` where no
    run saved it yet). Per-epoch curves come from the final fit's report, else its MLflow run.
    """
    models: dict[str, TrainedModel] = {}
    missing: dict[str, str] = {}
    for name, family in families.items():
        got = {what: artifacts.get(f"{name}__{what}") for what in model_artifacts(name, family)}
        absent = [got[what].dataset for what in ("model", "final_fit") if isinstance(got[what], NotTrained)]
        if absent:
            missing[name] = f"not trained yet (no saved {' or '.join(absent)})"
            continue
        present = {what: (None if isinstance(value, NotTrained) else value) for what, value in got.items()}
        final_fit = present["final_fit"] or {}
        history = final_fit.get("history")
        if history is None and family != "classical":
            history = mlflow_history(final_fit.get("mlflow_run_id"))
        models[name] = TrainedModel(
            name=name, family=family, model=present["model"], final_fit=final_fit,
            cv_summary=present["cv_summary"] or {}, fold_metrics=present["fold_metrics"],
            baseline_info=present.get("baseline_info"), history=history,
        )
    return models, missing


def check_models(
    data_fingerprint: dict[str, Any],
    test_set: TestSet,
    label_scheme: str,
    params: dict[str, Any],
    train_baselines: dict[str, Any],
    **artifacts: Any,
) -> tuple[dict[str, TrainedModel], dict[str, Any]]:
    """The models fit to evaluate, and a status saying which were evaluated, missing or left out.

    ``artifacts``: every declared model's catalog entries (``collect_models``); the declaration
    (``train_baselines``) gives the report's order. Left out (with the reason): a model trained on
    other data or another split (its data fingerprint differs: its "test" scans may be training
    scans) or on another label scheme. A test patient among a model's early-stopping patients is a
    leak and stops the run.
    """
    families = declared_families(train_baselines)
    trained, missing = collect_models(families, artifacts)
    reference = params["reference_model"]
    classes = list(LabelScheme.of(label_scheme).classes)
    usable: dict[str, TrainedModel] = {}
    status: dict[str, Any] = {
        "expected": list(families), "evaluated": [], "missing": missing,
        "excluded": {}, "warnings": {}, "pretrained": {}, "families": dict(families), "training_runs": {},
    }
    for name, model in trained.items():
        notes = list(model.warnings)
        trained_on = model.cv_summary.get("data_fingerprint")
        if model.class_names != classes:
            status["excluded"][name] = f"trained on classes {model.class_names}, this run evaluates {classes} ({label_scheme})"
        elif trained_on and dict(trained_on) != dict(data_fingerprint):
            status["excluded"][name] = (
                "trained on other data or another split (data fingerprint differs): its test scans may have been "
                f"training scans; retrain it (kedro run --pipelines={'train_cnn21' if model.family == 'cnn21' else 'train_baselines'})"
            )
        else:
            if not trained_on:
                notes.append("its reports carry no data fingerprint: that it was trained on this split is not verified")
            assert_not_trained_on(model, test_set)
            usable[name] = model
        status["warnings"][name] = notes
        status["pretrained"][name] = model.pretrained
        status["training_runs"][name] = model.final_fit.get("mlflow_run_id")  # the final fit's MLflow run
    if reference not in usable:
        why = status["excluded"].get(reference) or status["missing"].get(reference, "not found")
        raise ValueError(f"the reference model {reference} cannot be evaluated: {why}")
    status["evaluated"] = list(usable)
    for name in status["missing"]:
        logger.warning("evaluate: %s is missing (%s)", name, status["missing"][name])
    for name, why in status["excluded"].items():
        logger.warning("evaluate: %s left out: %s", name, why)
    return usable, status


# ----------------------------------------------------------------------------- predictions, metrics


def predict_test_set(models: dict[str, TrainedModel], test_set: TestSet, params: dict[str, Any]) -> pd.DataFrame:
    """Every model's test-set probabilities: one row per model x scan (never augmented)."""
    tables = [predictions_table(name, test_set, predict_proba(m, test_set, int(params["batch_size"])))
              for name, m in models.items()]
    return pd.concat(tables, ignore_index=True)


def _model_rows(predictions: pd.DataFrame, model: str, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label indices, probabilities, patient ids) of one model's rows, in scan order."""
    from osteo_pipeline.evaluation import stats

    rows = predictions[predictions["model"] == model].sort_values("scan_id")
    return (stats.label_indices(rows["label"], class_names), rows[proba_columns(class_names)].to_numpy(float),
            rows["patient_id"].astype(str).to_numpy())


def _metrics_with_ci(y: np.ndarray, proba: np.ndarray, patients: np.ndarray, classes: list[str],
                     boot: dict[str, Any], seed: int) -> dict[str, Any]:
    """One model's metrics on some test scans, with patient-bootstrap CIs (the test set or a subgroup)."""
    from osteo_pipeline.evaluation import stats

    fns = {k: v for k, v in stats.metric_functions(len(classes)).items() if k in CI_METRICS}
    full = classification_metrics(np.asarray(classes, dtype=object)[y], proba, classes)
    cis = stats.bootstrap_cis(y, proba, patients, fns, n_boot=int(boot["n_boot"]), alpha=float(boot["alpha"]), seed=seed)
    onehot = np.eye(len(classes))[y]
    return {
        "n_scans": int(len(y)),
        "n_patients": int(len(np.unique(patients))),
        **{m: finite_or_none(full[m]) for m in (*CI_METRICS, "loss")},
        "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
        "ci": {m: {"lo": finite_or_none(c.lo), "hi": finite_or_none(c.hi), "describe": c.describe()} for m, c in cis.items()},
        "bootstrap": {"method": "patient bootstrap, percentile interval", "n_boot": int(boot["n_boot"]),
                      "alpha": float(boot["alpha"]), "seed": int(seed),
                      "n_skipped": int(next(iter(cis.values())).n_skipped)},
        "confusion_matrix": full["confusion_matrix"],
        "per_class": full["per_class"],
        "class_names": classes,
    }


def compute_test_metrics(predictions: pd.DataFrame, label_scheme: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per model: accuracy, precision, recall, specificity, F1, ROC-AUC (+ per class, confusion
    matrix, log loss, Brier score) on the test set, with patient-bootstrap percentile CIs."""
    classes = list(LabelScheme.of(label_scheme).classes)
    return {model: _metrics_with_ci(*_model_rows(predictions, model, classes), classes, params["bootstrap"], seed)
            for model in dict.fromkeys(predictions["model"])}


# ----------------------------------------------------------------------------- subgroups


def _age_band_names(edges: list[int]) -> list[tuple[str, str]]:
    """(report name, MLflow-safe key) of each band: <60, 60–69, 70–79, ≥80 for edges 60, 70, 80."""
    names = [(f"<{edges[0]}", f"lt{edges[0]}")]
    names += [(f"{lo}–{hi - 1}", f"{lo}-{hi - 1}") for lo, hi in zip(edges, edges[1:])]
    return names + [(f"≥{edges[-1]}", f"ge{edges[-1]}")]


def subgroup_assignments(manifest: pd.DataFrame, settings: dict[str, Any]) -> dict[str, pd.Series]:
    """Per attribute present in the (allow-listed) manifest: each scan's group, or None where the
    value is missing or not a declared spelling. Free-text values are mapped through the declared
    spellings only, so no cell value reaches the report or MLflow."""
    out: dict[str, pd.Series] = {}
    index = manifest["scan_id"].astype(str)
    if "view" in manifest:
        out["view"] = pd.Series(manifest["view"].where(manifest["view"].isin(VIEWS)).to_numpy(), index=index)
    if "age" in manifest:
        edges = sorted(int(e) for e in settings["age_bands"])
        names = [name for name, _ in _age_band_names(edges)]
        bands = pd.cut(pd.to_numeric(manifest["age"], errors="coerce"), [-np.inf, *edges, np.inf], right=False,
                       labels=names)
        out["age_band"] = pd.Series(bands.astype(object).where(bands.notna(), None).to_numpy(), index=index)
    for column in ("sex", "scanner"):
        if column in manifest:
            spellings = spelling_map(settings[column], what=f"evaluate.subgroups.{column} spelling")
            groups = manifest[column].map(lambda v: None if pd.isna(v) else spellings.get(normalise_header(str(v))))
            out[column] = pd.Series(groups.to_numpy(), index=index)
    return {a: out[a] for a in settings["attributes"] if a in out}


def _group_key(attribute: str, group: str, settings: dict[str, Any]) -> str:
    """MLflow-safe suffix of a group (``view_AP``, ``age_60-69``, ``sex_female``, ``scanner_scanner_a``)."""
    if attribute == "age_band":
        keys = dict(_age_band_names(sorted(int(e) for e in settings["age_bands"])))
        return f"age_{keys[group]}"
    return f"{attribute}_{normalise_header(group) if attribute != 'view' else group}"


def _group_order(attribute: str, groups: pd.Series, settings: dict[str, Any]) -> list[str]:
    """The groups present, in report order: views as declared, age bands ascending, others sorted."""
    if attribute == "view":
        names = list(VIEWS)
    elif attribute == "age_band":
        names = [name for name, _ in _age_band_names(sorted(int(e) for e in settings["age_bands"]))]
    else:
        names = sorted(set(groups.dropna()))
    return [name for name in names if (groups == name).any()]


def compute_subgroup_metrics(
    predictions: pd.DataFrame, test_set: TestSet, label_scheme: str, params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Every model's test metrics with patient-bootstrap CIs per subgroup (view, sex, age band,
    scanner family: those the manifest carries), with the n of each. A group with fewer than
    ``subgroups.min_scans`` scans or without every class gets its counts and the reason instead."""
    classes = list(LabelScheme.of(label_scheme).classes)
    settings = params["subgroups"]
    assigned = subgroup_assignments(test_set.manifest, settings)
    out: dict[str, Any] = {"attributes": {}, "min_scans": int(settings["min_scans"]),
                           "absent": [a for a in settings["attributes"] if a not in assigned]}
    for attribute, groups in assigned.items():
        entry: dict[str, Any] = {"n_unassigned": int(groups.isna().sum()), "groups": {}}
        for group in _group_order(attribute, groups, settings):
            scans = set(groups.index[groups == group])
            rows = predictions[predictions["scan_id"].astype(str).isin(scans)]
            first = rows[rows["model"] == rows["model"].iloc[0]]
            counts = first["label"].value_counts().reindex(classes, fill_value=0).astype(int).to_dict()
            info: dict[str, Any] = {"key": _group_key(attribute, str(group), settings), "n_scans": int(len(first)),
                                    "n_patients": int(first["patient_id"].nunique()), "class_counts": counts}
            if len(first) < int(settings["min_scans"]):
                info["skipped"] = f"n={len(first)} scans, under evaluate.subgroups.min_scans = {settings['min_scans']}"
            elif min(counts.values()) == 0:
                info["skipped"] = "a class is absent (" + ", ".join(c for c, n in counts.items() if n == 0) + ")"
            else:
                info["models"] = {m: _metrics_with_ci(*_model_rows(rows, m, classes), classes, params["bootstrap"], seed)
                                  for m in dict.fromkeys(rows["model"])}
            entry["groups"][str(group)] = info
        out["attributes"][attribute] = entry
    return out


def _cv_scores(model: TrainedModel, metric: str) -> pd.Series:
    rows = model.chosen_fold_metrics()
    if rows.empty or metric not in rows:
        return pd.Series(dtype=float)
    return rows.set_index("fold")[metric].astype(float)


def _result(res: Any, **extra: Any) -> dict[str, Any]:
    """A test result as JSON: name, n, statistic, p-value and the sentence the report prints."""
    return {"test": res.test, "n": int(res.n), "statistic": finite_or_none(res.statistic),
            "p_value": finite_or_none(res.p_value), "describe": res.describe(), **extra}


def compare_models(
    predictions: pd.DataFrame, models: dict[str, TrainedModel], label_scheme: str, params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """The reference model (CNN21) against each evaluated baseline, Holm-corrected across baselines.

    CV (as paper 1): paired t-test per metric over the shared CV folds at each model's chosen
    setting, with mean +- sd; pairs only folds with the same id and validation size.
    Test set: exact McNemar on the paired right/wrong calls; DeLong for the AUC difference
    (binary), else a paired patient-bootstrap test of the macro-AUC difference.
    """
    from osteo_pipeline.evaluation import stats

    classes = list(LabelScheme.of(label_scheme).classes)
    reference = params["reference_model"]
    baselines = [m for m in models if m != reference]
    out: dict[str, Any] = {"reference": reference, "baselines": baselines, "cv": {}, "test": {}, "cv_summary": {}}
    # -- CV folds: mean +- sd per model, paired t-tests vs the reference
    for metric in params["cv_test_metrics"]:
        out["cv_summary"][metric] = {}
        for name, model in models.items():
            scores = _cv_scores(model, metric)
            out["cv_summary"][metric][name] = {
                "n_folds": int(scores.notna().sum()), "mean": finite_or_none(scores.mean()),
                "sd": finite_or_none(scores.std(ddof=1)) if scores.notna().sum() > 1 else None,
            }
        ref_rows = models[reference].chosen_fold_metrics()
        tests: dict[str, Any] = {}
        for name in baselines:
            rows = models[name].chosen_fold_metrics()
            if rows.empty or ref_rows.empty or metric not in rows:
                tests[name] = {"test": "paired t-test", "n": 0, "p_value": None, "skipped": "no CV fold metrics"}
                continue
            both = ref_rows.merge(rows, on="fold", suffixes=("_ref", "_b"))
            same = both[both["n_val_ref"] == both["n_val_b"]].dropna(subset=[f"{metric}_ref", f"{metric}_b"])
            if len(same) < 2 or len(same) != len(ref_rows):
                tests[name] = {"test": "paired t-test", "n": int(len(same)), "p_value": None,
                               "skipped": f"folds do not pair up ({len(same)} of {len(ref_rows)} folds share id and size)"}
                continue
            tests[name] = _result(stats.paired_ttest(same[f"{metric}_ref"], same[f"{metric}_b"]), unit="folds", metric=metric)
            if tests[name]["p_value"] is None:
                tests[name]["skipped"] = "undefined: the per-fold differences do not vary"
        _holm(tests)
        out["cv"][metric] = tests
    # -- test set: McNemar and DeLong / bootstrap AUC difference vs the reference
    y, p_ref, patients = _model_rows(predictions, reference, classes)
    mcnemar, auc_tests = {}, {}
    for name in baselines:
        _, p_b, _ = _model_rows(predictions, name, classes)
        res = stats.mcnemar_exact(p_ref.argmax(1) == y, p_b.argmax(1) == y)
        mcnemar[name] = _result(res, unit="scans", reference_only_correct=res.b, baseline_only_correct=res.c,
                                detail=f"right only by {reference}: {res.b}, only by {name}: {res.c}")
        if len(classes) == 2:
            try:
                res = stats.delong_test(y, p_ref[:, 1], p_b[:, 1], pos_label=1)
                auc_tests[name] = _result(res, unit="scans", detail=f"AUC {res.auc_a:.3f} vs {res.auc_b:.3f}")
            except ValueError as error:
                auc_tests[name] = {"test": "DeLong test", "n": int(len(y)), "p_value": None, "skipped": str(error)}
        else:
            res = stats.bootstrap_auc_difference(y, p_ref, p_b, patients, n_boot=int(params["bootstrap"]["n_boot"]),
                                                 seed=seed, classes=list(range(len(classes))))
            auc_tests[name] = _result(res, unit="scans", lo=finite_or_none(res.lo), hi=finite_or_none(res.hi),
                                      detail=f"macro AUC {res.auc_a:.3f} vs {res.auc_b:.3f}, difference {res.difference:+.3f} "
                                             f"({round(100 * (1 - res.alpha))}% CI {res.lo:+.3f} to {res.hi:+.3f})")
    _holm(mcnemar)
    _holm(auc_tests)
    out["test"] = {"mcnemar": mcnemar, "auc_difference": auc_tests}
    return out


def _holm(tests: dict[str, dict[str, Any]]) -> None:
    """Add Holm-adjusted p-values across the baselines of one test family (in place)."""
    from osteo_pipeline.evaluation import stats

    raw = {k: (v["p_value"] if v.get("p_value") is not None else float("nan")) for k, v in tests.items()}
    for name, p in stats.holm(raw).items():
        tests[name]["p_holm"] = finite_or_none(p)
        tests[name]["holm_family"] = len([v for v in raw.values() if np.isfinite(v)])


# ----------------------------------------------------------------------------- Grad-CAM


def _best_baseline(test_metrics: dict[str, Any], models: dict[str, TrainedModel], reference: str,
                   families: tuple[str, ...] | None = None) -> str | None:
    """The baseline with the highest test AUC (accuracy breaks ties), optionally among ``families``."""
    ranked = sorted(
        (name for name in test_metrics if name != reference and (families is None or models[name].family in families)),
        key=lambda n: (test_metrics[n]["auc"] or -1, test_metrics[n]["accuracy"] or -1), reverse=True,
    )
    return ranked[0] if ranked else None


def explain_predictions(
    models: dict[str, TrainedModel], test_set: TestSet, predictions: pd.DataFrame, test_metrics: dict[str, Any],
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """Grad-CAM panels for the reference model and the best Keras image baseline on the same test
    scans: per class, the reference model's most confident right and most confident wrong calls."""
    from osteo_pipeline.evaluation.gradcam import grad_cam, gradcam_layer, overlay

    reference, settings = params["reference_model"], params["gradcam"]
    chosen = [reference, _best_baseline(test_metrics, models, reference, IMAGE_FAMILIES)]
    ref = predictions[predictions["model"] == reference].set_index("scan_id")
    ref = ref.assign(confidence=ref[proba_columns(test_set.class_names)].max(axis=1))
    scans: list[str] = []
    for label in test_set.class_names:
        for correct in (True, False):
            pool = ref[(ref["label"] == label) & (ref["correct"] == correct)].sort_values("confidence", ascending=False)
            scans += pool.index[: int(settings["per_class"])].tolist()
    position = {s: i for i, s in enumerate(test_set.scan_ids)}
    panels: list[dict[str, Any]] = []
    for name in filter(None, chosen):
        model = models[name]
        if model.family not in IMAGE_FAMILIES or not scans:
            continue
        size = int(model.model.input_shape[1])
        rows = predictions[predictions["model"] == name].set_index("scan_id").loc[scans]
        images = test_set.images_at(size)[[position[s] for s in scans]]
        predicted = [test_set.class_names.index(c) for c in rows["prediction"]]
        layer = gradcam_layer(model.model)
        heatmaps = grad_cam(model.model, images.astype(np.float32) / 255.0, np.asarray(predicted), layer)
        for scan, image, heat, (_, row) in zip(scans, images, heatmaps, rows.iterrows(), strict=True):
            panels.append({
                "model": name, "layer": layer, "scan_id": scan, "label": row["label"], "prediction": row["prediction"],
                "probability": float(row[f"p_{row['prediction']}"]), "correct": bool(row["correct"]),
                "overlay": overlay(image, heat, alpha=float(settings["alpha"])),
            })
    return panels


# ----------------------------------------------------------------------------- figures


def plot_figures(
    predictions: pd.DataFrame,
    test_metrics: dict[str, Any],
    models: dict[str, TrainedModel],
    gradcam_panels: list[dict[str, Any]],
    label_scheme: str,
    params: dict[str, Any],
) -> tuple[Figure, Figure, Figure, Figure, Figure, dict[str, str]]:
    """The five figures (each its own versioned catalog entry, previewed by kedro-viz) and the
    same as base64 PNGs for the self-contained HTML report."""
    from osteo_pipeline.evaluation import figures

    classes = list(LabelScheme.of(label_scheme).classes)
    made = {
        "roc_curves": figures.roc_figure(predictions, classes, {m: v["auc"] or float("nan") for m, v in test_metrics.items()}),
        "confusion_matrices": figures.confusion_figure({m: v["confusion_matrix"] for m, v in test_metrics.items()}, classes),
        "training_curves": figures.training_curves_figure({m: models[m].history for m in test_metrics}),
        "calibration": figures.calibration_figure(predictions, classes, int(params["calibration_bins"])),
        "gradcam": figures.gradcam_figure(gradcam_panels),
    }
    encoded = {name: figures.png_base64(fig, int(params["figure_dpi"])) for name, fig in made.items()}
    return (*(made[n] for n in FIGURES), encoded)


def report_figure_files(figures_base64: dict[str, str]) -> dict[str, Image.Image]:
    """report.md's figures by name: the very PNGs report.html inlines. Its links cannot name the
    run's save version, so they get an unversioned folder beside the versioned figure entries."""
    return {name: Image.open(io.BytesIO(base64.b64decode(png))) for name, png in figures_base64.items()}


# ----------------------------------------------------------------------------- registry


def update_model_registry(
    models: dict[str, TrainedModel],
    test_metrics: dict[str, Any],
    data_fingerprint: dict[str, Any],
    label_scheme: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """A model card (description and tags) on every evaluated model's registered version, and the
    ``champion`` / ``challenger`` aliases by the rule of ``evaluate.registry``; what was done."""
    from osteo_pipeline.evaluation import registry

    rule = params["registry"]
    pool = registry.candidates(test_metrics, {name: m.family for name, m in models.items()}, rule["metric"])
    level = round(100 * (1 - float(params["bootstrap"]["alpha"])))
    selection = registry.choose_champion(pool, rule, level)
    cards = {name: registry.evaluated_card(models[name], test_metrics[name], data_fingerprint, label_scheme,
                                           selection.reasons.get(name), int(params["small_sample"]["scans"]))
             for name in test_metrics}
    if not any(m.final_fit.get("registered_model_name") and m.final_fit.get("mlflow_run_id") for m in models.values()):
        logger.warning("evaluate: no evaluated model was registered in MLflow (tracking off?): registry left alone")
        return {"champion": None, "selection": selection.reasons, "versions": {}, "skipped": dict.fromkeys(models, "not registered")}
    import mlflow

    active = mlflow.active_run()
    record = registry.publish(mlflow.MlflowClient(), {n: models[n] for n in test_metrics}, cards, selection, rule,
                              active.info.run_id if active else None)
    logger.info("evaluate: registry champion %s", record["champion"] or "none (no model passed the rule)")
    return {**record, "selection": selection.reasons}


# ----------------------------------------------------------------------------- report


def build_report(
    test_set: TestSet,
    model_status: dict[str, Any],
    test_metrics: dict[str, Any],
    comparison: dict[str, Any],
    figures_base64: dict[str, str],
    ingest_report: dict[str, Any],
    data_fingerprint: dict[str, Any],
    split_table: pd.DataFrame,
    label_scheme: str,
    params: dict[str, Any],
    paper_reference: dict[str, Any],
    subgroup_metrics: dict[str, Any] | None = None,
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """report.md (figures linked), the self-contained report.html (figures inlined), the
    evaluation summary (JSON) and the MLflow record (per-model child runs + parent metrics)."""
    doc, summary, record = compose_report(test_set, model_status, test_metrics, comparison, ingest_report,
                                          data_fingerprint, split_table, label_scheme, params, paper_reference,
                                          subgroup_metrics)
    return doc.markdown(params["figure_dir"]), doc.html(figures_base64), summary, record
