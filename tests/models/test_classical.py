"""SVM / Random-Forest baselines: handcrafted features, in-fold scaling, CV on predefined folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from osteo_pipeline.models.classical import (
    handcrafted_features,
    make_classifier,
    make_image_classifier,
    setting_label,
)
from osteo_pipeline.training.classical import cross_validate_setting

GRIDS = {
    "svm": {"C": [0.1, 1.0, 10.0], "gamma": ["scale"]},
    "random_forest": {"n_estimators": [50], "max_depth": [2, None]},
}


def _texture_images(
    n_per_class: int, blur: tuple[float, ...], seed: int, size: int = 48
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images whose classes differ only in texture (noise blurred by ``blur[k]``),
    each rescaled to the same mean and spread so intensity alone cannot separate them."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k, sigma in enumerate(blur):
        for _ in range(n_per_class):
            field = rng.normal(size=(size, size))
            field = ndimage.gaussian_filter(field, sigma) if sigma else field
            field = (field - field.mean()) / field.std()
            images.append(np.clip(128 + 30 * field, 0, 255).astype(np.uint8))
            labels.append(k)
    gray = np.stack(images)
    return np.repeat(gray[..., None], 3, axis=-1), np.asarray(labels)


BINARY = ("normal", "osteoporosis")


@pytest.fixture(scope="module")
def binary_texture() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Smooth (class 0, normal) vs noisy (class 1, osteoporosis) images, in 3 interleaved folds."""
    images, y = _texture_images(15, (3.0, 0.0), seed=0)
    folds = np.arange(len(y)) % 3
    return handcrafted_features(images), y, folds


def test_features_named_finite_and_deterministic() -> None:
    images, _ = _texture_images(3, (2.0, 0.0), seed=1)
    feats = handcrafted_features(images)
    assert feats.shape[0] == 6 and feats.columns.is_unique
    assert not feats.isna().any().any()
    for prefix in ("int_", "hist_", "glcm_contrast_d1", "glcm_correlation", "lbp8r1_", "lbp16r2_"):
        assert any(c.startswith(prefix) for c in feats.columns), prefix
    pd.testing.assert_frame_equal(feats, handcrafted_features(images))
    pd.testing.assert_frame_equal(feats, handcrafted_features(images[..., 0]))  # channel 0 is the grayscale
    # histograms are distributions
    for prefix in ("hist_", "lbp8r1_", "lbp16r2_"):
        assert feats.filter(like=prefix).sum(axis=1).to_numpy() == pytest.approx(1.0)


def test_features_of_a_constant_image_have_no_nan() -> None:
    feats = handcrafted_features(np.full((2, 32, 32), 90, dtype=np.uint8))
    assert not feats.isna().any().any()


def test_features_refuse_non_uint8_input() -> None:
    with pytest.raises(TypeError):
        handcrafted_features(np.zeros((1, 16, 16), dtype=np.float32))


@pytest.mark.parametrize("kind", ["svm", "random_forest"])
def test_both_classifiers_separate_textures(kind: str, binary_texture) -> None:
    feats, y, folds = binary_texture
    params = {"C": 1.0} if kind == "svm" else {"n_estimators": 50}
    fits = cross_validate_setting(feats, y, folds, kind, params, BINARY, seed=0)
    assert [f.fold for f in fits] == [0, 1, 2]
    for fit in fits:
        assert set(fit.metrics) == {"accuracy", "precision", "recall", "specificity", "f1", "auc", "loss"}
        assert fit.metrics["auc"] > 0.9 and fit.metrics["loss"] > 0 and fit.seconds > 0
        np.testing.assert_array_equal(np.sort(fit.val_idx), np.flatnonzero(folds == fit.fold))


def test_three_classes_use_ovr_auc() -> None:
    images, y = _texture_images(10, (3.0, 1.0, 0.0), seed=2)
    folds = np.arange(len(y)) % 3
    fits = cross_validate_setting(handcrafted_features(images), y, folds, "random_forest", {"n_estimators": 50},
                                  ("normal", "osteopenia", "osteoporosis"), seed=0)
    assert np.mean([f.metrics["auc"] for f in fits]) > 0.8


def test_imputation_and_scaling_are_fitted_on_each_folds_training_rows(binary_texture) -> None:
    feats, y, folds = binary_texture
    feats = feats.copy()
    feats.iloc[::4, 0] = np.nan  # gaps for the imputer
    for fit in cross_validate_setting(feats, y, folds, "svm", {"C": 1.0}, BINARY, seed=0):
        train = feats[folds != fit.fold]
        imputer, scaler = fit.fitted.named_steps["impute"], fit.fitted.named_steps["scale"]
        assert imputer.statistics_[0] == pytest.approx(np.nanmedian(train.iloc[:, 0]))
        assert scaler.mean_ == pytest.approx(train.fillna(train.median()).mean().to_numpy())
        assert scaler.n_samples_seen_ == len(train)


def test_a_fold_without_every_class_is_refused(binary_texture) -> None:
    feats, y, _ = binary_texture
    folds = np.where(y == 1, 0, np.arange(len(y)) % 2 + 1)  # fold 0 holds every osteoporosis scan
    with pytest.raises(ValueError, match="every class"):
        cross_validate_setting(feats, y, folds, "random_forest", {"n_estimators": 10}, BINARY)


def test_image_classifier_computes_the_features_itself() -> None:
    images, y = _texture_images(8, (3.0, 0.0), seed=3)
    on_images = make_image_classifier("random_forest", {"n_estimators": 20}, seed=0).fit(images, y)
    on_features = make_classifier("random_forest", {"n_estimators": 20}, seed=0).fit(handcrafted_features(images), y)
    np.testing.assert_allclose(on_images.predict_proba(images[:5]), on_features.predict_proba(handcrafted_features(images[:5])))
    assert setting_label({"gamma": "scale", "C": 10.0, "max_depth": None}) == "C=10, gamma=scale, max_depth=None"


def test_make_classifier_kinds_and_params() -> None:
    svm = make_classifier("svm", {"C": 3.0}, seed=1)
    assert [name for name, _ in svm.steps] == ["impute", "scale", "model"]
    svc = svm.named_steps["model"].estimator  # Platt-calibrated, as SVC(probability=True) was
    assert (svc.C, svc.kernel, svc.class_weight) == (3.0, "rbf", "balanced")
    forest = make_classifier("random_forest", {"max_depth": 4}, seed=1).named_steps["model"]
    assert (forest.max_depth, forest.class_weight, forest.random_state) == (4, "balanced", 1)
    with pytest.raises(ValueError):
        make_classifier("knn", {}, seed=0)  # type: ignore[arg-type]


def test_svm_calibrates_when_a_class_has_fewer_scans_than_calibration_folds():
    """A small fold (3 scans of one class) must not stop the SVM; with enough scans it is plain cv=5."""
    from sklearn.model_selection import StratifiedKFold

    from osteo_pipeline.models.classical import CalibrationFolds, make_classifier

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(13, 4)), columns=list("abcd"))
    y = np.array([0] * 10 + [1] * 3)
    fitted = make_classifier("svm", seed=0).fit(x, y)
    assert fitted.predict_proba(x).shape == (13, 2)
    y_big = np.array([0, 1] * 10)
    ours = [(list(a), list(b)) for a, b in CalibrationFolds(5).split(np.zeros(20), y_big)]
    plain = [(list(a), list(b)) for a, b in StratifiedKFold(5).split(np.zeros(20), y_big)]
    assert ours == plain and CalibrationFolds(5).get_n_splits(y=y) == 3
