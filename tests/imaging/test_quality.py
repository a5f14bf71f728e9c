"""The degenerate-image check: too small, too elongated or without dynamic range."""

from __future__ import annotations

import numpy as np
import pytest

from osteo_pipeline.imaging.quality import degenerate_reason

LIMITS = {"min_side": 16, "max_aspect": 8.0, "min_dynamic_range": 0.05}
RNG = np.random.default_rng(3)


@pytest.mark.parametrize(
    ("pixels", "starts"),
    [
        (np.zeros((1, 1), np.uint8), "too small: 1x1"),
        (RNG.integers(0, 256, (5000, 20), dtype=np.uint8), "too elongated: 20x5000, aspect ratio 250.0"),
        (np.zeros((64, 64), np.uint8), "no dynamic range: values 0-0"),
        (np.full((64, 64), 255, np.uint8), "no dynamic range: values 255-255"),
        (np.full((64, 64), 65535, np.uint16), "no dynamic range: values 65535-65535"),
        (np.full((64, 64), 128, np.uint8), "no dynamic range"),
        # Flat with a few dead/hot pixels: max-min is full scale, the robust range is not.
        (np.where(RNG.random((64, 64)) < 0.005, 255, 120).astype(np.uint8), "no dynamic range: values 120-255"),
        # Nearly flat 16-bit data: 30000 +- 20 of a 15-bit scale.
        (RNG.integers(29980, 30020, (64, 64)).astype(np.uint16), "no dynamic range"),
    ],
    ids=["1x1", "sliver", "black", "white", "white16", "flat", "flat-with-outliers", "flat16"],
)
def test_degenerate_images_are_named_with_the_reason(pixels, starts):
    reason = degenerate_reason(pixels, **LIMITS)
    assert reason is not None and reason.startswith(starts), reason
    assert "ingest.degenerate." in reason


@pytest.mark.parametrize(
    "pixels",
    [
        RNG.integers(0, 256, (20, 30), dtype=np.uint8),
        RNG.integers(0, 4096, (300, 200), dtype=np.uint16),  # 12-bit data in a 16-bit file
        np.tile(np.linspace(0, 60, 128, dtype=np.uint8), (16, 1)),  # low contrast, 16 px tall, aspect 8
    ],
    ids=["small-noise", "12-bit-in-16", "low-contrast-at-the-limits"],
)
def test_plausible_images_pass(pixels):
    assert degenerate_reason(pixels, **LIMITS) is None
