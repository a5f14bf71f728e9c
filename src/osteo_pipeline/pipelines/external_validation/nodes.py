"""Nodes of external_validation: registered models on a separate labelled folder, never trained on it.

The external scans come from the namespaced ``ingest`` / ``roi_resize`` copies (``external.*``).
Each registered model is loaded from the MLflow registry as ``osteo predict`` loads it
(``predict_cli.load_classifier``: a ``serving.model.ScanClassifier``) and predicts with its own
preprocessing: the input size, ROI margin and intensity window in its model config. The metrics,
patient-bootstrap CIs and figures are the evaluate stage's own functions. Reports name scans by
content hash and patients by pseudonym, never a raw path; the overlap with the training data is
a count.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from osteo_pipeline.core.labels import LABEL_SCHEMES
from osteo_pipeline.core.metrics import finite_or_none
from osteo_pipeline.evaluation.models import TestSet, predictions_table
from osteo_pipeline.evaluation.report import Report
from osteo_pipeline.evaluation.report_builder import CI_METRICS
from osteo_pipeline.pipelines.evaluate.nodes import compute_test_metrics
from osteo_pipeline.pipelines.roi_resize.nodes import crop_and_resize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

EXTERNAL_FIGURES = ("roc_curves", "confusion_matrices", "calibration")
EXTERNAL_DIR_LABEL = "the external folder (run-time parameter external_dir; its path is not recorded)"
# The roi_resize settings a registered model's preprocessing config carries (besides its size).
PREPROCESSING_KEYS = ("margin", "low_percentile", "high_percentile", "fit")


class ExternalValidationError(ValueError):
    """External validation cannot run as asked (model or alias missing, label schemes differ...)."""


@dataclass
class RegisteredModel:
    """One registered model version, loaded, and where it came from."""

    name: str  # registered name, e.g. osteo-cnn21
    version: str
    chosen_by: str  # "alias champion", "version 3", "latest version (no alias champion)"
    run_id: str
    classifier: Any  # serving.model.ScanClassifier

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)

    @property
    def label(self) -> str:
        """The row label in tables and MLflow metric names: ``cnn21`` for ``osteo-cnn21``."""
        return self.name.removeprefix("osteo-")


# ----------------------------------------------------------------------------- ingest report


def label_external_ingest_report(report: dict[str, Any]) -> dict[str, Any]:
    """ingest's report of the external folder, saying which folder it read: ingest names
    the training folder's label, and the external path is not recorded."""
    return {**report, "raw_dir": EXTERNAL_DIR_LABEL}


# ----------------------------------------------------------------------------- models


def parse_model_entry(entry: str) -> tuple[str, str | None, str | None]:
    """``name`` | ``name@alias`` | ``name/<version>`` -> (name, explicit alias, explicit version)."""
    entry = str(entry).strip()
    if "@" in entry:
        name, wanted = entry.split("@", 1)
        return name, wanted, None
    if "/" in entry:
        name, version = entry.rsplit("/", 1)
        if version == "latest":
            return name, None, "latest"
        if not version.isdigit():
            raise ExternalValidationError(f"external_validation.models: {entry!r}: the version after '/' must be a number or 'latest'")
        return name, None, version
    return entry, None, None


