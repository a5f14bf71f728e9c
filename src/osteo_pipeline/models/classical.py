"""SVM and Random-Forest baselines on handcrafted intensity and texture features (second paper).

Features come from the 150-px model inputs (grayscale = channel 0). Hyper-parameters are chosen
on the same patient-grouped CV folds as the CNN, and imputation and scaling are fitted inside each
fold (the cross-validation itself is ``training.classical``). The features are per image and
stateless, so they are computed once and shared by every fit; the saved model
(``make_image_classifier``) recomputes them from images.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

Kind = Literal["svm", "random_forest"]

PERCENTILES = (5, 25, 50, 75, 95)
HIST_BINS = 16
GLCM_LEVELS = 32  # 256 grey levels would leave the co-occurrence matrix mostly empty at 150 px
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_SETTINGS = ((8, 1.0), (16, 2.0))  # (points P, radius R)
MODEL_STEP = "model"
FEATURE_STEP = "features"
# What skops (MLflow's sklearn format) must be told to trust to reload a fitted image classifier:
# our feature function and scikit-learn internals. We write these files ourselves.
SKOPS_TRUSTED_TYPES: dict[str, tuple[str, ...]] = {
    "svm": ("numpy.dtype", "osteo_pipeline.models.classical.handcrafted_features",
            "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
            "osteo_pipeline.models.classical.CalibrationFolds"),
    "random_forest": ("numpy.dtype", "osteo_pipeline.models.classical.handcrafted_features", "sklearn.tree._tree.Tree"),
}


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


class CalibrationFolds:
    """Stratified folds for the SVM's sigmoid calibration: ``k``, or fewer when a class has fewer
    than ``k`` training scans (a small fold of a small cohort), where a fixed ``cv=k`` would stop
    the run. With enough scans it is exactly scikit-learn's ``cv=k``."""

    def __init__(self, k: int = 5):
        self.k = k

    def _folds(self, y: Any) -> int:
        return max(2, min(self.k, int(np.unique(np.asarray(y), return_counts=True)[1].min())))

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:  # noqa: N803 - sklearn's API
        return self.k if y is None else self._folds(y)

    def split(self, X: Any, y: Any, groups: Any = None):  # noqa: N803
        return StratifiedKFold(self._folds(y)).split(X, y)


def _estimator(kind: Kind, params: Mapping[str, Any], seed: int) -> ClassifierMixin:
    """The unfitted classifier; class weights balanced as for the CNN.

    SVM probabilities are Platt-scaled on 5-fold out-of-fold decision values, then the SVC is
    refitted on all rows: what ``SVC(probability=True)`` did, which scikit-learn 1.9 deprecates.
    """
    if kind == "svm":
        svc = SVC(kernel="rbf", class_weight="balanced", random_state=seed, **{"C": 1.0, "gamma": "scale", **params})
        return CalibratedClassifierCV(svc, method="sigmoid", cv=CalibrationFolds(5), ensemble=False)
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


def make_image_classifier(kind: Kind, params: Mapping[str, Any] | None = None, seed: int = 0) -> Pipeline:
    """``make_classifier`` behind the (stateless) feature extractor: uint8 images in, class
    probabilities out, so the saved model needs nothing else at prediction time."""
    return Pipeline([(FEATURE_STEP, FunctionTransformer(handcrafted_features)), *make_classifier(kind, params, seed).steps])


def setting_label(params: Mapping[str, Any]) -> str:
    """A grid point as a short, stable label: ``{"C": 10, "gamma": "scale"} -> "C=10, gamma=scale"``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def full_probabilities(fitted: Pipeline, x: pd.DataFrame | np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class index 0..n_classes-1 (labels are class indices)."""
    classes = [int(c) for c in fitted.classes_]
    if classes != list(range(n_classes)):
        raise ValueError(f"a fit saw classes {classes}, not all of 0..{n_classes - 1}: each fold needs every class")
    return fitted.predict_proba(x)
