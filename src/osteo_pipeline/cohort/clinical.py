"""Clinical table of the synthetic cohort (Table 2 of the seed paper, WHO-consistent).

Per class we draw BMD, T-score, Z-score, age, BMI, sex and fracture history. T-scores are
sampled from a normal distribution truncated to the WHO band of the label (normal T >= -1,
osteopenia -2.5 < T < -1, osteoporosis T <= -2.5), so label and T-score always agree after
rounding to two decimals. BMD and Z-score share a latent "bone status" with the T-score, so
they correlate within a class as they would in a real cohort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

LABELS: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")

# Columns of clinical.csv, in order.
CLINICAL_COLUMNS: tuple[str, ...] = (
    "file",
    "label",
    "patient_id",
    "age",
    "sex",
    "bmi",
    "bmd",
    "t_score",
    "z_score",
    "fracture_history",
    "view",  # per scan: "AP" or "lateral"
    "scanner",  # per patient: scanner family (neutral name)
)
# Columns that describe the scan, not the patient (filled by the writer).
SCAN_COLUMNS: tuple[str, ...] = ("file", "view", "scanner")


@dataclass(frozen=True)
class ClassStats:
    """Distribution parameters of one diagnostic class (means and SDs as in Table 2)."""

    bmd: tuple[float, float]
    # Location and scale before truncation to t_bounds, chosen so that the truncated mean
    # matches Table 2 (truncation alone would pull it towards the band's centre).
    t_score: tuple[float, float]
    t_bounds: tuple[float, float]  # inclusive, already on the 2-decimal grid
    z_score: tuple[float, float]
    age: tuple[float, float]
    bmi: tuple[float, float]
    male_fraction: float
    fracture_prob: float  # prior fracture history (informative, not the label)
    vertebral_fracture_prob: float  # visible wedge/compression fracture in the image


# Osteopenia is not in the paper: its values interpolate between the two published classes.
CLASS_STATS: dict[str, ClassStats] = {
    "normal": ClassStats(
        bmd=(0.95, 0.12),
        t_score=(-0.92, 0.22),
        t_bounds=(-1.0, 3.0),
        z_score=(0.1, 0.1),
        age=(62.3, 7.8),
        bmi=(21.4, 2.8),
        male_fraction=30 / 60,
        fracture_prob=0.15,
        vertebral_fracture_prob=0.02,
    ),
    "osteopenia": ClassStats(
        bmd=(0.80, 0.10),
        t_score=(-1.75, 0.35),
        t_bounds=(-2.49, -1.01),
        z_score=(-0.2, 0.15),
        age=(61.6, 8.1),
        bmi=(22.0, 3.0),
        male_fraction=0.5,
        fracture_prob=0.35,
        vertebral_fracture_prob=0.08,
    ),
    "osteoporosis": ClassStats(
        bmd=(0.62, 0.10),
        t_score=(-2.83, 0.3),
        t_bounds=(-5.0, -2.5),
        z_score=(-0.5, 0.2),
        age=(61.0, 8.4),
        bmi=(22.7, 3.1),
        male_fraction=55 / 114,
        fracture_prob=0.75,
        vertebral_fracture_prob=0.20,
    ),
}

# How strongly BMD / Z-score follow the T-score's latent within a class.
_LATENT_CORRELATION = 0.7
_AGE_RANGE = (25, 85)  # the source dataset's age span
_BMI_RANGE = (15.0, 40.0)
_BMD_RANGE = (0.35, 1.50)


def who_label(t_score: float) -> str:
    """WHO category of a T-score (normal >= -1, osteoporosis <= -2.5)."""
    if t_score >= -1.0:
        return "normal"
    if t_score <= -2.5:
        return "osteoporosis"
    return "osteopenia"


def repeat_patient_count(n_scans: int, fraction: float) -> int:
    """Patients with two scans so that about `fraction` of patients are repeats."""
    if n_scans < 2 or fraction <= 0:
        return 0
    n_rep = int(round(n_scans * fraction / (1.0 + fraction)))
    return min(n_rep, n_scans // 2)


def _pdf(x: float) -> float:
    """Standard normal density."""
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _truncated_moments(lo: float, hi: float) -> tuple[float, float]:
    """Mean and variance of a standard normal truncated to [lo, hi]."""
    z = _cdf(hi) - _cdf(lo)
    mean = (_pdf(lo) - _pdf(hi)) / z
    var = 1.0 + (lo * _pdf(lo) - hi * _pdf(hi)) / z - mean**2
    return mean, var


def _truncated_latent(
    rng: np.random.Generator, n: int, mean: float, sd: float, bounds: tuple[float, float]
) -> np.ndarray:
    """Standard-normal latents whose 2-decimal T-score (mean + sd*z) lies inside bounds."""
    z = rng.standard_normal(n)
    for _ in range(1000):
        t = np.round(mean + sd * z, 2)
        bad = (t < bounds[0]) | (t > bounds[1])
        if not bad.any():
            return z
        z[bad] = rng.standard_normal(int(bad.sum()))
    raise RuntimeError("could not sample T-scores inside the WHO band")


def _sex_per_patient(
    rng: np.random.Generator, n_scans: int, n_repeat: int, male_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sex and scan count per patient, matching the class's M/F count over scans exactly."""
    n_patients = n_scans - n_repeat
    n_male_scans = int(round(n_scans * male_fraction))
    # Repeat patients count twice, so split males between them and single-scan patients.
    rep_male = int(round(n_repeat * male_fraction))
    single_male = n_male_scans - 2 * rep_male
    n_single = n_patients - n_repeat
    single_male = int(np.clip(single_male, 0, n_single))
    sex = np.array(
        ["M"] * rep_male
        + ["F"] * (n_repeat - rep_male)
        + ["M"] * single_male
        + ["F"] * (n_single - single_male)
    )
    scans = np.array([2] * n_repeat + [1] * n_single)
    order = rng.permutation(n_patients)
    return sex[order], scans[order]


