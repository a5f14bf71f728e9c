"""SVM / Random-Forest baselines: handcrafted features, in-fold scaling, CV on predefined folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.preprocessing import StandardScaler

from osteo_pipeline.models.classical import (
    FOLD_COLUMNS,
    cross_validate_classical,
    handcrafted_features,
    make_classifier,
)

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


@pytest.fixture(scope="module")
def binary_texture() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Smooth (label 'normal') vs noisy ('osteoporosis') images, in 3 interleaved folds."""
    images, y = _texture_images(15, (3.0, 0.0), seed=0)
    labels = np.asarray(["normal", "osteoporosis"])[y]
    folds = np.arange(len(y)) % 3
    return handcrafted_features(images), labels, folds


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
    feats, labels, folds = binary_texture
    best, table, final = cross_validate_classical(feats, labels, folds, kind, GRIDS[kind], seed=0)
    assert set(best) == set(GRIDS[kind])
    assert list(table.columns) == list(FOLD_COLUMNS)
    assert table["fold"].tolist() == [0, 1, 2]
    assert (table["val_auc"] > 0.9).all()
    assert table.notna().all().all()
    # the final pipeline is refitted on every training scan
    assert final.named_steps["scale"].n_samples_seen_ == len(labels)
    assert final.named_steps["scale"].mean_ == pytest.approx(feats.mean().to_numpy())


def test_three_classes_use_ovr_auc() -> None:
    images, y = _texture_images(10, (3.0, 1.0, 0.0), seed=2)
    labels = np.asarray(["normal", "osteopenia", "osteoporosis"])[y]
    folds = np.arange(len(y)) % 3
    _, table, final = cross_validate_classical(
        handcrafted_features(images), labels, folds, "random_forest", GRIDS["random_forest"], seed=0
    )
    assert list(final.classes_) == ["normal", "osteopenia", "osteoporosis"]
    assert table["val_auc"].mean() > 0.8


def test_scaler_is_fitted_on_training_rows_only(binary_texture, monkeypatch) -> None:
    feats, labels, folds = binary_texture
    seen: list[np.ndarray] = []
    original_fit = StandardScaler.fit

    def spy(self, X, *args, **kwargs):  # record what every scaler in every fit is shown
        seen.append(np.asarray(X).mean(axis=0))
        return original_fit(self, X, *args, **kwargs)

    monkeypatch.setattr(StandardScaler, "fit", spy)
    cross_validate_classical(feats, labels, folds, "svm", {"C": [1.0]}, seed=0)

    x = feats.to_numpy()
    fold_means = [x[folds != k].mean(axis=0) for k in range(3)]
    allowed = [*fold_means, x.mean(axis=0)]  # in-fold fits, plus the final fit on all training scans
    assert seen and all(any(np.allclose(m, a) for a in allowed) for m in seen)
    assert all(any(np.allclose(m, f) for m in seen) for f in fold_means)


def test_make_classifier_kinds_and_params() -> None:
    svm = make_classifier("svm", {"C": 3.0}, seed=1)
    assert [name for name, _ in svm.steps] == ["impute", "scale", "model"]
    svc = svm.named_steps["model"].estimator  # Platt-calibrated, as SVC(probability=True) was
    assert (svc.C, svc.kernel, svc.class_weight) == (3.0, "rbf", "balanced")
    forest = make_classifier("random_forest", {"max_depth": 4}, seed=1).named_steps["model"]
    assert (forest.max_depth, forest.class_weight, forest.random_state) == (4, "balanced", 1)
    with pytest.raises(ValueError):
        make_classifier("knn", {}, seed=0)  # type: ignore[arg-type]
