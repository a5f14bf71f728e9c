"""The evaluate stage's report, composed from its computed results: cohort, models, Table-5-style
metrics with CIs, CNN21 against each baseline (every p-value with its test and n), figures, and
paper 1's own reported numbers, labelled as the paper's."""

from __future__ import annotations

from typing import Any

import pandas as pd

from osteo_pipeline.core.metrics import finite_or_none
from osteo_pipeline.evaluation.models import TestSet
from osteo_pipeline.evaluation.report import Report

CI_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
FIGURES = ("roc_curves", "confusion_matrices", "training_curves", "calibration", "gradcam")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _with_ci(metrics: dict[str, Any], name: str) -> str:
    ci = metrics["ci"].get(name, {})
    if metrics.get(name) is None:
        return "n/a"
    if ci.get("lo") is None:
        return _pct(metrics[name])
    return f"{_pct(metrics[name])} ({_pct(ci['lo'])}–{_pct(ci['hi'])})"


def _p(result: dict[str, Any] | None) -> str:
    """'exact McNemar test, n=52 scans: p=0.031 (Holm 0.093)': never a bare p-value."""
    if not result:
        return "not run"
    if result.get("p_value") is None:
        return f"{result.get('test', 'test')}: not computed ({result.get('skipped', 'undefined')})"
    p = result["p_value"]
    shown = "p<0.001" if p < 0.001 else f"p={p:.3g}"
    holm = result.get("p_holm")
    holm_txt = ("" if holm is None or result.get("holm_family", 0) < 2
                else f" (Holm-adjusted {holm:.3g} over {result['holm_family']} baselines)")
    detail = f"{result['detail']}; " if result.get("detail") else ""
    return f"{detail}{result['test']}, n={result['n']} {result.get('unit', '')}: {shown}{holm_txt}".replace("  ", " ")


def compose_report(
    test_set: TestSet,
    model_status: dict[str, Any],
    test_metrics: dict[str, Any],
    comparison: dict[str, Any],
    ingest_report: dict[str, Any],
    data_fingerprint: dict[str, Any],
    split_table: pd.DataFrame,
    label_scheme: str,
    params: dict[str, Any],
    paper_reference: dict[str, Any],
    subgroup_metrics: dict[str, Any] | None = None,
) -> tuple[Report, dict[str, Any], dict[str, Any]]:
    """The report document, the evaluation summary (JSON) and the MLflow record (per-model child
    runs + parent metrics). Every number comes from the inputs; the only typed-in figures are
    the paper's, from ``paper_reference`` (parameters_evaluate.yml). ``subgroup_metrics``
    (``compute_subgroup_metrics``) adds the per-subgroup section. One function per section."""
    reference = comparison["reference"]
    classes = list(test_set.class_names)
    doc = Report(title=f"Osteoporosis detection on spine DXA: {reference} against the baselines ({label_scheme})")
    _cohort_section(doc, test_set, ingest_report or {}, data_fingerprint, split_table, label_scheme)
    _models_section(doc, model_status)
    boot = next(iter(test_metrics.values()))["bootstrap"]
    _performance_section(doc, test_metrics, classes, boot)
    if subgroup_metrics:
        _subgroup_section(doc, subgroup_metrics, boot)
    _comparison_section(doc, test_set, comparison, model_status["evaluated"], params["small_sample"])
    _figures_section(doc, test_metrics, model_status, reference)
    _paper_section(doc, paper_reference, test_metrics, label_scheme)

    summary = {
        "label_scheme": label_scheme, "class_names": classes, "reference_model": reference,
        "test_set": test_set.counts, "models": model_status, "test_metrics": test_metrics, "comparison": comparison,
        "data_fingerprint": data_fingerprint, "subgroups": subgroup_metrics or {},
    }
    return doc, summary, mlflow_record(test_metrics, comparison, model_status, test_set, label_scheme, subgroup_metrics)


