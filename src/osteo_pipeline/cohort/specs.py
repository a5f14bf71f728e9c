"""Draw the render parameters of each patient (anatomy) and scan (acquisition).

Appearance model. Each patient's BMD is mapped to a health index d in [0, 1]. The projected
trabecular density follows BMD itself (areal BMD *is* projected density), but the other
appearance traits are biology with real spread, not formulas of BMD: trabecular pattern
(strut size, sparsity, contrast), cortical rim (density, thickness) and vertebral size each
follow their own patient-level trait index

    d_trait = centre + c * (d - centre) + max(0, 1 - c) * spread * z,

where z mixes a patient-level "bone habit" shared by the traits with a trait-specific
normal draw, so the traits correlate with each other and overlap between classes. The
coupling c is the *difficulty* (`DIFFICULTIES`): 1.6 at `easy` (the historical
near-deterministic functions of BMD, amplified and with a quarter of their small jitter, so
that they show through the nuisance below), 0.2 at `realistic` and 0 at `hard`, where the
trabecular density also varies more between patients of the same BMD. Even at `hard` the
label still shows through the density itself and through what it does to the texture's
visibility above the noise, as in real DXA. Every random number is drawn whatever the
difficulty, so the same seed gives the same patients, scanners, views and nuisance at every
level: only how strongly the label shows through changes.

Nuisance, identical at every difficulty:
* age-related degenerative change (osteophytes, end-plate sclerosis, aortic calcification),
  whose severity grows with age and raises the apparent density of older spines;
* a scanner family per patient (`render.SCANNERS`: resolution, grey map, pencil- or
  fan-beam geometry); repeat scans of a patient are made on the same scanner;
* per scan: position, exposure (gain, offset, bit depth, white level), noise, view (AP or
  lateral, `lateral_fraction`) and burned-in annotations (level labels, ROI lines, text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osteo_pipeline.cohort.render import SCANNERS, Acquisition, Anatomy

# Image size range of the paper's scans at scale 1.0 (portrait: height > width).
HEIGHT_RANGE = (1350, 2800)
WIDTH_RANGE = (690, 1340)
_NOMINAL_PITCHES = 5.3  # image height in vertebral pitches: T12 and L5 always cut by the border
_FRACTURE_LEVEL_P = (0.35, 0.30, 0.20, 0.15)  # L1..L4: thoracolumbar junction most often
_SCANNER_P = (0.35, 0.40, 0.25)  # share of patients per scanner family (order of SCANNERS)
_TRAIT_CENTRE = 0.5  # health index at the cohort's centre
_TRAIT_SPREAD = 0.3  # SD of the biological variation of a trait index


@dataclass(frozen=True)
class Difficulty:
    """How strongly the label shows through the patient-level variation of appearance."""

    coupling: float  # weight of the BMD health index in each appearance trait (1 = formula)
    density_jitter: float  # half-width of the relative patient jitter of trabecular density
    jitter: float  # factor on the small per-trait patient jitters (strut size, rim, sparsity)


DIFFICULTIES: dict[str, Difficulty] = {
    # Easy: the historical formulas, amplified by 1.6 with a quarter of their jitter, so the label
    # still shows through the nuisance (scanners, degeneration, annotations) of every level.
    "easy": Difficulty(coupling=1.6, density_jitter=0.05, jitter=0.25),
    "realistic": Difficulty(coupling=0.2, density_jitter=0.12, jitter=1.0),
    "hard": Difficulty(coupling=0.0, density_jitter=0.3, jitter=1.0),
}


def difficulty_of(name: str) -> Difficulty:
    """The named difficulty; ValueError naming the choices otherwise."""
    if name not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {name!r}")
    return DIFFICULTIES[name]


def health_index(bmd: float) -> float:
    """Map BMD (g/cm2) to [0, 1]: about 0.77 for normal, 0.26 for osteoporosis means."""
    return float(np.clip((bmd - 0.45) / (1.10 - 0.45), 0.0, 1.0))


def trait_index(d: float, z: float, coupling: float) -> float:
    """Health index of one appearance trait: d scaled about the centre by the coupling, plus
    biological variation in the share of the trait the coupling leaves (none above 1)."""
    biology = max(0.0, 1.0 - coupling) * _TRAIT_SPREAD * z
    t = _TRAIT_CENTRE + coupling * (d - _TRAIT_CENTRE) + biology
    return float(np.clip(t, 0.0, 1.0))


def degeneration_severity(age: float, u: float) -> float:
    """Degenerative change in [0, 1]: rare before 45, common and marked after 70."""
    return float(np.clip((age - 45.0) / 35.0 + 0.35 * (u - 0.5), 0.0, 1.0) ** 1.5)


def _seed(rng: np.random.Generator) -> int:
    """A 63-bit child seed."""
    return int(rng.integers(0, 2**63 - 1))


def sample_anatomy(
    rng: np.random.Generator,
    bmd: float,
    bmi: float,
    sex: str,
    fracture: bool,
    age: float = 62.0,
    difficulty: str = "realistic",
) -> Anatomy:
    """Patient anatomy: size, vertebral geometry, bone quality, degeneration, soft tissue."""
    diff = difficulty_of(difficulty)
    d = health_index(bmd)
    height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    width = int(np.clip(round(height * rng.uniform(0.47, 0.52)), *WIDTH_RANGE))
    level = int(rng.choice([1, 2, 3, 4], p=_FRACTURE_LEVEL_P)) if fracture else -1
    # Patient-level biology: a shared bone habit plus one draw per trait (always drawn).
    shared, z_trab, z_cort, z_size = rng.standard_normal(4)
    trab = trait_index(d, 0.6 * shared + 0.8 * z_trab, diff.coupling)
    cort = trait_index(d, 0.6 * shared + 0.8 * z_cort, diff.coupling)
    size = trait_index(d, 0.6 * shared + 0.8 * z_size, diff.coupling)
    jitter = rng.uniform(-1.0, 1.0, 8)
    density_jitter = 1.0 + diff.density_jitter * jitter[0]
    return Anatomy(
        height=height,
        width=width,
        pitch_frac=rng.uniform(0.97, 1.03) / _NOMINAL_PITCHES,
        # Smaller, more slender vertebrae go with weaker bone, loosely (size trait).
        body_frac=rng.uniform(0.80, 0.84) * (0.97 + 0.06 * size),
        aspect=rng.uniform(1.30, 1.45) * (1.04 if sex == "M" else 1.0) * (0.97 + 0.06 * size),
        growth=rng.uniform(0.025, 0.05),
        waist=rng.uniform(0.04, 0.10),
        level_jitter=tuple(float(x) for x in rng.normal(0.0, 0.015, 6)),
        trab_density=0.55 * bmd * density_jitter,
        # Spine bone loss is mostly trabecular: the cortical rim changes less with BMD.
        cort_density=0.30 * (0.6 + 0.4 * cort) * (1.0 + 0.1 * diff.jitter * jitter[1]),
        cortex_frac=(0.025 + 0.035 * cort) * (1.0 + 0.15 * diff.jitter * jitter[2]),
        trab_scale=(0.004 + 0.004 * (1.0 - trab)) * (1.0 + 0.1 * diff.jitter * jitter[3]),
        trab_sparsity=-0.3 + 1.0 * (1.0 - trab) + 0.1 * diff.jitter * float(rng.standard_normal()),
        trab_contrast=0.25 + 0.30 * (1.0 - trab),
        fracture_level=level,
        fracture_loss=rng.uniform(0.2, 0.4),
        fracture_slope=rng.uniform(-0.3, 0.3),
        tissue=0.20 * (bmi / 22.0) * rng.uniform(0.75, 1.25),
        silhouette_half_width=rng.uniform(0.38, 0.58),
        silhouette_offset=rng.normal(0.0, 0.02),
        iliac=bool(rng.random() < 0.7),
        texture_seed=_seed(rng),
        degeneration=degeneration_severity(age, float(rng.random())),
        calcified=bool(rng.random() < 0.15 + 0.6 * np.clip((age - 50.0) / 30.0, 0.0, 1.0)),
        lordosis=rng.uniform(0.1, 0.3),
        depth_ratio=rng.uniform(0.80, 0.95),
        scanner=str(rng.choice(list(SCANNERS), p=_SCANNER_P)),
    )


def sample_acquisition(
    rng: np.random.Generator, scanner: str = "scanner_a", lateral_fraction: float = 0.0
) -> Acquisition:
    """Scan view, position, exposure, noise, annotations and file format."""
    fam = SCANNERS[scanner]
    bits = 8 if rng.random() < fam.p_8bit else 16
    # 16-bit exports carry 12-bit or 14-bit detector counts, or are stretched to full range.
    white = 255 if bits == 8 else int(rng.choice([4095, 16383, 65535], p=[0.5, 0.25, 0.25]))
    # One uniform decides the view, so views nest as lateral_fraction grows.
    view = "lateral" if rng.random() < lateral_fraction else "AP"
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
        view=view,
        scanner=scanner,
        # Fan beams magnify the spine across the fan by its height above the table.
        magnification=rng.uniform(1.0, 1.12) if fam.geometry == "fan" else 1.0,
        facing=1 if rng.random() < 0.5 else -1,
        annotate=bool(rng.random() < fam.p_annotated),
        box_margin=rng.uniform(0.0, 0.06),
    )
