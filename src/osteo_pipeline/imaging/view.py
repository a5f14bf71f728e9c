"""Which view a spine DXA scan is, AP or lateral, from the pixels alone (used by ingest when the
labels CSV has no ``view`` column or leaves a cell blank).

No trained model: one image feature that follows from the anatomy, with one threshold. An AP
(or PA) lumbar scan is mirror-symmetric about the spine's axis: the transverse processes, the
pedicles' rims and the iliac crests sit on both sides of the vertebral bodies. A lateral scan is
not: the pedicles, the posterior arch and the spinous processes lie on one side of the bodies
(behind them), nothing matches them on the other (in front). So:

1. the bone mask (Otsu threshold of the row-detrended image) gives, per row, its longest run:
   the vertebral body, the widest bone in either view. The body rows' run centres, fitted with
   a robust line (Theil-Sen), give the spine's axis, tilt included; their median length is the
   body width ``bw``;
2. a band-pass (difference of Gaussians, ``bw``/25 and ``bw``/8) keeps bone structures and drops
   trabecular noise, soft tissue and the heel effect;
3. ``mirror_correlation``: the Pearson correlation between the band ``band`` x ``bw`` wide to
   the left of the body and the mirrored band to its right, sampled along the tilted axis.

A scan is ``AP`` when the correlation reaches ``min_correlation``, else ``lateral``
(``ingest.view.classifier`` in parameters_ingest.yml); ``bench/bench_view.py`` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

VIEWS: tuple[str, ...] = ("AP", "lateral")
_WORK_HEIGHT = 128  # features are computed on a copy this many rows high: fast, and enough for anatomy
_BODY_ROWS = (0.7, 1.3)  # rows whose longest run is within this factor of the median: body rows
_DOG = (25.0, 8.0)  # band-pass sigmas: body width / these


@dataclass(frozen=True)
class ViewGuess:
    """The classifier's call and the feature it rests on."""

    view: str
    mirror_correlation: float
    tilt_deg: float


def _normalised(pixels: np.ndarray) -> np.ndarray:
    """Grayscale float image of at most ``_WORK_HEIGHT`` rows, 1st-99th percentile mapped to 0-1,
    minus each row's median (scan lines and the heel effect are not anatomy)."""
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    h, w = img.shape
    if h > _WORK_HEIGHT:
        img = cv2.resize(img, (max(8, round(w * _WORK_HEIGHT / h)), _WORK_HEIGHT), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(img, (1, 99))
    img = np.clip((img - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    return img - np.median(img, axis=1, keepdims=True)


def _spine_axis(bone: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Per row, the axis column (a straight, possibly tilted line); and the body width. None
    when the mask has too few body rows to fit a line."""
    runs = []  # (row, start, end) of each row's longest run
    for y, row in enumerate(bone):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        if edges.size:
            starts, ends = edges[0::2], edges[1::2]
            k = int(np.argmax(ends - starts))
            runs.append((y, starts[k], ends[k]))
    if len(runs) < 4:
        return None
    y, s, e = np.asarray(runs, dtype=float).T
    width = float(np.median(e - s))
    body = ((e - s) >= _BODY_ROWS[0] * width) & ((e - s) <= _BODY_ROWS[1] * width)
    if body.sum() < 4 or np.ptp(y[body]) == 0:
        return None
    from scipy.stats import theilslopes  # here: loading the ingest pipeline stays fast

    slope, intercept, _, _ = theilslopes((s + e - 1)[body] / 2, y[body])
    return intercept + slope * np.arange(bone.shape[0]), width


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def mirror_correlation(pixels: np.ndarray, band: float) -> tuple[float, float]:
    """(mirror correlation, tilt in degrees) of a decoded scan; see the module docstring."""
    from skimage.filters import threshold_otsu

    img = _normalised(pixels)
    bone = img > threshold_otsu(img) if np.ptp(img) > 1e-9 else np.zeros(img.shape, dtype=bool)
    found = _spine_axis(bone)
    if found is None:  # no body to mirror about (ingest excludes flat scans before this)
        return 0.0, 0.0
    axis, width = found
    bandpass = (cv2.GaussianBlur(img, (0, 0), max(0.7, width / _DOG[0]))
                - cv2.GaussianBlur(img, (0, 0), max(1.0, width / _DOG[1])))
    half, inner = int(round((0.5 + band) * width)), int(width / 2) + 1
    # The window follows the tilted axis row by row (a shear). Deskewing by rotation instead did
    # worse on the synthetic cohort (75 vs 79 of 80 calibration scans right), so it is not used.
    map_x = (axis[:, None] + np.arange(-half, half + 1)[None, :]).astype(np.float32)
    map_y = np.repeat(np.arange(img.shape[0], dtype=np.float32)[:, None], 2 * half + 1, axis=1)
    window = cv2.remap(bandpass.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    left, right = window[:, : half - inner + 1][:, ::-1], window[:, half + inner:]
    tilt = float(np.degrees(np.arctan(axis[1] - axis[0]))) if len(axis) > 1 else 0.0
    return _correlation(left, right), tilt


def classify_view(pixels: np.ndarray, band: float, min_correlation: float) -> ViewGuess:
    """AP when the bone beside the vertebral bodies mirrors across the spine's axis, else lateral."""
    correlation, tilt = mirror_correlation(pixels, band)
    return ViewGuess(view="AP" if correlation >= min_correlation else "lateral",
                     mirror_correlation=round(correlation, 4), tilt_deg=round(tilt, 2))
