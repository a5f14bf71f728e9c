"""SVM and Random-Forest baselines on handcrafted intensity and texture features (second paper).

Features come from the 150-px model inputs (grayscale = channel 0). Hyper-parameters are chosen
on the same patient-grouped CV folds as the CNN, and scaling is fitted inside each fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from sklearn.base import ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from osteo_pipeline.evaluation.stats import METRIC_NAMES, classification_metrics

Kind = Literal["svm", "random_forest"]

PERCENTILES = (5, 25, 50, 75, 95)
HIST_BINS = 16
GLCM_LEVELS = 32  # 256 grey levels would leave the co-occurrence matrix mostly empty at 150 px
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_SETTINGS = ((8, 1.0), (16, 2.0))  # (points P, radius R)
FOLD_COLUMNS = ("fold", *(f"val_{m}" for m in METRIC_NAMES))
MODEL_STEP = "model"


def _grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 from (N, H, W) or (N, H, W, C) uint8 (channel 0: the channels are copies)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise TypeError(f"expected uint8 model inputs, got {x.dtype}")
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got shape {x.shape}")
    return x


def _per_image_histograms(flat: np.ndarray, bins: int) -> np.ndarray:
    """Normalised ``bins``-bin histogram of each row of uint8 pixels, all rows in one bincount."""
    n, size = flat.shape
    shift = int(np.log2(256 // bins))
    codes = (flat >> shift).astype(np.int64) + bins * np.arange(n)[:, None]
    return np.bincount(codes.ravel(), minlength=n * bins).reshape(n, bins) / size


def intensity_features(gray: np.ndarray) -> pd.DataFrame:
    """Mean, sd, percentiles, skewness, kurtosis, Shannon entropy (bits) and a 16-bin histogram."""
    flat = gray.reshape(len(gray), -1)
    values = flat.astype(np.float64)
    sd = values.std(axis=1)
    with warnings.catch_warnings():  # constant images: scipy warns and returns NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        skew, kurt = stats.skew(values, axis=1), stats.kurtosis(values, axis=1)
    flat_img = sd == 0  # a constant image has no shape: report a symmetric, normal-tailed 0
    cols: dict[str, np.ndarray] = {
        "int_mean": values.mean(axis=1),
        "int_sd": sd,
        **{f"int_p{q:02d}": v for q, v in zip(PERCENTILES, np.percentile(flat, PERCENTILES, axis=1))},
        "int_skew": np.where(flat_img, 0.0, skew),
        "int_kurtosis": np.where(flat_img, 0.0, kurt),
        "int_entropy": stats.entropy(_per_image_histograms(flat, 256), base=2, axis=1),
    }
    hist = _per_image_histograms(flat, HIST_BINS)
    cols.update({f"hist_{b:02d}": hist[:, b] for b in range(HIST_BINS)})
    return pd.DataFrame(cols)


def glcm_features(image: np.ndarray) -> dict[str, float]:
    """GLCM properties of one uint8 image at each distance, averaged over four angles."""
    quantised = image >> int(np.log2(256 // GLCM_LEVELS))
    glcm = graycomatrix(quantised, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    return {
        f"glcm_{prop.lower()}_d{d}": float(v)
        for prop in GLCM_PROPS
        for d, v in zip(GLCM_DISTANCES, graycoprops(glcm, prop).mean(axis=1))
    }


def lbp_features(image: np.ndarray) -> dict[str, float]:
    """Normalised histograms of rotation-invariant uniform LBP codes (P + 2 bins per setting)."""
    out: dict[str, float] = {}
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(image, points, radius, method="uniform").astype(np.int64)
        hist = np.bincount(codes.ravel(), minlength=points + 2) / codes.size
        out.update({f"lbp{points}r{radius:g}_{b:02d}": float(h) for b, h in enumerate(hist)})
    return out


def handcrafted_features(images: np.ndarray) -> pd.DataFrame:
    """One row of named intensity, histogram, GLCM and LBP features per uint8 image.

    Accepts (N, H, W) or (N, H, W, 3) uint8 (channel 0 is used). Deterministic and NaN-free.
    """
    gray = _grayscale(images)
    texture = pd.DataFrame([{**glcm_features(img), **lbp_features(img)} for img in gray])
    return pd.concat([intensity_features(gray), texture], axis=1)


def _estimator(kind: Kind, params: Mapping[str, Any], seed: int) -> ClassifierMixin:
    """The unfitted classifier; class weights balanced as for the CNN.

    SVM probabilities are Platt-scaled on 5-fold out-of-fold decision values, then the SVC is
    refitted on all rows: what ``SVC(probability=True)`` did, which scikit-learn 1.9 deprecates.
    """
    if kind == "svm":
        svc = SVC(kernel="rbf", class_weight="balanced", random_state=seed, **{"C": 1.0, "gamma": "scale", **params})
        return CalibratedClassifierCV(svc, method="sigmoid", cv=5, ensemble=False)
    if kind == "random_forest":
        return RandomForestClassifier(class_weight="balanced", random_state=seed, **{"n_estimators": 300, **params})
    raise ValueError(f"unknown classifier kind {kind!r}: use 'svm' or 'random_forest'")


def _param_prefix(kind: Kind) -> str:
    """Where the classifier's own parameters live inside the pipeline."""
    return f"{MODEL_STEP}__estimator__" if kind == "svm" else f"{MODEL_STEP}__"