def resolve_version(client: Any, name: str, explicit_alias: str | None, explicit_version: str | None,
                    default_alias: str | None) -> tuple[str, str]:
    """(version, how it was chosen) of registered model ``name``; a clear error when it is missing."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise ExternalValidationError(
            f"registered model {name!r} not found in the MLflow registry ({_store()}): train and register it "
            "(e.g. `kedro run --pipelines=train_cnn21`), or set MLFLOW_TRACKING_URI to the store that holds it") from None
    aliases = dict(getattr(registered, "aliases", None) or {})
    if explicit_alias:
        if explicit_alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise ExternalValidationError(
                f"registered model {name!r} has no alias {explicit_alias!r} (its aliases: {known}); set it with "
                f"MlflowClient().set_registered_model_alias({name!r}, {explicit_alias!r}, <version>) or name a version")
        return str(aliases[explicit_alias]), f"alias {explicit_alias}"
    versions = [str(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    if not versions:
        raise ExternalValidationError(f"registered model {name!r} has no version")
    if explicit_version and explicit_version != "latest":
        if explicit_version not in versions:
            raise ExternalValidationError(
                f"registered model {name!r} has no version {explicit_version} (versions: {', '.join(sorted(versions, key=int))})")
        return explicit_version, f"version {explicit_version}"
    if not explicit_version and default_alias and default_alias in aliases:
        return str(aliases[default_alias]), f"alias {default_alias}"
    latest = max(versions, key=int)
    why = "latest version" if explicit_version else f"latest version (no alias {default_alias!r})"
    return latest, why


def _store() -> str:
    import mlflow

    uri = mlflow.get_tracking_uri()
    return uri.split("://")[0] + "://..." if "@" in uri else uri  # never echo credentials


def load_registered_models(params: dict[str, Any]) -> tuple[dict[str, RegisteredModel], dict[str, Any]]:
    """The requested registered models (``external_validation.models``), loaded as ``osteo predict``
    loads them, and a JSON description of each (version, how chosen, classes, preprocessing, the
    data it was trained on). Stops naming the model and alias/version when one is missing."""
    import click
    import mlflow
    from mlflow import MlflowClient

    from osteo_pipeline.predict_cli import load_classifier

    entries = list(params.get("models") or [])
    if not entries:
        raise ExternalValidationError("external_validation.models is empty: name at least one registered model")
    client = MlflowClient()
    models: dict[str, RegisteredModel] = {}
    info: dict[str, Any] = {}
    for entry in entries:
        name, alias, version = parse_model_entry(entry)
        version, chosen_by = resolve_version(client, name, alias, version, params.get("alias"))
        uri = f"models:/{name}/{version}"
        try:
            classifier = load_classifier(uri, mlflow.get_tracking_uri())
        except click.ClickException as error:
            raise ExternalValidationError(f"{name} ({chosen_by}): {error.message}") from None
        run_id = str(client.get_model_version(name, version).run_id or "")
        model = RegisteredModel(name, version, chosen_by, run_id, classifier)
        if model.label in models:
            raise ExternalValidationError(f"external_validation.models names {name} twice")
        scheme = _scheme_of(model.class_names)
        tags = client.get_run(run_id).data.tags if run_id else {}
        models[model.label] = model
        info[model.label] = {
            "registered_model": name, "version": version, "chosen_by": chosen_by, "run_id": run_id,
            "class_names": model.class_names, "label_scheme": scheme,
            "preprocessing": {k: v for k, v in classifier.preprocessing.to_dict().items() if k != "degenerate"},
            "trained_on": {k.removeprefix("data."): v for k, v in tags.items() if k.startswith("data.")},
        }
        logger.info("external_validation: %s version %s (%s), classes %s, input %d px", name, version, chosen_by,
                    model.class_names, classifier.preprocessing.size)
    schemes = {m["label_scheme"] for m in info.values()}
    if len(schemes) > 1:
        raise ExternalValidationError(
            "the requested models use different label schemes ("
            + ", ".join(f"{m['registered_model']}: {m['label_scheme']}" for m in info.values())
            + "): validate them in separate runs")
    return models, info


def _scheme_of(class_names: list[str]) -> str:
    for scheme in LABEL_SCHEMES.values():
        if list(scheme.classes) == list(class_names):
            return scheme.name
    known = {s.name: list(s.classes) for s in LABEL_SCHEMES.values()}
    raise ExternalValidationError(f"a model's classes {class_names} match no label scheme ({known})")


# ----------------------------------------------------------------------------- predictions


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(np.isclose(float(a), float(b)))
    return a == b


def _model_images(
    model: RegisteredModel, arrays: dict[int, dict[str, np.ndarray]], raw_scans: Any, manifest: pd.DataFrame,
    file_index: pd.DataFrame, roi_params: dict[str, Any], max_pixels: int,
) -> dict[str, np.ndarray]:
    """The model's inputs ``{"scan_id", "images"}``: the external roi_resize output when it was made with
    the model's settings (size, margin, window), else ``crop_and_resize`` again with the model's own."""
    pre = model.classifier.preprocessing
    own = {k: v for k, v in pre.to_dict().items() if k in PREPROCESSING_KEYS}
    project = {k: roi_params.get(k, "stretch" if k == "fit" else None) for k in own}
    if pre.size in arrays and all(_same(project[k], own[k]) for k in own):
        return arrays[pre.size]
    logger.info("external_validation: %s takes %d px with %s (roi_resize here: %s): cropping the external scans "
                "again with its settings", model.name, pre.size, own, project)
    own = {**roi_params, **own, "size_cnn21": pre.size, "size_baselines": pre.size, "measure_auto_roi": False}
    _, small, _ = crop_and_resize(raw_scans, manifest, file_index, own, min(int(max_pixels), pre.max_pixels))
    return small


def predict_external_scans(
    models: dict[str, RegisteredModel],
    raw_scans: Any,
    scan_manifest: pd.DataFrame,
    file_index: pd.DataFrame,
    model_input_150: dict[str, np.ndarray],
    model_input_300: dict[str, np.ndarray],
    roi_params: dict[str, Any],
    max_pixels: int,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every model's class probabilities for the external scans (one row per model x scan, as
    evaluate's ``test_predictions``) and a description of the external set.

    Scans whose label the models cannot predict (osteopenia for a binary model) stop the run,
    or are left out and counted with ``external_validation.out_of_scheme: exclude``.
    """
    manifest = scan_manifest.assign(scan_id=scan_manifest["scan_id"].astype(str)).drop_duplicates("scan_id")
    classes = next(iter(models.values())).class_names
    outside = manifest[~manifest["label"].isin(classes)]
    if len(outside):
        found = outside["label"].value_counts().to_dict()
        if params.get("out_of_scheme", "error") != "exclude":
            raise ExternalValidationError(
                f"the external set holds labels the models do not predict: {found}; the models predict {classes} "
                f"({_scheme_of(classes)}). Validate a model of the matching scheme, or leave those scans out with "
                "--params=external_validation.out_of_scheme=exclude")
        logger.warning("external_validation: %d scans left out, labels outside %s: %s", len(outside), classes, found)
    manifest = manifest[manifest["label"].isin(classes)].sort_values("scan_id").reset_index(drop=True)
    if manifest.empty:
        raise ExternalValidationError(f"the external set holds no scan labelled {classes}")
    missing_classes = [c for c in classes if c not in set(manifest["label"])]
    if missing_classes:
        logger.warning("external_validation: no external scan of class %s: AUC and some metrics are undefined",
                       missing_classes)
    sizes = {int(roi_params["size_cnn21"]): model_input_150, int(roi_params["size_baselines"]): model_input_300}
    arrays = {s: {"scan_id": np.asarray(m["scan_id"]).astype(str), "images": np.asarray(m["images"])} for s, m in sizes.items()}
    tables, failed = [], {}
    for label, model in models.items():
        inputs = _model_images(model, arrays, raw_scans, manifest, file_index, roi_params, max_pixels)
        position = pd.Series(np.arange(len(inputs["scan_id"])), index=pd.Index(np.asarray(inputs["scan_id"]).astype(str)))
        kept = manifest[manifest["scan_id"].isin(position.index)]
        failed[label] = int(len(manifest) - len(kept))
        images = np.asarray(inputs["images"])[position.loc[kept["scan_id"]].to_numpy()]
        scans = TestSet(
            scan_ids=kept["scan_id"].to_numpy(), patient_ids=kept["patient_id"].astype(str).to_numpy(),
            labels=kept["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64),
            class_names=tuple(classes), images={model.classifier.preprocessing.size: images}, manifest=kept,
        )
        proba = model.classifier.probabilities(images)
        proba = proba / proba.sum(axis=1, keepdims=True)
        tables.append(predictions_table(label, scans, proba))
    predictions = pd.concat(tables, ignore_index=True)
    cohort = {
        "label_scheme": _scheme_of(classes), "class_names": classes,
        "n_scans": int(len(manifest)), "n_patients": int(manifest["patient_id"].nunique()),
        "class_counts": manifest["label"].value_counts().reindex(classes, fill_value=0).astype(int).to_dict(),
        "n_excluded_out_of_scheme": int(len(outside)), "excluded_labels": outside["label"].value_counts().to_dict(),
        "n_not_preprocessed": failed, "classes_without_scans": missing_classes,
        "roi_sources": manifest.assign(has_box=_has_box(manifest))["has_box"].map({True: "roi.csv", False: "detected"})
        .value_counts().to_dict(),
        "fingerprint": hashlib.sha256("\n".join(sorted(manifest["scan_id"])).encode()).hexdigest(),
    }
    return predictions, cohort


def _has_box(manifest: pd.DataFrame) -> pd.Series:
    columns = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
    if not set(columns) <= set(manifest.columns):
        return pd.Series(False, index=manifest.index)
    return manifest[columns].notna().all(axis=1)


# ----------------------------------------------------------------------------- metrics, figures


def compute_external_metrics(predictions: pd.DataFrame, model_info: dict[str, Any], params: dict[str, Any],
                             seed: int) -> dict[str, Any]:
    """evaluate's metrics with its patient-bootstrap CIs (``params:evaluate``), per model."""
    scheme = next(iter(model_info.values()))["label_scheme"]
    return compute_test_metrics(predictions, scheme, params, seed)


def plot_external_figures(
    predictions: pd.DataFrame, metrics: dict[str, Any], model_info: dict[str, Any], params: dict[str, Any],
) -> tuple[Figure, Figure, Figure, dict[str, str]]:
    """ROC curves, confusion matrices and reliability diagram (evaluate's figure functions), and
    the same as base64 PNGs for the self-contained report."""
    from osteo_pipeline.evaluation import figures

    classes = next(iter(model_info.values()))["class_names"]
    n = int(predictions.groupby("model").size().max())
    roc = figures.roc_figure(predictions, classes, {m: v["auc"] or float("nan") for m, v in metrics.items()})
    roc.suptitle(f"External validation set, n={n} scans")
    made = {
        "roc_curves": roc,
        "confusion_matrices": figures.confusion_figure({m: v["confusion_matrix"] for m, v in metrics.items()}, classes),
        "calibration": figures.calibration_figure(predictions, classes, int(params["calibration_bins"])),
    }
    made["confusion_matrices"].suptitle("External validation set")
    encoded = {name: figures.png_base64(fig, int(params["figure_dpi"])) for name, fig in made.items()}
    return made["roc_curves"], made["confusion_matrices"], made["calibration"], encoded


# ----------------------------------------------------------------------------- overlap


def check_patient_overlap(
    external_manifest: pd.DataFrame,
    training_manifest: pd.DataFrame | None,
    split_table: pd.DataFrame | None,
    training_fingerprint: dict[str, Any] | None,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """How many external patients (same pseudonym: same patient id, same project key) and scans
    (same content hash) the project's training data also holds, by partition. Counts only."""
    if training_manifest is None:
        logger.warning("external_validation: no training manifest in this project (data/02_intermediate/"
                       "scan_manifest.parquet): patient overlap not checked")
        return {"checked": False, "reason": "no training manifest in this project (run ingest on the training data)"}
    external_patients = set(external_manifest["patient_id"].astype(str))
    external_scans = set(external_manifest["scan_id"].astype(str))
    training_patients = set(training_manifest["patient_id"].astype(str))
    patients = external_patients & training_patients
    scans = external_scans & set(training_manifest["scan_id"].astype(str))
    by_partition: dict[str, int] = {}
    if split_table is not None and {"patient_id", "partition"} <= set(split_table.columns):
        table = split_table.assign(patient_id=split_table["patient_id"].astype(str))
        for partition, rows in table.groupby("partition"):
            by_partition[str(partition)] = len(patients & set(rows["patient_id"]))
    manifest_sha = (training_fingerprint or {}).get("manifest_sha256")
    matches = {label: (m["trained_on"].get("manifest_sha256") == manifest_sha if manifest_sha and m["trained_on"].get("manifest_sha256") else None)
               for label, m in model_info.items()}
    result = {
        "checked": True,
        "n_external_patients": len(external_patients), "n_external_scans": len(external_scans),
        "n_training_patients": len(training_patients),
        "n_overlap_patients": len(patients), "n_overlap_scans": len(scans),
        "overlap_patients_by_partition": by_partition,
        "training_fingerprint": str(manifest_sha)[:12] if manifest_sha else None,
        "models_trained_on_this_data": matches,
    }
    if patients or scans:
        result["warning"] = (
            f"{len(patients)} of {len(external_patients)} external patients (same pseudonym) and {len(scans)} identical "
            f"scans are also in the training data ({', '.join(f'{k}: {v}' for k, v in by_partition.items()) or 'partition unknown'}): "
            "the external set is not fully independent")
        logger.warning("external_validation: %s", result["warning"])
    if any(v is False for v in matches.values()):
        logger.warning("external_validation: the project's current training data differs from the data of %s: "
                       "the overlap is checked against the current data", [k for k, v in matches.items() if v is False])
    return result


# ----------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _with_ci(metrics: dict[str, Any], name: str) -> str:
    if metrics.get(name) is None:
        return "n/a"
    ci = metrics.get("ci", {}).get(name, {})
    return _pct(metrics[name]) if ci.get("lo") is None else f"{_pct(metrics[name])} ({_pct(ci['lo'])}–{_pct(ci['hi'])})"


def _internal_metrics(summary: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    return ((summary or {}).get("test_metrics") or {}).get(label)


def build_external_report(
    cohort: dict[str, Any],
    model_info: dict[str, Any],
    metrics: dict[str, Any],
    overlap: dict[str, Any],
    internal_summary: dict[str, Any] | None,
    figures_base64: dict[str, str],
    ingest_report: dict[str, Any],
    params: dict[str, Any],
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """external_report.html (self-contained), the summary JSON and the MLflow record (metrics and
    tags of this run; no patient id, no path)."""
    doc = Report("External validation")
    doc.note("Registered models evaluated as registered on a separate labelled folder: nothing was trained, tuned or "
             "recalibrated on these scans. Scans are named by content hash and patients by pseudonym; the folder's "
             "path is not recorded.")
    doc.heading("Models")
    doc.table(["model", "registered", "version", "chosen by", "classes", "input", "ROI margin", "window (percentiles)",
               "trained on data"],
              [[label, m["registered_model"], m["version"], m["chosen_by"], ", ".join(m["class_names"]),
                f"{m['preprocessing']['size']} px", f"{m['preprocessing']['margin']:g}",
                f"{m['preprocessing']['low_percentile']:g}–{m['preprocessing']['high_percentile']:g}",
                m["trained_on"].get("fingerprint", "unknown")] for label, m in model_info.items()])
    doc.heading("External set")
    counts = (ingest_report or {}).get("counts", {})
    doc.bullets([
        f"{cohort['n_scans']} scans of {cohort['n_patients']} patients, label scheme `{cohort['label_scheme']}`: "
        + ", ".join(f"{c} {n}" for c, n in cohort["class_counts"].items()),
        f"ingest (same code and settings as the training data): {counts.get('files_seen', 'n/a')} files seen, "
        f"{counts.get('accepted', 'n/a')} accepted, {counts.get('excluded', 'n/a')} excluded, "
        f"{counts.get('duplicates_dropped', 'n/a')} duplicate copies dropped (data/08_reporting/external/ingest_report.json)",
        f"left out, labels outside the models' classes: {cohort['n_excluded_out_of_scheme']} {cohort['excluded_labels'] or ''}".rstrip(),
        "ROI: " + ", ".join(f"{k} {v}" for k, v in cohort["roi_sources"].items()),
        *(f"{m}: {n} scans could not be preprocessed and are not scored" for m, n in cohort["n_not_preprocessed"].items() if n),
        *(f"no scan of class {c}: AUC is undefined" for c in cohort["classes_without_scans"]),
        f"external data fingerprint: `{cohort['fingerprint'][:12]}`",
    ])
    doc.heading("Overlap with the training data")
    if not overlap.get("checked"):
        doc.note(f"Not checked: {overlap.get('reason')}.")
    else:
        doc.text(f"{overlap['n_overlap_patients']} of {overlap['n_external_patients']} external patients have a pseudonym "
                 f"found in the training data ({overlap['n_training_patients']} patients, fingerprint "
                 f"`{overlap.get('training_fingerprint')}`), and {overlap['n_overlap_scans']} external scans are byte-identical "
                 "to training scans. Pseudonyms match only for the same patient id under the same project key.")
        if overlap.get("overlap_patients_by_partition"):
            doc.bullets([f"in the {p} partition: {n}" for p, n in overlap["overlap_patients_by_partition"].items()])
        if overlap.get("warning"):
            doc.note(f"**Warning**: {overlap['warning']}.")
        differs = [k for k, v in overlap.get("models_trained_on_this_data", {}).items() if v is False]
        if differs:
            doc.note(f"The project's current training data is not the data {', '.join(differs)} was trained on "
                     "(fingerprints differ): the overlap was checked against the current data only.")
    doc.heading("Metrics on the external set")
    boot = next(iter(metrics.values()))["bootstrap"]
    doc.text(f"Percent with {round(100 * (1 - boot['alpha']))}% patient-bootstrap CIs ({boot['n_boot']} resamples, "
             f"seed {boot['seed']}), as evaluate computes them.")
    doc.table(["model", "scans", "patients", *CI_METRICS],
              [[label, m["n_scans"], m["n_patients"], *(_with_ci(m, k) for k in CI_METRICS)] for label, m in metrics.items()])
    doc.heading("Internal test set vs external set")
    rows = []
    for label, m in metrics.items():
        internal = _internal_metrics(internal_summary, label)
        for k in CI_METRICS:
            if internal is None:
                rows.append([label, k, "not evaluated", _with_ci(m, k), "n/a"])
                continue
            diff = (None if internal.get(k) is None or m.get(k) is None else 100 * (m[k] - internal[k]))
            rows.append([label, k, _with_ci(internal, k), _with_ci(m, k), "n/a" if diff is None else f"{diff:+.1f}"])
    doc.table(["model", "metric", "internal test %", "external %", "external - internal"], rows)
    doc.text("Internal figures: the project's latest evaluate run (data/08_reporting/evaluation_summary.json), which "
             "evaluated the model trained there; it is the registered version only when that run registered it.")
    doc.heading("Figures")
    doc.figure("roc_curves", "ROC curves on the external set")
    doc.figure("confusion_matrices", "Confusion matrices on the external set (rows: true class)")
    doc.figure("calibration", "Reliability diagram on the external set")

    summary = {"cohort": cohort, "models": model_info, "metrics": metrics, "overlap": overlap,
               "internal_test_metrics": {k: _internal_metrics(internal_summary, k) for k in metrics}}
    record = _mlflow_record(cohort, model_info, metrics, overlap)
    return doc.html(figures_base64), summary, record


def _mlflow_record(cohort: dict[str, Any], model_info: dict[str, Any], metrics: dict[str, Any],
                   overlap: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, float | None] = {
        "external.n_scans": cohort["n_scans"], "external.n_patients": cohort["n_patients"],
        "external.n_excluded_out_of_scheme": cohort["n_excluded_out_of_scheme"],
    }
    if overlap.get("checked"):
        values["external.overlap_patients"] = overlap["n_overlap_patients"]
        values["external.overlap_scans"] = overlap["n_overlap_scans"]
    for label, m in metrics.items():
        for k in CI_METRICS:
            values[f"{label}.external_{k}"] = m.get(k)
            values[f"{label}.external_{k}_ci_lo"] = m["ci"][k]["lo"]
            values[f"{label}.external_{k}_ci_hi"] = m["ci"][k]["hi"]
        values[f"{label}.external_brier"] = m["brier"]
    tags = {
        "stage": "external_validation", "validation": "external",
        "external.label_scheme": cohort["label_scheme"], "external.fingerprint": cohort["fingerprint"][:12],
        "external.models": ", ".join(f"{m['registered_model']}/{m['version']}" for m in model_info.values()),
        "external.overlap_checked": str(bool(overlap.get("checked"))).lower(),
        **{f"external.{label}.model_version": m["version"] for label, m in model_info.items()},
        **{f"external.{label}.chosen_by": m["chosen_by"] for label, m in model_info.items()},
        **{f"external.{label}.model_run_id": m["run_id"] for label, m in model_info.items()},
    }
    return {"metrics": {k: finite_or_none(v) for k, v in values.items()}, "tags": tags}
