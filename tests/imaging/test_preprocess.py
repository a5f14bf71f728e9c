import numpy as np
import pytest

from osteo_pipeline.imaging.preprocess import box_iou, choose_roi, clip_box, crop_resize, preprocess_scan, window_to_uint8


def test_window_ignores_outliers_and_uses_full_range():
    rng = np.random.default_rng(0)
    img = rng.normal(30000, 2000, (200, 100)).astype(np.uint16)
    img[0, 0] = 65535  # a burned-in marker must not squeeze the bone into a few grey levels
    out = window_to_uint8(img, 1, 99)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert 100 < np.median(out) < 155


def test_window_of_flat_image_is_zero_not_nan():
    assert not window_to_uint8(np.full((10, 10), 7, np.uint16)).any()


def test_box_helpers():
    assert clip_box((-5, -5, 50, 500), 40, 100) == (0, 0, 40, 100)
    assert clip_box((50, 50, 60, 60), 40, 40) is None
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0


def test_given_box_wins_and_crop_is_uint8_three_channel():
    img = np.zeros((400, 200), np.uint16)
    img[100:300, 50:150] = np.arange(100, dtype=np.uint16) * 300  # a bright gradient block
    choice, arrays = preprocess_scan(img, [150, 300], given_box=(50, 100, 150, 300))
    assert choice.source == "csv" and choice.box == (50, 100, 150, 300)
    assert arrays[150].shape == (150, 150, 3) and arrays[300].shape == (300, 300, 3)
    assert arrays[150].dtype == np.uint8
    assert (arrays[150][..., 0] == arrays[150][..., 2]).all()
    # the gradient survives as a left-to-right ramp
    row = arrays[150][75, :, 0].astype(int)
    assert row[-5] > row[5]


def test_featureless_image_falls_back_to_whole_image():
    img = np.zeros((300, 160), np.uint8)
    choice = choose_roi(img, None, margin=0.05)
    assert choice.source == "whole" and choice.box == (0, 0, 160, 300)
    assert crop_resize(img, choice.box, 150, 1, 99).shape == (150, 150, 3)
