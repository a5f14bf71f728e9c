"""The served model's preprocessing settings: ingest's limits travel with the model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from osteo_pipeline.imaging.decode import ScanDecodeError
from osteo_pipeline.serving.preprocessing import ScanPreprocessing, preprocessing_settings

ROI = {"margin": 0.05, "low_percentile": 1.0, "high_percentile": 99.0}
INGEST = {"max_pixels": 50_000_000, "degenerate": {"min_side": 16, "max_aspect": 8, "min_dynamic_range": 0.05}}


def test_a_degenerate_scan_is_refused_like_ingest_refuses_it():
    prep = ScanPreprocessing.from_params(preprocessing_settings(ROI, INGEST), size=32)
    black = cv2.imencode(".png", np.zeros((300, 200), np.uint8))[1].tobytes()
    with pytest.raises(ScanDecodeError, match="black.png: degenerate image, not a radiograph: no dynamic range") as err:
        prep.model_input(black, "black.png")
    assert err.value.code == "degenerate"
    ramp = cv2.imencode(".png", np.tile(np.arange(200, dtype=np.uint8), (300, 1)))[1].tobytes()
    image, _ = prep.model_input(ramp, "ramp.png")
    assert image.shape == (32, 32, 3)


def test_a_model_logged_before_the_degenerate_limits_still_loads():
    old = {"size": 150, **ROI, "max_pixels": 50_000_000}  # a logged model's config from before
    assert ScanPreprocessing.from_dict(old).degenerate is None
    with pytest.raises(ValueError, match=r"missing \['max_pixels'\]"):
        ScanPreprocessing.from_dict({"size": 150, **ROI})
