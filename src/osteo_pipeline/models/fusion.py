"""Image + clinical fusion (second paper): CNN21 image features joined with clinical covariates.

The image part is CNN21's penultimate layer (64 features, ``cnn21_features`` of train_cnn21);
the clinical part is a few manifest columns (age, sex, BMI, fracture history). Missing covariates
are imputed by the median, and every column standardised, with statistics fitted on training rows
only (``fit_preprocessing``); a small dense head classifies the joined vector.

BMD, T-score and Z-score are refused as inputs: the class is defined from them (WHO T-score
thresholds on the BMD measurement), so a model given them would read the answer, not learn it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd
from keras import layers
from sklearn.metrics import roc_auc_score

# Normalised name fragments (lower case, letters and digits only) of label-defining measurements.
LABEL_DEFINING = {"bmd": "BMD", "tscore": "T-score", "zscore": "Z-score"}
FEATURE_PREFIX = "f"  # image feature columns f00, f01, ... (training.features.embedding_table)
_SEX_CODES = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}


class LabelLeakError(ValueError):
    """A covariate that defines the label was asked for as a model input."""


def check_covariates(covariates: Sequence[str]) -> list[str]:
    """Return ``covariates`` if none of them defines the label, else raise ``LabelLeakError`` naming them."""
    leaks = {}
    for name in covariates:
        key = re.sub(r"[^a-z0-9]", "", str(name).lower())
        hits = [label for fragment, label in LABEL_DEFINING.items() if fragment in key]
        if hits:
            leaks[name] = hits[0]
    if leaks:
        named = ", ".join(f"{c!r} ({what})" for c, what in leaks.items())
        raise LabelLeakError(
            f"fusion covariates {named} define the label: the classes are WHO T-score thresholds on the BMD "
            "measurement (Z-score is the same measurement against age peers), so the model would read the "
            "answer from its input. Remove them from train_baselines.fusion.covariates."
        )
    if not covariates:
        raise ValueError("the fusion model needs at least one clinical covariate")
    return list(covariates)


def clinical_table(manifest: pd.DataFrame, scan_ids: Sequence[str], covariates: Sequence[str]) -> pd.DataFrame:
    """Numeric covariates of ``scan_ids`` (in that order) from the scan manifest; NaN where missing.

    ``sex`` becomes 1 (male) / 0 (female); other columns must be numeric.
    """
    check_covariates(covariates)
    missing = [c for c in covariates if c not in manifest.columns]
    if missing:
        raise ValueError(f"covariates {missing} are not columns of the scan manifest ({sorted(manifest.columns)})")
    rows = manifest.drop_duplicates("scan_id").set_index("scan_id").reindex(pd.Index(scan_ids, dtype=str))
    out = {}
    for name in covariates:
        column = rows[name]
        if name == "sex":
            out[name] = column.astype("string").str.strip().str.lower().map(_SEX_CODES).astype(float)
        else:
            out[name] = pd.to_numeric(column, errors="coerce").astype(float)
    return pd.DataFrame(out, index=rows.index)


def image_features(feature_table: pd.DataFrame, scan_ids: Sequence[str], *, source: str, fold: int | None = None) -> pd.DataFrame:
    """The image features of ``scan_ids`` (in order) from one model of ``cnn21_features``:
    the fold model (``source="fold"``, ``fold``) or the final model (``source="final"``)."""
    rows = feature_table[feature_table["source"] == source]
    if fold is not None:
        rows = rows[rows["fold"] == fold]
    rows = rows.drop_duplicates("scan_id").set_index("scan_id")
    absent = pd.Index(scan_ids, dtype=str).difference(rows.index)
    if len(absent):
        where = f"fold {fold} model" if fold is not None else f"{source} model"
        raise ValueError(f"no CNN21 {where} features for {len(absent)} scans, e.g. {list(absent[:3])}: rerun train_cnn21")
    columns = [c for c in rows.columns if re.fullmatch(rf"{FEATURE_PREFIX}\d+", c)]
    return rows.loc[list(map(str, scan_ids)), columns]


def fit_preprocessing(table: pd.DataFrame) -> dict[str, Any]:
    """Median imputation and standardisation statistics of ``table`` (the training rows), JSON-able."""
    values = table.to_numpy(dtype=float)
    fill = np.nanmedian(np.where(np.isnan(values).all(axis=0), 0.0, values), axis=0)
    filled = np.where(np.isnan(values), fill, values)
    scale = filled.std(axis=0)
    return {
        "columns": list(table.columns),
        "fill": fill.tolist(),
        "mean": filled.mean(axis=0).tolist(),
        "scale": np.where(scale > 0, scale, 1.0).tolist(),  # a constant column stays 0 after centring
        "n_fit_rows": int(len(table)),
        "n_missing": {c: int(n) for c, n in zip(table.columns, np.isnan(values).sum(axis=0)) if n},
    }


def apply_preprocessing(table: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
    """Impute and standardise ``table`` with fitted ``state``: the fusion model's float32 input."""
    if list(table.columns) != state["columns"]:
        raise ValueError(f"columns {list(table.columns)} differ from the fitted ones {state['columns']}")
    values = table.to_numpy(dtype=float)
    values = np.where(np.isnan(values), np.asarray(state["fill"]), values)
    return ((values - np.asarray(state["mean"])) / np.asarray(state["scale"])).astype(np.float32)


def joined_table(features: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """Image features then covariates, row-aligned by scan id."""
    if list(features.index) != list(clinical.index):
        raise ValueError("image features and covariates must list the same scans in the same order")
    return pd.concat([features, clinical], axis=1)


def build_fusion_head(
    input_shape: tuple[int, ...] = (68,),
    num_classes: int = 2,
    hidden_units: int = 16,
    dropout: float = 0.2,
    l2: float = 1e-4,
) -> keras.Model:
    """Dense head on the preprocessed joined vector: dense (ReLU), dropout, softmax (uncompiled)."""
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="fused_features")
    x = layers.Dense(hidden_units, activation="relu", kernel_regularizer=reg, name="fusion_dense")(inputs)
    x = layers.Dropout(dropout, name="fusion_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32",
                           name="class_probs")(x)
    return keras.Model(inputs, outputs, name="fusion")


def single_covariate_auc(values: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """ROC-AUC of one covariate as a score for the positive class (the last, osteoporosis) vs the
    rest; rows with a missing value are left out; NaN if only one class remains."""
    values = np.asarray(values, dtype=float)
    known = ~np.isnan(values)
    positive = np.asarray(labels)[known] == len(class_names) - 1
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, values[known]))
