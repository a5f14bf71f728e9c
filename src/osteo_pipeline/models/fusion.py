"""Image + clinical fusion (second paper): CNN21 image features joined with clinical covariates.

The image part is CNN21's penultimate layer (64 features); the clinical part is a few manifest
columns (age, sex, BMI, fracture history). Missing covariates are imputed by the median and every
column standardised, with statistics fitted on training rows only (``fit_preprocessing``,
scikit-learn); a small dense head classifies the joined vector (``build_fusion_head``).
``build_fusion_network`` assembles what is saved: raw images and raw covariates in, the CNN21
feature extractor, the fitted imputation/standardisation (``ImputeStandardize``) and the head.

BMD, T-score and Z-score are refused as inputs: the class is defined from them (WHO T-score
thresholds on the BMD measurement), so a model given them would read the answer, not learn it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd
from keras import layers
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# Normalised name fragments (lower case, letters and digits only) of label-defining measurements.
LABEL_DEFINING = {"bmd": "BMD", "tscore": "T-score", "zscore": "Z-score"}
FEATURE_PREFIX = "f"  # image feature columns f00, f01, ... (training.features.embedding_table)
_SEX_CODES = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}
# Layer names of the saved network: the evaluate stage and the tests address them.
EXTRACTOR_NAME, PREPROCESSING_NAME, HEAD_NAME = "cnn21_features", "preprocessing", "fusion_head"


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


def resolve_covariates(manifest: pd.DataFrame, covariates: Sequence[str], on_missing: str = "drop") -> tuple[list[str], dict[str, str]]:
    """The requested covariates the manifest can give, and the dropped ones with the reason.

    A covariate absent from the manifest, or empty for every scan, is dropped with a reason
    (``on_missing="drop"``; real cohorts often lack one) or stops the run (``"error"``). Partly
    missing columns are kept: their gaps are imputed inside each fold.
    """
    check_covariates(covariates)
    if on_missing not in ("drop", "error"):
        raise ValueError(f"on_missing must be 'drop' or 'error', got {on_missing!r}")
    dropped = {}
    for name in covariates:
        if name not in manifest.columns:
            dropped[name] = "not a column of the scan manifest"
        elif manifest[name].isna().all():
            dropped[name] = "empty for every scan"
    if dropped and on_missing == "error":
        raise ValueError(f"fusion covariates unavailable: {dropped} (manifest columns: {sorted(manifest.columns)})")
    used = [c for c in covariates if c not in dropped]
    if not used:
        raise ValueError(f"no fusion covariate is available: {dropped}")
    return used, dropped


def clinical_table(manifest: pd.DataFrame, scan_ids: Sequence[str], covariates: Sequence[str]) -> pd.DataFrame:
    """Numeric covariates of ``scan_ids`` (in that order) from the scan manifest; NaN where missing.

    ``sex`` becomes 1 (male) / 0 (female) / NaN (anything else); other columns must be numeric.
    This is the raw covariate input of the saved fusion network (``build_fusion_network``).
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


def image_features(feature_table: pd.DataFrame, scan_ids: Sequence[str], *, learning_rate: float, fold: int) -> pd.DataFrame:
    """The image features of ``scan_ids`` (in order) from one fold model of ``cnn21_fold_features``
    (columns scan_id, learning_rate, fold, f00..): the CNN21 trained at ``learning_rate`` without ``fold``."""
    at_rate = np.isclose(feature_table["learning_rate"].astype(float), float(learning_rate), rtol=1e-9, atol=0.0)
    rows = feature_table[at_rate & (feature_table["fold"] == fold)].drop_duplicates("scan_id").set_index("scan_id")
    absent = pd.Index(scan_ids, dtype=str).difference(rows.index.astype(str))
    if len(absent):
        raise ValueError(
            f"no features from the CNN21 fold {fold} model at learning rate {learning_rate:g} for {len(absent)} "
            f"scans, e.g. {list(absent[:3])}: rerun train_cnn21 with the same split and label_scheme"
        )
    return rows.loc[list(map(str, scan_ids)), feature_columns(rows.columns)]


def feature_columns(columns: Iterable[Any]) -> list[str]:
    """The image feature columns ``f00, f01, ...`` among ``columns``, in order."""
    return [c for c in columns if re.fullmatch(rf"{FEATURE_PREFIX}\d+", str(c))]


