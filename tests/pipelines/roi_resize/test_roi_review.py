"""roi_resize: ROI confidence, the review table and sheet, user corrections, and the fit option."""

from __future__ import annotations

import logging

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.imaging.preprocess import crop_resize, pad_to_square
from osteo_pipeline.imaging.roi import detect_spine_roi_scored
from osteo_pipeline.pipelines.roi_resize.nodes import (
    RoiCorrectionError,
    collect_model_inputs,
    crop_and_resize,
    read_roi_corrections,
    roi_review,
)
from osteo_pipeline.serving.preprocessing import ScanPreprocessing, preprocessing_settings

PARAMS = {"size_cnn21": 32, "size_baselines": 48, "use_roi_csv": True, "measure_auto_roi": False, "margin": 0.05,
          "low_percentile": 1.0, "high_percentile": 99.0, "fit": "stretch", "shard_scans": 2,
          "corrections": {"file": "roi_corrections.csv", "on_invalid": "error"},
          "review": {"threshold": 0.5, "sheet_max": 4, "sheet_columns": 4, "thumb_height": 64}}


def spine(seed: int, height: int = 240, width: int = 160) -> np.ndarray:
    """uint8 schematic AP spine: L1-L4 whole, T12 and L5 cut by the top and bottom borders, on soft tissue."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 60.0) + rng.normal(0, 4, (height, width))
    pitch, cx = height // 5, width // 2
    for k in range(6):
        top = k * pitch - pitch // 3
        img[max(0, top):max(0, top + 2 * pitch // 3), cx - width // 7:cx + width // 7] = 170
    return np.clip(img, 0, 255).astype(np.uint8)


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture()
def folder() -> dict:
    """Three scans (two spines, one flat: whole-image fallback), as the catalog hands them to roi_resize."""
    # Raw names carry patient ids (as real exports do); outputs must name scans by file_ref only.
    images = {"2144650_a.png": spine(0), "2144651_b.png": spine(1),
              "2144652_flat.png": np.full((240, 160), 90, np.uint8)}
    refs = dict(zip(images, ["f-aaaaaa.png", "f-bbbbbb.png", "f-ffffff.png"]))
    manifest = pd.DataFrame({"scan_id": [f"s{i}" for i in range(3)], "file_ref": list(refs.values()),
                             "label": "normal", "width": 160, "height": 240})
    index = pd.DataFrame({"file_ref": list(refs.values()), "source": list(refs)})
    raw = {name: (lambda data=png(img): data) for name, img in images.items()}
    return {"raw": raw, "manifest": manifest, "index": index}


def corrections(raw: dict, text: str) -> dict:
    return {**raw, "roi_corrections.csv": lambda: text.encode()}


def test_confidence_is_high_on_a_spine_and_zero_without_one():
    found = detect_spine_roi_scored(spine(0))
    assert found.box is not None and 0.8 <= found.confidence <= 1.0 and set(found.scores) >= {"bodies", "contrast"}
    none = detect_spine_roi_scored(np.full((240, 160), 90, np.uint8))
    assert none.box is None and none.confidence == 0.0 and none.reason


def test_review_lists_fallbacks_with_reason_and_draws_the_weakest(folder):
    table, small, large = collect_model_inputs(crop_and_resize(folder["raw"], folder["manifest"], folder["index"], PARAMS, 10**8))
    assert list(table.roi_source) == ["auto", "auto", "whole"] and small["images"].shape == (3, 32, 32, 3)
    assert table.confidence.iloc[:2].min() >= 0.8 and table.confidence.iloc[2] == 0.0
    review, sheet = roi_review(table, folder["manifest"], folder["raw"], folder["index"], PARAMS["review"], 10**8)
    assert list(review.file_ref) == ["f-ffffff.png"]  # the whole-image fallback, always; the good boxes are not listed
    assert review.reason.iloc[0].startswith("whole image used") and review.width.iloc[0] == 160
    assert not review.astype(str).apply(lambda c: c.str.contains("21446")).any().any()  # never a raw path
    assert isinstance(sheet, plt.Figure) and len([a for a in sheet.axes if a.images]) == 3
    plt.close(sheet)
    strict, _ = roi_review(table, folder["manifest"], folder["raw"], folder["index"],
                           {**PARAMS["review"], "threshold": 1.01}, 10**8)
    assert len(strict) == 3 and strict.confidence.is_monotonic_increasing  # weakest first
    plt.close("all")


def test_corrected_boxes_win_and_round_trip_through_the_review(folder):
    table, *_ = collect_model_inputs(crop_and_resize(folder["raw"], folder["manifest"], folder["index"], PARAMS, 10**8))
    review, _ = roi_review(table, folder["manifest"], folder["raw"], folder["index"], PARAMS["review"], 10**8)
    plt.close("all")
    review[["x0", "y0", "x1", "y1"]] = [40, 30, 120, 210]  # the person draws the right box...
    raw = corrections(folder["raw"], review.to_csv(index=False))  # ...and passes the review back
    table2, small2, _ = collect_model_inputs(crop_and_resize(raw, folder["manifest"], folder["index"], PARAMS, 10**8))
    row = table2.set_index("file_ref").loc["f-ffffff.png"]
    assert row.roi_source == "corrected" and (row.x0, row.y0, row.x1, row.y1) == (40, 30, 120, 210)
    assert list(table2.roi_source[:2]) == ["auto", "auto"]


@pytest.mark.parametrize(("row", "why"), [
    ("f-999999.png,1,1,20,20", "unknown file_ref"),
    ("f-aaaaaa.png,10,10,10,50", "empty box"),
    ("f-aaaaaa.png,0,0,161,240", "outside the 160x240 image"),
    ("f-aaaaaa.png,0,0,x,9", "whole numbers"),
    ("f-aaaaaa.png,0,0,10", "whole numbers"),
])
def test_invalid_correction_rows_are_named_never_ignored(folder, row, why, caplog):
    text = f"file_ref,x0,y0,x1,y1,reason\nf-bbbbbb.png,1,1,50,60,ok\n{row}\n"
    with pytest.raises(RoiCorrectionError, match=rf"roi_corrections\.csv line 3 \(file_ref f-\w+\.png\): .*{why}"):
        read_roi_corrections(text.encode(), "roi_corrections.csv", folder["manifest"])
    with caplog.at_level(logging.WARNING):
        boxes = read_roi_corrections(text.encode(), "roi_corrections.csv", folder["manifest"], on_invalid="warn")
    assert boxes == {"f-bbbbbb.png": (1, 1, 50, 60)} and "roi_corrections.csv line 3" in caplog.text
    leaky = "file_ref,x0,y0,x1,y1\nnormal/2144650_study1.png,1,1,20,20\n"  # a raw name typed in: never echoed
    with pytest.raises(RoiCorrectionError, match="line 2 .*not a file_ref.*unknown file_ref") as err:
        read_roi_corrections(leaky.encode(), "roi_corrections.csv", folder["manifest"])
    assert "2144650" not in str(err.value)
    with pytest.raises(RoiCorrectionError, match="lacks the column"):
        read_roi_corrections(b"file,x0\n", "roi_corrections.csv", folder["manifest"])


def test_a_bad_corrections_file_stops_the_run(folder):
    raw = corrections(folder["raw"], "file_ref,x0,y0,x1,y1\nf-aaaaaa.png,50,10,20,100\n")
    with pytest.raises(RoiCorrectionError, match="line 2"):
        collect_model_inputs(crop_and_resize(raw, folder["manifest"], folder["index"], PARAMS, 10**8))


def test_pad_keeps_the_aspect_ratio_on_the_crop_border_grey():
    img = np.full((300, 100), 50, np.uint16)
    img[:, 40:60] = 1000  # a bright vertical bar in the middle of a tall crop
    stretched = crop_resize(img, (0, 0, 100, 300), 60, 1, 99)[..., 0]
    padded = crop_resize(img, (0, 0, 100, 300), 60, 1, 99, fit="pad")[..., 0]
    assert (stretched[:, 24:36] == 255).all()  # squashed: the bar is 12 of 60 columns wide
    bright = np.flatnonzero(padded[30] > 128)
    assert 3 <= bright.size <= 5 and abs(bright.mean() - 29.5) < 1.5  # kept at 1/15 of the width, centred
    assert padded[30, 0] == padded[30, 5] == 0  # padding = the border's (background) grey, not black by accident
    assert pad_to_square(np.zeros((4, 4), np.uint8)).shape == (4, 4)
    with pytest.raises(ValueError, match="fit must be one of"):
        crop_resize(img, (0, 0, 100, 300), 60, 1, 99, fit="squash")


def test_serving_applies_the_fit_the_model_was_trained_with():
    ingest = {"max_pixels": 10**8, "degenerate": {"min_side": 16, "max_aspect": 8, "min_dynamic_range": 0.05}}
    settings = preprocessing_settings({**PARAMS, "fit": "pad"}, ingest)
    pad = ScanPreprocessing.from_params(settings, size=64)
    assert pad.fit == "pad" and ScanPreprocessing.from_dict(pad.to_dict()) == pad
    image, choice = pad.model_input(png(spine(3)))
    assert (image == crop_resize(spine(3), choice.box, 64, 1, 99, fit="pad")).all()
    older = {k: v for k, v in pad.to_dict().items() if k != "fit"}  # a model logged before `fit` existed
    assert ScanPreprocessing.from_dict(older).fit == "stretch"
    with pytest.raises(ValueError, match="fit must be one of"):
        ScanPreprocessing.from_dict({**older, "fit": "crop"})
