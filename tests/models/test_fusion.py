"""Image + clinical fusion: the label-leak guard, covariates, fold-local imputation and scaling."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.models.cnn21 import build_cnn21
from osteo_pipeline.models.fusion import (
    HEAD_NAME,
    PREPROCESSING_NAME,
    LabelLeakError,
    apply_preprocessing,
    build_fusion_head,
    build_fusion_network,
    check_covariates,
    clinical_table,
    fit_preprocessing,
    image_features,
    joined_table,
    preprocessing_state,
    resolve_covariates,
)
from osteo_pipeline.training.features import embedding_model
from osteo_pipeline.training.fusion import covariate_aucs, dominant_covariate_warnings, single_covariate_auc


@pytest.mark.parametrize("covariates, leak", [
    (["age", "t_score"], "t_score"),
    (["bmd"], "bmd"),
    (["sex", "Z-Score"], "Z-Score"),
    (["age", "BMD_L1_L4"], "BMD_L1_L4"),
])
def test_label_defining_covariates_are_refused_by_name(covariates, leak):
    with pytest.raises(LabelLeakError, match=leak) as error:
        check_covariates(covariates)
    assert "define the label" in str(error.value)


def test_clinical_covariates_are_accepted():
    assert check_covariates(["age", "sex", "bmi", "fracture_history"]) == ["age", "sex", "bmi", "fracture_history"]
    with pytest.raises(ValueError):
        check_covariates([])


@pytest.fixture
def manifest():
    return pd.DataFrame({
        "scan_id": ["a", "b", "c", "d"],
        "age": [60, np.nan, 70, 50],
        "sex": ["F", "M", "male", "?"],
        "bmi": [20.0, 25.0, np.nan, 22.0],
        "fracture_history": [0, 1, 1, 0],
        "t_score": [-1.0, -3.0, -2.8, 0.1],
    })


def test_clinical_table_encodes_sex_and_keeps_missing_values(manifest):
    table = clinical_table(manifest, ["d", "a", "b"], ["age", "sex", "bmi"])
    assert list(table.index) == ["d", "a", "b"]
    np.testing.assert_array_equal(table["sex"].to_numpy(), [np.nan, 0.0, 1.0])
    assert np.isnan(table.loc["b", "age"])
    with pytest.raises(LabelLeakError):
        clinical_table(manifest, ["a"], ["t_score"])


def test_missing_covariates_are_dropped_with_a_reason_or_refused(manifest):
    used, dropped = resolve_covariates(manifest.assign(bmi=np.nan), ["age", "bmi", "smoker"])
    assert used == ["age"]
    assert dropped == {"bmi": "empty for every scan", "smoker": "not a column of the scan manifest"}
    with pytest.raises(ValueError, match="smoker"):
        resolve_covariates(manifest, ["age", "smoker"], on_missing="error")
    with pytest.raises(ValueError, match="no fusion covariate"):
        resolve_covariates(manifest, ["smoker"])
    with pytest.raises(LabelLeakError, match="bmd"):  # the leak guard comes first
        resolve_covariates(manifest, ["age", "bmd"])


def test_imputation_and_scaling_are_fitted_on_the_training_rows_only(manifest):
    table = clinical_table(manifest, ["a", "b", "c", "d"], ["age", "bmi"])
    fit_rows = np.array([True, True, True, False])
    fitted = fit_preprocessing(table[fit_rows])
    state = preprocessing_state(fitted, table[fit_rows])
    assert state["fill"] == [65.0, 22.5]  # medians of a, b, c: the held-out row d plays no part
    assert state["n_missing"] == {"age": 1, "bmi": 1} and state["n_fit_rows"] == 3
    x = apply_preprocessing(table, fitted)
    assert x.dtype == np.float32 and not np.isnan(x).any()
    np.testing.assert_allclose(x[:3].mean(axis=0), 0.0, atol=1e-6)  # standardised on the fit rows
    changed = table.copy()
    changed.loc["d", "age"] = 1000.0  # a validation row cannot move the statistics
    assert preprocessing_state(fit_preprocessing(changed[fit_rows])) == preprocessing_state(fitted)
    with pytest.raises(ValueError, match="columns"):
        apply_preprocessing(table[["bmi", "age"]], fitted)


def test_image_features_come_from_the_requested_fold_model_only():
    table = pd.DataFrame({
        "scan_id": ["a", "b", "a", "b", "a", "b"],
        "learning_rate": [1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4],
        "fold": [0, 0, 1, 1, 1, 1],
        "f00": [0.0, 0.1, 1.0, 1.1, 5.0, 5.1],
        "f01": [0.0] * 6,
    })
    fold1 = image_features(table, ["b", "a"], learning_rate=1e-3, fold=1)
    assert list(fold1.columns) == ["f00", "f01"] and fold1["f00"].tolist() == [1.1, 1.0]
    assert image_features(table, ["a"], learning_rate=1e-4, fold=1)["f00"].tolist() == [5.0]
    with pytest.raises(ValueError, match="fold 0 model at learning rate 0.0001"):
        image_features(table, ["a"], learning_rate=1e-4, fold=0)
    joined = joined_table(fold1, pd.DataFrame({"age": [1.0, 2.0]}, index=pd.Index(["b", "a"], name="scan_id")))
    assert list(joined.columns) == ["f00", "f01", "age"]
    with pytest.raises(ValueError, match="same scans"):
        joined_table(fold1, pd.DataFrame({"age": [1.0, 2.0]}, index=pd.Index(["a", "b"])))


def test_saved_network_reproduces_the_training_input_and_survives_saving(tmp_path, manifest):
    cnn = build_cnn21((98, 98, 3), 2)
    images = np.random.default_rng(0).random((4, 98, 98, 3), dtype=np.float32)
    covariates = clinical_table(manifest, ["a", "b", "c", "d"], ["age", "sex", "bmi"])
    features = pd.DataFrame(np.asarray(embedding_model(cnn)([images])), index=covariates.index).add_prefix("f")
    table = joined_table(features, covariates)
    fitted = fit_preprocessing(table.iloc[:3])
    network = build_fusion_network([(98, 98, 3), (3,)], 2, image_model=cnn, hidden_units=4)
    network.get_layer(PREPROCESSING_NAME).set_state(preprocessing_state(fitted))
    head = network.get_layer(HEAD_NAME)
    expected = head.predict(apply_preprocessing(table, fitted), verbose=0)  # NaNs imputed by sklearn
    inputs = {"image": images, "covariates": covariates.to_numpy(np.float32)}  # raw, NaNs included
    np.testing.assert_allclose(network.predict(inputs, verbose=0), expected, atol=1e-5)
    network.save(tmp_path / "fusion.keras")
    reloaded = keras.models.load_model(tmp_path / "fusion.keras")
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), expected, atol=1e-5)
    assert not network.get_layer("cnn21_features").trainable  # the image branch is frozen


def test_a_covariate_that_nearly_determines_the_label_is_warned_about():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    folds = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    clinical = pd.DataFrame({
        "fracture_history": labels.astype(float),     # recruited by it: separates perfectly
        "age": [60, 70, 65, 62, 71, 66, 64, 61.0],     # barely informative
        "bmi": [30, 29, 28, 20, 21, 22, 27, np.nan],   # inversely separating: direction does not matter
    })
    aucs = covariate_aucs(clinical, labels, folds, ["normal", "osteoporosis"])
    assert aucs["fracture_history"]["auc"] == 1.0 and aucs["fracture_history"]["val_auc_mean"] == 1.0
    assert aucs["bmi"]["auc"] == 0.0 and aucs["bmi"]["separability"] == 1.0
    warnings = dominant_covariate_warnings(aucs, 0.9, fusion_val_auc=0.95)
    assert [w.split()[0] for w in warnings] == ["fracture_history", "bmi"]
    assert "0.950" in warnings[0] and "recruited" in warnings[0]
    assert dominant_covariate_warnings(aucs, 1.01, fusion_val_auc=None) == []


def test_single_covariate_auc_and_the_head():
    labels = np.array([0, 0, 1, 1, 1])
    assert single_covariate_auc(np.array([0, 0, 1, 1, np.nan]), labels, ["normal", "osteoporosis"]) == 1.0
    assert np.isnan(single_covariate_auc(np.array([1, 1, 1]), np.array([1, 1, 1]), ["normal", "osteoporosis"]))
    model = build_fusion_head((68,), 3)
    assert model.output_shape == (None, 3) and model.layers[-1].name == "class_probs" and model.name == HEAD_NAME