def _cohort_section(doc: Report, test_set: TestSet, ingest_report: dict[str, Any], data_fingerprint: dict[str, Any],
                    split_table: pd.DataFrame, label_scheme: str) -> None:
    """Where the scans came from, the partitions, the views and what ingest left out."""
    classes = list(test_set.class_names)
    counts = ingest_report.get("counts", {})
    doc.heading("Cohort")
    in_scheme = split_table[split_table["label"].isin(classes)]
    by_part = in_scheme.groupby(["partition", "label"]).size().unstack(fill_value=0).reindex(columns=classes, fill_value=0)
    doc.bullets([
        f"Source: {ingest_report.get('raw_dir', 'unknown')} (layout: {ingest_report.get('layout', 'unknown')}); "
        f"{counts.get('accepted', len(split_table))} scans accepted of {counts.get('scan_files', 'n/a')} scan files, "
        f"{counts.get('patients', split_table['patient_id'].nunique())} patients.",
        "Classes in the cohort: " + ", ".join(f"{c} {n}" for c, n in (counts.get("accepted_by_class") or {}).items()) + ".",
        f"Label scheme `{label_scheme}`: {', '.join(classes)}; {test_set.counts['n_excluded_out_of_scheme']} test scans "
        "of other classes are outside this scheme and not evaluated.",
        f"Held-out test partition: {len(test_set)} scans of {test_set.counts['n_test_patients']} patients "
        f"({', '.join(f'{c} {n}' for c, n in test_set.counts['class_counts'].items())}); never augmented, never seen in CV "
        "or model selection; no patient in two partitions (checked at run time).",
        f"Data fingerprint: manifest `{str(data_fingerprint.get('manifest_sha256', ''))[:12]}`, "
        f"split seed {data_fingerprint.get('split_seed')}.",
    ])
    doc.table(["partition", *classes, "scans", "patients"],
              [[part, *by_part.loc[part].tolist(), int(by_part.loc[part].sum()),
                int(in_scheme.loc[in_scheme["partition"] == part, "patient_id"].nunique())] for part in by_part.index])
    _views_section(doc, data_fingerprint, in_scheme, counts)
    _excluded_section(doc, ingest_report)


def _models_section(doc: Report, model_status: dict[str, Any]) -> None:
    """Every expected model: evaluated, left out or missing (with why), and its backbone weights."""
    evaluated = model_status["evaluated"]
    doc.heading("Models")
    rows = []
    for name in model_status["expected"]:
        family = model_status["families"].get(name, "")
        pretrained = model_status["pretrained"].get(name)
        weights = {True: "ImageNet (pretrained)", False: "**random init: NOT pretrained**", None: "n/a"}[pretrained]
        if name in evaluated:
            state = "evaluated"
        elif name in model_status["excluded"]:
            state = "left out: " + model_status["excluded"][name]
        else:
            state = "missing: " + model_status["missing"].get(name, "")
        rows.append([name, family or "", state, weights if family == "transfer" else "n/a"])
    doc.table(["model", "family", "status", "backbone weights"], rows)
    missing = [n for n in model_status["expected"] if n not in evaluated]
    if missing:
        doc.note(f"Baselines missing from this report: {', '.join(missing)}. Train them with "
                 "`kedro run --pipelines=train_baselines`, then rerun `kedro run --pipelines=evaluate`.")
    warnings = [f"{n}: {w}" for n, ws in model_status["warnings"].items() for w in ws]
    if warnings:
        doc.note("Warnings:\n" + "\n".join(warnings))


def _performance_section(doc: Report, test_metrics: dict[str, Any], classes: list[str], boot: dict[str, Any]) -> None:
    """Table 5: every model's test metrics with patient-bootstrap CIs (and per class, for three)."""
    doc.heading("Test-set performance (Table 5 style)")
    doc.text(f"Percent, with {round(100 * (1 - boot['alpha']))}% confidence intervals from a {boot['method']} "
             f"({boot['n_boot']} resamples, seed {boot['seed']}); "
             + ("binary figures are for the positive class (osteoporosis); AUC is the ROC-AUC of its probability."
                if len(classes) == 2 else "macro averages over the three classes; AUC is the one-vs-rest macro ROC-AUC."))
    doc.table(["model", "n scans (patients)", "accuracy", "precision", "recall (sensitivity)", "specificity", "F1",
               "ROC-AUC", "Brier"],
              [[m, f"{v['n_scans']} ({v['n_patients']})", *(_with_ci(v, k) for k in CI_METRICS), f"{v['brier']:.3f}"]
               for m, v in test_metrics.items()])
    if len(classes) > 2:
        doc.heading("Per class (one-vs-rest)", 3)
        doc.table(["model", "class", "support", "precision", "recall", "specificity", "F1", "AUC"],
                  [[m, c, pc["support"], *(_pct(finite_or_none(pc[k])) for k in ("precision", "recall", "specificity", "f1", "auc"))]
                   for m, v in test_metrics.items() for c, pc in v["per_class"].items()])


