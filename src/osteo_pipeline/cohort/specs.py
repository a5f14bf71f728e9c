"""Draw the render parameters of each patient (anatomy) and scan (acquisition).

Bone appearance follows the patient's BMD through a "health" index in [0, 1] plus
patient-level jitter, so texture and shape carry signal beyond the label. Exposure varies
per scan (gain, offset, bit depth, white level), which is what makes raw intensity a weak
cue on its own.
"""

from __future__ import annotations

import numpy as np

from osteo_pipeline.cohort.render import Acquisition, Anatomy

# Image size range of the paper's scans at scale 1.0 (portrait: height > width).
HEIGHT_RANGE = (1350, 2800)
WIDTH_RANGE = (690, 1340)
_NOMINAL_PITCHES = 5.3  # image height in vertebral pitches: T12 and L5 always cut by the border
_FRACTURE_LEVEL_P = (0.35, 0.30, 0.20, 0.15)  # L1..L4: thoracolumbar junction most often


def health_index(bmd: float) -> float:
    """Map BMD (g/cm2) to [0, 1]: about 0.77 for normal, 0.26 for osteoporosis means."""
    return float(np.clip((bmd - 0.45) / (1.10 - 0.45), 0.0, 1.0))


def _seed(rng: np.random.Generator) -> int:
    """A 63-bit child seed."""
    return int(rng.integers(0, 2**63 - 1))


def sample_anatomy(
    rng: np.random.Generator, bmd: float, bmi: float, sex: str, fracture: bool
) -> Anatomy:
    """Patient anatomy: size, vertebral geometry, bone quality, soft tissue."""
    d = health_index(bmd)
    height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    width = int(np.clip(round(height * rng.uniform(0.47, 0.52)), *WIDTH_RANGE))
    level = int(rng.choice([1, 2, 3, 4], p=_FRACTURE_LEVEL_P)) if fracture else -1
    return Anatomy(
        height=height,
        width=width,
        pitch_frac=rng.uniform(0.97, 1.03) / _NOMINAL_PITCHES,
        body_frac=rng.uniform(0.80, 0.84),
        aspect=rng.uniform(1.30, 1.45) * (1.04 if sex == "M" else 1.0),
        growth=rng.uniform(0.025, 0.05),
        waist=rng.uniform(0.04, 0.10),
        level_jitter=tuple(float(x) for x in rng.normal(0.0, 0.015, 6)),
        trab_density=0.55 * bmd * rng.uniform(0.93, 1.07),
        # Spine bone loss is mostly trabecular: the cortical rim changes less with BMD.
        cort_density=0.30 * (0.6 + 0.4 * d) * rng.uniform(0.9, 1.1),
        cortex_frac=(0.025 + 0.035 * d) * rng.uniform(0.85, 1.15),
        trab_scale=(0.004 + 0.004 * (1.0 - d)) * rng.uniform(0.9, 1.1),
        trab_sparsity=-0.3 + 1.0 * (1.0 - d) + rng.normal(0.0, 0.1),
        trab_contrast=0.25 + 0.30 * (1.0 - d),
        fracture_level=level,
        fracture_loss=rng.uniform(0.2, 0.4),
        fracture_slope=rng.uniform(-0.3, 0.3),
        tissue=0.20 * (bmi / 22.0) * rng.uniform(0.75, 1.25),
        silhouette_half_width=rng.uniform(0.38, 0.58),
        silhouette_offset=rng.normal(0.0, 0.02),
        iliac=bool(rng.random() < 0.7),
        texture_seed=_seed(rng),
    )


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Scan position, exposure, noise and file format."""
    bits = 8 if rng.random() < 0.5 else 16
    # 16-bit exports carry 12-bit or 14-bit detector counts, or are stretched to full range.
    white = 255 if bits == 8 else int(rng.choice([4095, 16383, 65535], p=[0.5, 0.25, 0.25]))
    return Acquisition(
        tilt_deg=rng.uniform(-4.0, 4.0),
        shift_x=rng.uniform(-0.07, 0.07),
        shift_y=rng.uniform(-0.08, 0.08),
        # Uncalibrated exposure: together with soft tissue (BMI), the offset keeps the mean
        # ROI intensity a weak cue (ROC-AUC ~0.7 for normal vs osteoporosis).
        gain=0.55 * float(np.exp(rng.normal(0.0, 0.25))),
        offset=rng.uniform(0.0, 0.15),
        heel=rng.uniform(-0.08, 0.08),
        noise=rng.uniform(0.005, 0.015),
        noise_slope=rng.uniform(0.01, 0.03),
        line_amp=rng.uniform(0.002, 0.008),
        line_period=rng.uniform(0.02, 0.05),
        bits=bits,
        white=white,
        noise_seed=_seed(rng),
    )