def joined_table(features: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """Image features then covariates, row-aligned by scan id (the head's raw input)."""
    if list(map(str, features.index)) != list(map(str, clinical.index)):
        raise ValueError("image features and covariates must list the same scans in the same order")
    clash = set(features.columns) & set(clinical.columns)
    if clash:
        raise ValueError(f"covariate names clash with image feature names: {sorted(clash)}")
    return pd.concat([features, clinical.set_axis(features.index)], axis=1)


def fit_preprocessing(table: pd.DataFrame) -> Pipeline:
    """Median imputation then standardisation, fitted on ``table`` (the training rows only).

    A column empty in every fit row is kept and filled with 0 (sklearn's ``keep_empty_features``),
    so the input width never depends on the fold.
    """
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
    ]).fit(table)


def apply_preprocessing(table: pd.DataFrame, fitted: Pipeline) -> np.ndarray:
    """Impute and standardise ``table`` with the fitted preprocessing: the head's float32 input.
    The columns must be the fitted ones, in order (sklearn checks the names)."""
    if list(table.columns) != list(fitted.feature_names_in_):
        raise ValueError(f"columns {list(table.columns)} differ from the fitted ones {list(fitted.feature_names_in_)}")
    return fitted.transform(table).astype(np.float32)


def preprocessing_state(fitted: Pipeline, table: pd.DataFrame | None = None) -> dict[str, Any]:
    """The fitted constants by column (JSON-able): fill value, mean and scale; with ``table`` (the
    fit rows), how many values each column had missing there."""
    columns = [str(c) for c in fitted.feature_names_in_]
    imputer, scaler = fitted.named_steps["impute"], fitted.named_steps["scale"]
    state: dict[str, Any] = {
        "columns": columns,
        "fill": imputer.statistics_.astype(float).tolist(),
        "mean": scaler.mean_.astype(float).tolist(),
        "scale": scaler.scale_.astype(float).tolist(),
        "n_fit_rows": int(scaler.n_samples_seen_),
    }
    if table is not None:
        state["n_missing"] = {c: int(n) for c, n in table.isna().sum().items() if n}
    return state


@keras.saving.register_keras_serializable(package="osteo_pipeline")
class ImputeStandardize(layers.Layer):
    """``fit_preprocessing`` inside the network: NaN -> the fitted fill value, then (x - mean) / scale.

    The constants are non-trainable weights, so they travel with the saved model and with
    ``set_weights`` (set them with ``set_state``); built with fill 0, mean 0, scale 1 (identity).
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        width = (int(input_shape[-1]),)
        self.fill = self.add_weight(shape=width, initializer="zeros", trainable=False, name="fill")
        self.mean = self.add_weight(shape=width, initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=width, initializer="ones", trainable=False, name="scale")

    def call(self, inputs: Any) -> Any:
        x = keras.ops.where(keras.ops.isnan(inputs), self.fill, inputs)
        return (x - self.mean) / self.scale

    def set_state(self, state: dict[str, Any]) -> None:
        """Load the constants of ``preprocessing_state``."""
        self.set_weights([np.asarray(state[k], dtype=np.float32) for k in ("fill", "mean", "scale")])


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
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def build_fusion_network(
    input_shape: Sequence[tuple[int, ...]],
    num_classes: int,
    *,
    image_model: keras.Model,
    hidden_units: int = 16,
    dropout: float = 0.2,
    l2: float = 1e-4,
) -> keras.Model:
    """The saved fusion model: inputs ``image`` (float32 (N, H, W, 3) in [0, 1], as CNN21) and
    ``covariates`` (float32 (N, C), ``clinical_table`` order, NaN where unknown); softmax output.

    ``input_shape`` is ``[(H, W, 3), (C,)]``. The image branch is ``image_model`` up to its
    penultimate layer, with its weights, frozen; preprocessing starts as the identity and the
    head untrained (``training.fusion.assemble`` loads both).
    """
    image_shape, covariate_shape = (tuple(int(d) for d in s) for s in input_shape)
    image = keras.Input(shape=image_shape, name="image")
    covariates = keras.Input(shape=covariate_shape, name="covariates")
    cnn = keras.models.clone_model(image_model)  # own layers: the template is not shared or changed
    cnn.set_weights(image_model.get_weights())
    extractor = keras.Model(cnn.input, cnn.layers[-1].input, name=EXTRACTOR_NAME)
    extractor.trainable = False
    joined = layers.Concatenate(name="joined")([extractor(image), covariates])
    scaled = ImputeStandardize(name=PREPROCESSING_NAME)(joined)
    head = build_fusion_head((int(joined.shape[-1]),), num_classes, hidden_units, dropout, l2)
    return keras.Model([image, covariates], head(scaled), name="fusion")
