"""Nodes of train_baselines / fusion: covariates (leak guard), CV on fold-honest image features, final fit."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import keras

    from osteo_pipeline.training.data import TrainingSet

logger = logging.getLogger(__name__)

SEX_ENCODING = "1 = male, 0 = female, NaN = unknown"
EXPORT_TOLERANCE = 1e-4  # saved network vs the head on the training table: float32 rounding only


def prepare_covariates(
    model: dict[str, Any], training_set: TrainingSet, scan_manifest: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The training scans' raw numeric covariates (index scan_id, NaN where missing) and a report.

    Refuses label-defining covariates (``LabelLeakError``) before reading any data; drops (with a
    warning) or refuses covariates the manifest lacks, per ``missing_covariate``.
    """
    from osteo_pipeline.models.fusion import check_covariates, clinical_table, resolve_covariates

    requested = check_covariates(model["covariates"])
    used, dropped = resolve_covariates(scan_manifest, requested, model.get("missing_covariate", "drop"))
    for name, reason in dropped.items():
        logger.warning("fusion: covariate %r dropped (%s); the model uses %s", name, reason, used)
    unknown = set(training_set.scan_ids.astype(str)) - set(scan_manifest["scan_id"].astype(str))
    if unknown:
        raise ValueError(f"{len(unknown)} training scans are not in the scan manifest, e.g. {sorted(unknown)[:3]}")
    table = clinical_table(scan_manifest, training_set.scan_ids, used)
    report = {
        "requested": requested,
        "used": used,
        "dropped": dropped,
        "encoding": {"sex": SEX_ENCODING} if "sex" in used else {},
        "n_missing_training_partition": {c: int(n) for c, n in table.isna().sum().items()},
        "n_scans": len(table),
    }
    return table, report


def _head_builder(model: dict[str, Any]) -> partial:
    from osteo_pipeline.models.fusion import build_fusion_head

    return partial(build_fusion_head, **model["head"])


def _imputation_report(state: dict[str, Any], covariates: list[str]) -> dict[str, Any]:
    """The fitted constants of the covariate columns (the image features are complete; they are
    standardised too, with constants kept in the model) and the values imputed."""
    at = {c: i for i, c in enumerate(state["columns"])}
    return {
        "n_fit_rows": state["n_fit_rows"],
        "fill": {c: state["fill"][at[c]] for c in covariates},
        "mean": {c: state["mean"][at[c]] for c in covariates},
        "scale": {c: state["scale"][at[c]] for c in covariates},
        "n_imputed_train": state.get("n_missing", {}),
        "n_imputed_val": state.get("n_missing_val", {}),
    }


def cross_validate_fusion(
    training_set: TrainingSet,
    covariates: pd.DataFrame,
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    covariate_report: dict[str, Any],
    cnn21_fold_features: pd.DataFrame,
    cnn21_cv_summary: dict[str, Any],
    model: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, dict[str, float]]]:
    """The head over each learning rate x CV fold, each fold on the features of the CNN21 trained
    without it (at CNN21's chosen rate) and its own imputation; summary with the imputation per
    fold and each covariate's own AUC beside the fusion model's (warning when one nearly
    determines the label); the chosen rate's CV means (and fracture history's AUC) as parent-run metrics."""
    from osteo_pipeline.models.fusion import image_features, joined_table
    from osteo_pipeline.training.data import VAL_PARTITION_FOLD
    from osteo_pipeline.training.fusion import FusionStreams, covariate_aucs, dominant_covariate_warnings, fit_fusion
    from osteo_pipeline.training.loop import TrainingConfig, cross_validate, cv_outputs, summarise_cv

    config = TrainingConfig.for_model(baselines["training"], model, seed)
    cnn_rate = float(cnn21_cv_summary["best_learning_rate"])
    tables = {
        fold: joined_table(image_features(cnn21_fold_features, training_set.scan_ids, learning_rate=cnn_rate, fold=fold),
                           covariates)
        for fold in training_set.cv_folds
    }
    head = _head_builder(model)
    streams = FusionStreams(training_set, tables, head, config.batch_size)
    fold_metrics = cross_validate(
        head, training_set, config=config, augmentation_policy=None, class_weights=class_weights,
        data_fingerprint=data_fingerprint, streams=streams, fit=fit_fusion,
    )
    summary, parent_metrics = cv_outputs(summarise_cv(fold_metrics), training_set, data_fingerprint)
    chosen = summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]
    in_cv = training_set.folds != VAL_PARTITION_FOLD
    aucs = covariate_aucs(covariates[in_cv], training_set.labels[in_cv], training_set.folds[in_cv], training_set.class_names)
    warnings = dominant_covariate_warnings(aucs, float(model["fracture_history_warn_auc"]), chosen["val_auc_mean"])
    for text in warnings:
        logger.warning("fusion: %s", text)
    cnn_chosen = cnn21_cv_summary.get("by_learning_rate", {}).get(f"{cnn_rate:g}", {})
    summary.update({
        "image_features": {
            "source": "cnn21_fold_features: fold k's rows come from the CNN21 trained without fold k",
            "cnn21_learning_rate": cnn_rate,
            "n_features": len(tables[training_set.cv_folds[0]].columns) - len(covariates.columns),
        },
        "covariates": covariate_report,
        "imputation": {
            "strategy": "median imputation, then standardisation, fitted on each fold's training rows only (sklearn)",
            "per_fold": {str(k): _imputation_report(streams.preprocessing[k], list(covariates.columns))
                         for k in sorted(streams.preprocessing)},
        },
        "covariate_auc": aucs,
        "fracture_history": {
            **aucs.get("fracture_history", {"auc": None, "val_auc_mean": None, "separability": None}),
            "fusion_val_auc_mean": chosen["val_auc_mean"],
            "cnn21_val_auc_mean": cnn_chosen.get("val_auc_mean"),
            "warn_at": float(model["fracture_history_warn_auc"]),
            "available": "fracture_history" in covariates.columns,
        },
        "warnings": warnings,
    })
    if summary["fracture_history"]["val_auc_mean"] is not None:
        parent_metrics["cv_fracture_history_val_auc_mean"] = {"value": summary["fracture_history"]["val_auc_mean"], "step": 0}
    return fold_metrics, summary, parent_metrics


