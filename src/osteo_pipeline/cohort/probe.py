"""Fixed difficulty probe of a cohort: how much of the label a simple texture model can see.

The probe calibrates the cohort generator, never the models under study, so it is frozen:
a logistic regression on the ground-truth ROI (roi.csv box) of each scan, described by

* a 32-bin histogram of its intensities, scaled by the image's own maximum (8- and 16-bit
  files alike, no calibration: what a naive user gets), and
* GLCM texture (scikit-image `graycomatrix`/`graycoprops`) of the ROI stretched to its own
  1st-99th percentiles and quantised to 32 grey levels, at distances 1, 2, 4 and 8 px,
  averaged over four angles.

The score is the out-of-fold ROC-AUC of normal vs osteoporosis under patient-grouped,
stratified 5-fold cross-validation (repeat scans of a patient never straddle folds). The
mean ROI intensity alone (same scaling) is reported next to it as the naive baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.feature import graycomatrix, graycoprops
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteo_pipeline.imaging.decode import decode_scan

HIST_BINS = 32
GLCM_LEVELS = 32
GLCM_DISTANCES: tuple[int, ...] = (1, 2, 4, 8)
GLCM_ANGLES: tuple[float, ...] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS: tuple[str, ...] = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
POSITIVE, NEGATIVE = "normal", "osteoporosis"


@dataclass(frozen=True)
class ProbeResult:
    """Out-of-fold ROC-AUCs (normal = positive) and the scan counts they rest on."""

    probe_auc: float
    intensity_auc: float
    n_scans: int
    n_patients: int


def roi_pixels(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """ROI of the (x0, y0, x1, y1) box as float, divided by the image's own maximum."""
    x0, y0, x1, y1 = box
    img = image.astype(np.float32)
    return img[y0:y1, x0:x1] / max(float(img.max()), 1.0)


def intensity_histogram(roi: np.ndarray) -> np.ndarray:
    """Normalised histogram of the max-scaled ROI on [0, 1]."""
    hist, _ = np.histogram(roi, bins=HIST_BINS, range=(0.0, 1.0))
    return hist / max(1, roi.size)


def glcm_features(roi: np.ndarray) -> np.ndarray:
    """GLCM properties per distance (angle-averaged) of the percentile-stretched ROI."""
    lo, hi = np.percentile(roi, [1.0, 99.0])
    q = np.clip((roi - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    levels = np.minimum((q * GLCM_LEVELS).astype(np.uint8), GLCM_LEVELS - 1)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    return np.concatenate([graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS])


def scan_features(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
    """(probe feature vector, mean max-scaled ROI intensity) of one scan."""
    roi = roi_pixels(image, box)
    return np.concatenate([intensity_histogram(roi), glcm_features(roi)]), float(roi.mean())


def cohort_features(cohort_dir: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Clinical rows of the normal and osteoporosis scans, and their probe features."""
    root = Path(cohort_dir)
    table = pd.read_csv(root / "clinical.csv").merge(pd.read_csv(root / "roi.csv"), on="file")
    table = table[table["label"].isin([POSITIVE, NEGATIVE])].reset_index(drop=True)
    feats, means = [], []
    for r in table.itertuples():
        # The project's own decoder: PNG and DICOM cohorts are read the same way.
        image = decode_scan((root / r.file).read_bytes(), r.file).pixels
        f, m = scan_features(image, (r.x0, r.y0, r.x1, r.y1))
        feats.append(f)
        means.append(m)
    return table.assign(roi_mean=means), np.stack(feats)


def grouped_auc(x: np.ndarray, table: pd.DataFrame, seed: int = 0) -> float:
    """Out-of-fold ROC-AUC of a scaled logistic regression, patient-grouped stratified 5-fold."""
    y = (table["label"] == POSITIVE).to_numpy()
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    proba = cross_val_predict(model, x, y, groups=table["patient_id"], cv=cv, method="predict_proba")
    return float(roc_auc_score(y, proba[:, 1]))


def run_probe(cohort_dir: str | Path) -> ProbeResult:
    """Probe AUC and mean-intensity AUC of the cohort in `cohort_dir`."""
    table, x = cohort_features(cohort_dir)
    y = table["label"] == POSITIVE
    return ProbeResult(
        probe_auc=grouped_auc(x, table),
        intensity_auc=float(roc_auc_score(y, table["roi_mean"])),
        n_scans=len(table),
        n_patients=int(table["patient_id"].nunique()),
    )