def make_classifier(kind: Kind, params: Mapping[str, Any] | None = None, seed: int = 0) -> Pipeline:
    """Impute (median) -> standardise -> calibrated SVC(rbf) or RandomForest, as one unfitted pipeline.

    Preprocessing lives inside the pipeline so that every CV fit learns it from its training rows
    only. ``params`` are the classifier's own keyword arguments (e.g. ``{"C": 10}``).
    """
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            (MODEL_STEP, _estimator(kind, dict(params or {}), seed)),
        ]
    )


def _pipeline_grid(grid: Mapping[str, Sequence[Any]], kind: Kind) -> dict[str, list[Any]]:
    """Classifier parameter names -> pipeline names (``C`` -> ``model__estimator__C``); ``step__x`` passes through."""
    return {(k if "__" in k else f"{_param_prefix(kind)}{k}"): list(v) for k, v in grid.items()}


def _model_params(pipeline_params: Mapping[str, Any], kind: Kind) -> dict[str, Any]:
    """Inverse of :func:`_pipeline_grid` for the classifier's own parameters."""
    prefix = _param_prefix(kind)
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in pipeline_params.items()}


def _ordered_proba(fitted: Pipeline, x: pd.DataFrame, classes: Sequence[Any]) -> np.ndarray:
    """Predicted probabilities with columns in ``classes`` order (sklearn sorts its ``classes_``)."""
    proba = fitted.predict_proba(x)
    order = [list(fitted.classes_).index(c) for c in classes]
    return proba[:, order]


def cross_validate_classical(
    features: pd.DataFrame,
    labels: Sequence[Any],
    folds: Sequence[int],
    kind: Kind,
    grid: Mapping[str, Sequence[Any]],
    seed: int = 0,
    *,
    classes: Sequence[Any] | None = None,
    n_jobs: int | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, Pipeline]:
    """Grid-search on the CNN's CV folds, per-fold metrics of the best setting, final fit on all rows.

    ``folds`` (0..k-1, one per training scan) define the splits through ``PredefinedSplit``; the
    grid is scored by ROC-AUC (one-vs-rest macro for three classes). Returns the best classifier
    parameters, a table with one row per fold and the shared columns (``fold, val_accuracy, ...,
    val_loss``; loss = log loss), and the pipeline refitted with those parameters on every row.
    ``classes`` orders the probability columns (default: sorted labels, e.g. normal < osteoporosis);
    ``n_jobs`` parallelises the grid search (results do not depend on it).
    """
    x = pd.DataFrame(features).reset_index(drop=True)
    y = np.asarray(labels)
    fold_ids = np.asarray(folds, dtype=int)
    cls = list(classes) if classes is not None else sorted(np.unique(y).tolist())
    if len(x) != len(y) or len(y) != len(fold_ids):
        raise ValueError("features, labels and folds must have one entry per training scan")
    if (fold_ids < 0).any():
        raise ValueError("every training scan needs a fold (0..k-1)")

    splitter = PredefinedSplit(fold_ids)
    search = GridSearchCV(
        make_classifier(kind, {}, seed),
        _pipeline_grid(grid, kind),
        scoring="roc_auc" if len(cls) == 2 else "roc_auc_ovr",
        cv=splitter,
        refit=True,  # the final fit on all training scans, with the best parameters
        error_score="raise",
        n_jobs=n_jobs,
    )
    search.fit(x, y)
    best = clone(search.best_estimator_)  # unfitted copy with the chosen parameters

    rows = []
    for fold, (train_idx, val_idx) in zip(np.unique(fold_ids), splitter.split()):
        fitted = clone(best).fit(x.iloc[train_idx], y[train_idx])
        metrics = classification_metrics(y[val_idx], _ordered_proba(fitted, x.iloc[val_idx], cls), cls)
        rows.append({"fold": int(fold), **{f"val_{m}": metrics[m] for m in METRIC_NAMES}})
    fold_table = pd.DataFrame(rows, columns=list(FOLD_COLUMNS))
    return _model_params(search.best_params_, kind), fold_table, search.best_estimator_