def _comparison_section(doc: Report, test_set: TestSet, comparison: dict[str, Any], evaluated: list[str],
                        small: dict[str, Any]) -> None:
    """The reference model against each baseline: CV folds (paired t-test) and the test set."""
    reference = comparison["reference"]
    classes = list(test_set.class_names)
    n_test = len(test_set)
    doc.heading(f"{reference} against each baseline")
    n_folds = max((t.get("n", 0) for tests in comparison["cv"].values() for t in tests.values()), default=0)
    doc.note(
        "Small samples. "
        + (f"The CV tests pair {n_folds} folds: a paired t-test on {n_folds} folds has {n_folds - 1} degrees of "
           "freedom, and the folds share training data, so its p-values are optimistic (Nadeau & Bengio, 2003). "
           if n_folds else "")
        + f"The test-set tests use {n_test} scans of {test_set.counts['n_test_patients']} patients"
        + (f" (fewer than {small['scans']}: low power; a non-significant difference is not evidence of equal performance)"
           if n_test < int(small["scans"]) else "")
        + ". DeLong and McNemar treat scans as independent; with several scans per patient the patient-bootstrap "
        "intervals above are the safer guide. Holm's correction is across the baselines within each test."
    )
    cv_rows = []
    for metric, tests in comparison["cv"].items():
        summary = comparison["cv_summary"][metric]
        ref = summary[reference]
        for name, res in tests.items():
            b = summary[name]
            cv_rows.append([metric, name, _mean_sd(ref), _mean_sd(b), _p(res)])
    if cv_rows:
        doc.heading("Cross-validation folds (as paper 1: paired t-test)", 3)
        doc.table(["metric", "baseline", f"{reference} mean ± sd", "baseline mean ± sd", "test (name, n, p)"], cv_rows)
    test_rows = [[name, _p(comparison["test"]["mcnemar"].get(name)), _p(comparison["test"]["auc_difference"].get(name))]
                 for name in comparison["baselines"]]
    if test_rows:
        doc.heading("Held-out test set (paired predictions)", 3)
        auc_test = "DeLong" if len(classes) == 2 else "patient bootstrap"
        doc.table(["baseline", "accuracy: exact McNemar", f"AUC difference: {auc_test}"], test_rows)
    else:
        doc.text(f"No baseline was evaluated, so {reference} is not compared with anything in this run.")
    doc.heading("CV summary per model (chosen setting)", 3)
    doc.table(["model", *(f"{m} mean ± sd (folds)" for m in comparison["cv_summary"])],
              [[name, *(f"{_mean_sd(comparison['cv_summary'][m][name])} ({comparison['cv_summary'][m][name]['n_folds']})"
                        for m in comparison["cv_summary"])] for name in evaluated])


def _figures_section(doc: Report, test_metrics: dict[str, Any], model_status: dict[str, Any], reference: str) -> None:
    """The five figures with their captions."""
    doc.heading("Figures")
    captions = {
        "roc_curves": "ROC curves of every evaluated model on the test partition (paper 1, Figure 7)",
        "confusion_matrices": "Confusion matrices on the test partition: counts and row-normalised (paper 1, Figure 6)",
        "training_curves": "Training and early-stopping validation curves of each model's final fit",
        "calibration": "Reliability diagram: predicted probability against the observed frequency",
        "gradcam": f"Grad-CAM over the ROI for {reference} and {_gradcam_baseline(test_metrics, model_status, reference)}: "
                   f"per class, {reference}'s most confident right and wrong test scan",
    }
    for name in FIGURES:
        doc.figure(name, captions[name])


def _excluded_section(doc: Report, ingest_report: dict[str, Any]) -> None:
    """What ingest left out, by file_ref (``osteo locate REF`` finds the file on this machine):
    identical copies (one kept), copies filed under two classes (all excluded), other exclusions."""
    duplicates, conflicts = ingest_report.get("duplicate_groups") or [], ingest_report.get("conflict_groups") or []
    excluded = ingest_report.get("excluded") or []
    if not (duplicates or conflicts or excluded):
        return
    doc.heading("Excluded at ingest", 3)
    items = [f"Identical copies: kept `{g['kept']}`, dropped "
             + ", ".join(f"`{f}`" for f in g["file_refs"] if f != g["kept"]) + "." for g in duplicates]
    items += ["Identical scans under different classes (" + ", ".join(g["labels"]) + "), all excluded: "
              + ", ".join(f"`{f}`" for f in g["file_refs"]) + "." for g in conflicts]
    items += [f"`{e['file_ref']}`: {e['reason']}." for e in excluded if e["reason"] != "duplicate_label_conflict"]
    doc.bullets(items)