def sample_patients(
    rng: np.random.Generator, label: str, n_scans: int, repeat_fraction: float
) -> pd.DataFrame:
    """One row per patient of class `label` (columns as the clinical table plus `n_scans`)."""
    st = CLASS_STATS[label]
    n_repeat = repeat_patient_count(n_scans, repeat_fraction)
    sex, scans = _sex_per_patient(rng, n_scans, n_repeat, st.male_fraction)
    n = len(sex)
    latent = _truncated_latent(rng, n, *st.t_score, st.t_bounds)
    # Standardise the truncated latent so BMD and Z-score keep their Table 2 mean and SD.
    lo, hi = ((b - st.t_score[0]) / st.t_score[1] for b in st.t_bounds)
    t_mean, t_var = _truncated_moments(lo, hi)
    shared = (latent - t_mean) / math.sqrt(t_var)
    rho = _LATENT_CORRELATION
    resid = np.sqrt(1.0 - rho**2)
    bmd = st.bmd[0] + st.bmd[1] * (rho * shared + resid * rng.standard_normal(n))
    z_score = st.z_score[0] + st.z_score[1] * (rho * shared + resid * rng.standard_normal(n))
    age = np.clip(np.round(rng.normal(*st.age, n)), *_AGE_RANGE).astype(int)
    bmi = np.clip(rng.normal(*st.bmi, n), *_BMI_RANGE)
    vfrac = rng.random(n) < st.vertebral_fracture_prob
    # A visible vertebral fracture is itself a fracture, so it implies a positive history.
    fracture = (rng.random(n) < st.fracture_prob) | vfrac
    return pd.DataFrame(
        {
            "label": label,
            "age": age,
            "sex": sex,
            "bmi": np.round(bmi, 1),
            "bmd": np.round(np.clip(bmd, *_BMD_RANGE), 3),
            "t_score": np.round(st.t_score[0] + st.t_score[1] * latent, 2),
            "z_score": np.round(z_score, 2),
            "fracture_history": fracture.astype(int),
            "vertebral_fracture": vfrac,
            "n_scans": scans,
        }
    )


def sample_cohort_patients(
    rng: np.random.Generator, counts: dict[str, int], repeat_fraction: float
) -> pd.DataFrame:
    """Patients of all classes with shuffled ids P0001.. (ids must not leak the label)."""
    parts = [
        sample_patients(rng, label, n, repeat_fraction)
        for label, n in counts.items()
        if n > 0
    ]
    if not parts:
        raise ValueError("the cohort needs at least one scan")
    patients = pd.concat(parts, ignore_index=True)
    order = rng.permutation(len(patients))
    patients = patients.iloc[order].reset_index(drop=True)
    patients.insert(0, "patient_id", [f"P{i + 1:04d}" for i in range(len(patients))])
    return patients
