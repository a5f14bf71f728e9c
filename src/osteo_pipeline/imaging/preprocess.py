"""Intensity normalisation, ROI crop and resize: the one preprocessing path.

Both the ``roi_resize`` pipeline and the served model call :func:`preprocess_scan`,
so training and serving can never disagree on preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from osteo_pipeline.imaging.roi import detect_spine_roi_scored

Box = tuple[int, int, int, int]

FITS = ("stretch", "pad")


@dataclass(frozen=True)
class RoiChoice:
    """The box used for a scan and where it came from (``corrected``, ``csv``, ``auto`` or ``whole``).

    ``confidence``: the automatic box's (``imaging.roi.RoiDetection``), 0 for the whole-image
    fallback, NaN for a box a person gave (``corrected``, ``csv``); ``reason`` says why it is low.
    """

    box: Box
    source: str
    confidence: float = float("nan")
    reason: str = ""


def window_to_uint8(pixels: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map the robust intensity window [p_low, p_high] to 0..255.

    Percentiles rather than min/max so a burned-in marker or a dead pixel cannot
    squeeze the bone into a few grey levels. 8- and 16-bit scans (every decoded scan) take
    an exact fast path: percentiles from the histogram and one lookup table, bit for bit what
    ``np.percentile`` and the float formula give, without a float copy of the image.
    """
    integer = pixels.dtype in (np.uint8, np.uint16)
    lo, hi = _integer_percentiles(pixels, low_pct, high_pct) if integer else np.percentile(pixels, [low_pct, high_pct])
    if hi <= lo:  # flat image: keep it flat rather than dividing by zero
        return np.zeros(pixels.shape, dtype=np.uint8)
    values = np.arange(1 << (8 * pixels.itemsize)) if integer else pixels
    scaled = (values.astype(np.float32) - lo) * (255.0 / (hi - lo))
    table = np.clip(scaled, 0, 255).astype(np.uint8)
    return table[pixels] if integer else table


def _integer_percentiles(pixels: np.ndarray, *pcts: float) -> tuple[np.float64, ...]:
    """``np.percentile(pixels, pcts)`` (linear method) of unsigned integers, from their histogram."""
    counts = cv2.calcHist([np.ascontiguousarray(pixels)], [0], None, [1 << (8 * pixels.itemsize)],
                          [0, 1 << (8 * pixels.itemsize)]).ravel()
    cumulative = np.cumsum(counts)
    n = pixels.size
    out = []
    for pct in pcts:
        index = np.float64(pct) / 100 * (n - 1)
        below = np.floor(index)
        # k-th smallest value (0-based): the first level whose cumulative count exceeds k
        a, b = (np.float64(np.searchsorted(cumulative, k, side="right")) for k in (below, min(below + 1, n - 1)))
        fraction = index - below
        out.append(a + (b - a) * fraction if fraction < 0.5 else b - (b - a) * (1 - fraction))
    return tuple(out)


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """Clip a box to the image; None when nothing of it is left."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, x1), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def choose_roi(pixels: np.ndarray, given: Box | None, margin: float, corrected: Box | None = None) -> RoiChoice:
    """Prefer a user's corrected box, then a given (ground-truth) box, else detect the spine, else the
    whole image. A correction is the newest statement a person made about the scan, so it wins."""
    height, width = pixels.shape[:2]
    if corrected is not None and (box := clip_box(corrected, width, height)) is not None:
        return RoiChoice(box, "corrected")
    if given is not None and (box := clip_box(given, width, height)) is not None:
        return RoiChoice(box, "csv")
    found = detect_spine_roi_scored(pixels, margin=margin)
    if found.box is not None:
        return RoiChoice(found.box, "auto", found.confidence, found.reason)
    return RoiChoice((0, 0, width, height), "whole", 0.0, f"whole image used: {found.reason}")


def pad_to_square(roi: np.ndarray) -> np.ndarray:
    """Centre a windowed uint8 crop on a square of its own border's median grey level.

    The median of the crop's outermost pixels is the soft tissue around the spine, so the
    padding continues the background instead of adding black bars with hard edges (which a
    CNN would learn as features of tall or wide crops).
    """
    h, w = roi.shape[:2]
    if h == w:
        return roi
    border = np.concatenate([roi[0], roi[-1], roi[:, 0], roi[:, -1]])
    value = int(np.median(border))
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(roi, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=value)


def crop_resize(
    pixels: np.ndarray, box: Box, size: int, low_pct: float, high_pct: float, fit: str = "stretch"
) -> np.ndarray:
    """Crop, window to uint8 (statistics from the crop itself) and resize to ``size`` x ``size`` x 3.

    ``fit``: ``stretch`` squashes the crop into the square (the original behaviour: older models
    were trained so); ``pad`` keeps its aspect ratio, centred on a neutral background (``pad_to_square``).
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    x0, y0, x1, y1 = box
    roi = window_to_uint8(pixels[y0:y1, x0:x1], low_pct, high_pct)
    if fit == "pad":
        roi = pad_to_square(roi)
    # INTER_AREA averages when shrinking: no aliasing of the trabecular texture.
    resized = cv2.resize(roi, (size, size), interpolation=cv2.INTER_AREA)
    return np.repeat(resized[:, :, None], 3, axis=2)


def preprocess_scan(
    pixels: np.ndarray,
    sizes: list[int],
    given_box: Box | None = None,
    margin: float = 0.05,
    low_pct: float = 1.0,
    high_pct: float = 99.0,
    fit: str = "stretch",
) -> tuple[RoiChoice, dict[int, np.ndarray]]:
    """Grayscale scan -> (ROI used, {size: uint8 HxWx3 array}) for every requested size."""
    choice = choose_roi(pixels, given_box, margin)
    return choice, {s: crop_resize(pixels, choice.box, s, low_pct, high_pct, fit) for s in sizes}


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scale_images(images: Any) -> Any:
    """Pixel scaling the models expect: [0, 255] -> [0, 1] float32, as a ``tf.Tensor`` (training
    streams and the served model both call it, so they cannot disagree)."""
    import tensorflow as tf  # here, not at module level: roi_resize and `kedro` commands never need it

    return tf.cast(images, tf.float32) / 255.0
