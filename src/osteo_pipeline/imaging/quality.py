"""Is a decoded scan usable at all? A pure check on the pixels, used by ingest."""

from __future__ import annotations

import numpy as np

# Percentiles of the "robust" range: a few hot or dead pixels do not make a flat image usable.
_ROBUST_PERCENTILES = (1, 99)
_SAMPLE_PIXELS = 250_000  # the range is estimated on a regular subsample of about this many pixels


def degenerate_reason(pixels: np.ndarray, min_side: int, max_aspect: float, min_dynamic_range: float) -> str | None:
    """Why a 2-D grayscale scan cannot be a radiograph, or None when it can.

    Too small (a side under ``min_side``), too elongated (long/short side over ``max_aspect``)
    or without dynamic range: the 1st-99th percentile range, as a fraction of the image's
    effective full scale (2**bits - 1, bits from its brightest pixel, at least 8, so 12-bit
    data in a 16-bit file counts as 12-bit), under ``min_dynamic_range``. All-black,
    all-white and flat images have a range of 0.
    """
    height, width = pixels.shape[:2]
    if min(width, height) < min_side:
        return f"too small: {width}x{height}, a side under ingest.degenerate.min_side = {min_side}"
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        return f"too elongated: {width}x{height}, aspect ratio {aspect:.1f} over ingest.degenerate.max_aspect = {max_aspect}"
    step = max(1, int(np.sqrt(pixels.size / _SAMPLE_PIXELS)))
    sample = pixels[::step, ::step]
    top = max(8, int(sample.max()).bit_length())
    full_scale = float((1 << top) - 1)
    low, high = np.percentile(sample, _ROBUST_PERCENTILES)
    spread = (float(high) - float(low)) / full_scale
    if spread < min_dynamic_range:
        return (f"no dynamic range: values {int(sample.min())}-{int(sample.max())}, 1st-99th percentile range "
                f"{spread:.3f} of full scale, under ingest.degenerate.min_dynamic_range = {min_dynamic_range}")
    return None