def _views_section(doc: Report, fingerprint: dict[str, Any], in_scheme: pd.DataFrame, counts: dict[str, Any]) -> None:
    """Scans per view: accepted by ingest, left out by split.views, and per partition."""
    views = fingerprint.get("views")
    if not views or "view" not in in_scheme:
        return
    left_out = sum(views["n_left_out_by_view"].values())
    by_source = counts.get("view_source") or {}
    doc.heading("Views", 3)
    doc.bullets([
        "Accepted by ingest: " + ", ".join(f"{v} {n}" for v, n in (counts.get("accepted_by_view") or {}).items())
        + (f" (view from the labels CSV for {by_source.get('table', 0)}, from the image classifier for "
           f"{by_source.get('auto', 0)})" if by_source else "") + ".",
        f"Views studied (split.views): {', '.join(views['studied'])}; {left_out} scan(s) of other views left out "
        "before the split" + (" (" + ", ".join(f"{v} {n}" for v, n in views["n_left_out_by_view"].items() if n) + ")"
                              if left_out else "") + ".",
    ])
    table = in_scheme.groupby(["partition", "view"]).size().unstack(fill_value=0)
    doc.table(["partition", *table.columns], [[part, *table.loc[part].tolist()] for part in table.index])


def _subgroup_section(doc: Report, subgroups: dict[str, Any], boot: dict[str, Any]) -> None:
    """Per attribute, per group and model: n and the metrics with CIs, or why there are none."""
    names = {"view": "View", "sex": "Sex", "age_band": "Age band (years)", "scanner": "Scanner family"}
    doc.heading("Test-set performance per subgroup")
    doc.text(f"Percent with {round(100 * (1 - boot['alpha']))}% patient-bootstrap CIs, as above, within each subgroup "
             "the data carries. A group with fewer than "
             f"{subgroups['min_scans']} test scans, or without every class, gets its counts and no figures: "
             "its CIs would be too wide to read, or undefined. Subgroups are descriptive: no test compares them.")
    if subgroups.get("absent"):
        doc.text("Not in the data (no such column in the manifest): "
                 + ", ".join(names.get(a, a) for a in subgroups["absent"]) + ".")
    for attribute, entry in subgroups["attributes"].items():
        doc.heading(names.get(attribute, attribute), 3)
        rows = []
        for group, info in entry["groups"].items():
            n = f"{info['n_scans']} ({info['n_patients']})"
            classes = ", ".join(f"{c} {k}" for c, k in info["class_counts"].items())
            if "models" not in info:
                rows.append([group, "all", n, classes, *[f"not computed: {info['skipped']}"] + [""] * (len(CI_METRICS) - 1)])
                continue
            rows += [[group, model, n, classes, *(_with_ci(m, k) for k in CI_METRICS)] for model, m in info["models"].items()]
        doc.table(["group", "model", "n scans (patients)", "classes", "accuracy", "precision", "recall (sensitivity)",
                   "specificity", "F1", "ROC-AUC"], rows)
        if entry["n_unassigned"]:
            doc.text(f"{entry['n_unassigned']} test scan(s) in no group (value missing or not a declared spelling).")


def _gradcam_baseline(test_metrics: dict[str, Any], status: dict[str, Any], reference: str) -> str:
    """Which baseline the Grad-CAM figure shows, and whether it is the best baseline overall."""
    def rank(name: str) -> tuple[float, float]:
        return (test_metrics[name]["auc"] or -1.0, test_metrics[name]["accuracy"] or -1.0)

    baselines = sorted((n for n in test_metrics if n != reference), key=rank, reverse=True)
    images = [n for n in baselines if status["families"].get(n) in ("cnn21", "transfer")]
    if not images:
        return "no image baseline (none evaluated)"
    if images[0] == baselines[0]:
        return f"the best baseline by test AUC ({images[0]})"
    return (f"the best image baseline by test AUC ({images[0]}); the best baseline overall, {baselines[0]}, "
            "works on handcrafted or clinical features and has no Grad-CAM")


def _mean_sd(entry: dict[str, Any]) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    sd = entry.get("sd")
    return f"{entry['mean']:.3f} ± {sd:.3f}" if sd is not None else f"{entry['mean']:.3f}"