def fit_final_fusion(
    training_set: TrainingSet,
    covariates: pd.DataFrame,
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    cnn21_model: keras.Model,
    cnn21_final_fit: dict[str, Any],
    cv_summary: dict[str, Any],
    model: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, dict[str, Any], dict[str, Any]]:
    """Head at the chosen rate on the final CNN21's features of the training partition; the saved
    two-input network (images + raw covariates -> probabilities), its report, and what evaluate needs."""
    from osteo_pipeline.models.fusion import build_fusion_network, joined_table
    from osteo_pipeline.training.data import assert_no_test_scans
    from osteo_pipeline.training.features import embedding_table
    from osteo_pipeline.training.fusion import FINAL, FusionStreams, export_gap, fit_fusion
    from osteo_pipeline.training.loop import TrainingConfig, final_fit

    config = TrainingConfig.for_model(baselines["training"], model, seed)
    assert_no_test_scans(training_set.scan_ids, training_set.test_scan_ids)
    features = embedding_table(cnn21_model, training_set.images, training_set.scan_ids, batch_size=config.batch_size)
    table = joined_table(features.set_index("scan_id"), covariates)
    streams = FusionStreams(training_set, {FINAL: table}, _head_builder(model), config.batch_size)
    network_builder = partial(build_fusion_network, image_model=cnn21_model, **model["head"])
    network, report = final_fit(
        network_builder, training_set, learning_rate=cv_summary["best_learning_rate"], config=config,
        augmentation_policy=None, class_weights=class_weights, data_fingerprint=data_fingerprint,
        streams=streams, fit=fit_fusion,
    )
    gap = export_gap(network, streams, covariates, np.arange(len(training_set.labels)))
    if gap > EXPORT_TOLERANCE:
        raise AssertionError(f"the saved fusion network differs from the trained head by {gap:.2e}")
    notes = [
        "The final head trains on final-CNN21 features of scans that CNN21 trained on; the CV metrics "
        "(fold-honest features) are the performance estimate.",
    ]
    cnn_val = sorted(map(str, cnn21_final_fit.get("val_patients", [])))
    if cnn_val and cnn_val != report["val_patients"]:
        notes.append("The head's early-stopping patients differ from the final CNN21's: their features come "
                     "from a CNN21 that trained on them, so early stopping is optimistic.")
    report.update({
        "cnn21_learning_rate": cv_summary["image_features"]["cnn21_learning_rate"],
        "covariates": list(covariates.columns),
        "imputation": _imputation_report(streams.preprocessing[FINAL], list(covariates.columns)),
        "export_gap": gap,
        "early_stopping_patients_match_cnn21": bool(cnn_val) and cnn_val == report["val_patients"],
        "notes": notes,
    })
    info = {
        "model": model["name"],
        "family": "fusion",
        "inputs": {
            "image": {"dtype": "float32", "shape": [int(d) for d in training_set.images.shape[1:]],
                      "source": "model_input_150 scaled to [0, 1] (uint8 / 255), as CNN21"},
            "covariates": {"dtype": "float32", "columns": list(covariates.columns), "encoding": cv_summary["covariates"]["encoding"],
                           "missing": "NaN: imputed inside the model with the training medians",
                           "source": "osteo_pipeline.models.fusion.clinical_table(scan_manifest, scan_ids, columns)"},
        },
        "predict": "model.predict({'image': images / 255, 'covariates': clinical_table(...).to_numpy('float32')})",
        "custom_objects": "import osteo_pipeline.models.fusion before loading (registers ImputeStandardize)",
        "image_features_from": "the final CNN21 (cnn21_model), inside the saved network",
        "imputation": report["imputation"],
        "class_names": list(training_set.class_names),
        "warnings": [*cv_summary.get("warnings", []),
                     *(f"covariate {c!r} dropped: {why}" for c, why in cv_summary["covariates"]["dropped"].items())],
        "notes": notes,
    }
    return network, report, info