def _paper_section(doc: Report, paper: dict[str, Any], test_metrics: dict[str, Any], label_scheme: str) -> None:
    doc.heading("Reference: the numbers paper 1 reports (not ours)")
    doc.note(paper["label"])
    table5, aucs = paper["table5_percent"], paper["figure7_auc"]
    rows = []
    for name in table5:
        ours = test_metrics.get(name)
        paper_auc = f"{aucs[name]:.4f}" if name in aucs else "n/a"
        if ours:
            our_cells = [_pct(ours["accuracy"]), _pct(ours["f1"]), "n/a" if ours["auc"] is None else f"{ours['auc']:.4f}"]
        else:
            our_cells = ["not evaluated"] * 3
        rows.append([name, *(f"{table5[name][k]:g}" for k in ("accuracy", "precision", "recall", "f1")), paper_auc, *our_cells])
    doc.table(["model", "paper: accuracy %", "paper: precision %", "paper: recall %", "paper: F1 %", "paper: AUC (Fig. 7)",
               "ours: accuracy %", "ours: F1 %", "ours: AUC"], rows)
    doc.bullets([
        f"Paper's test set: {paper['test_set']}",
        *(f"Paper's Figure 6 ({name}, as its text describes it): rows true normal / osteoporosis, columns predicted: {cm}"
          for name, cm in paper.get("figure6_confusion_as_described", {}).items()),
        f"Paper's significance claim: {paper['significance']}",
        *(f"Inconsistency in the paper: {d}" for d in paper.get("discrepancies", [])),
        *([] if label_scheme == "binary" else
          ["The paper's figures are binary (normal vs osteoporosis); this run is three-class, so they are not comparable."]),
    ])


def _subgroup_metrics(subgroups: dict[str, Any] | None, model: str) -> dict[str, float | None]:
    """A model's subgroup figures as MLflow metrics: ``n_scans.<key>`` for every group and
    ``test_<metric>.<key>`` (+ ``_ci_lo`` / ``_ci_hi``) where computed; keys like ``view_AP``,
    ``age_60-69``, ``sex_female``, ``scanner_scanner_a``."""
    out: dict[str, float | None] = {}
    for entry in (subgroups or {}).get("attributes", {}).values():
        for info in entry["groups"].values():
            key = info["key"]
            out[f"n_scans.{key}"] = info["n_scans"]
            m = info.get("models", {}).get(model)
            if m:
                out.update({f"test_{k}.{key}": m[k] for k in CI_METRICS})
                out.update({f"test_{k}_ci_lo.{key}": m["ci"][k]["lo"] for k in CI_METRICS})
                out.update({f"test_{k}_ci_hi.{key}": m["ci"][k]["hi"] for k in CI_METRICS})
    return out


def mlflow_record(
    test_metrics: dict[str, Any], comparison: dict[str, Any], status: dict[str, Any], test_set: TestSet, label_scheme: str,
    subgroups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Child run per model with test_<metric> (+ CI bounds) and its subgroup figures (``_subgroup_metrics``);
    the same on the parent as <model>.test_<metric>[.<group key>], without the CI bounds."""
    runs, parent = {}, {}
    for model, m in test_metrics.items():
        metrics = {f"test_{k}": m[k] for k in (*CI_METRICS, "loss")}
        metrics.update({f"test_{k}_ci_lo": m["ci"][k]["lo"] for k in CI_METRICS})
        metrics.update({f"test_{k}_ci_hi": m["ci"][k]["hi"] for k in CI_METRICS})
        metrics["test_brier"] = m["brier"]
        metrics.update(_subgroup_metrics(subgroups, model))
        if model != comparison["reference"]:
            for key, res in (("test_mcnemar_p", comparison["test"]["mcnemar"].get(model)),
                             ("test_auc_diff_p", comparison["test"]["auc_difference"].get(model))):
                if res and res.get("p_value") is not None:
                    metrics[f"{key}_vs_{comparison['reference']}"] = res["p_value"]
        runs[model] = {
            "metrics": metrics,
            "params": {"model": model, "family": status["families"].get(model), "label_scheme": label_scheme,
                       "n_test_scans": m["n_scans"], "n_test_patients": m["n_patients"],
                       "bootstrap_n_boot": m["bootstrap"]["n_boot"], "pretrained": status["pretrained"].get(model)},
            "tags": {"training_run_id": str(status["training_runs"].get(model) or "")},
        }
        parent.update({f"{model}.{k}": v for k, v in metrics.items() if "_ci_lo" not in k and "_ci_hi" not in k})
    parent["evaluate.n_models"] = len(test_metrics)
    parent["evaluate.n_test_scans"] = len(test_set)
    return {"parent_metrics": parent, "runs": runs}
