"""Image + clinical fusion: the label-leak guard, covariates, fold-local imputation and scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.models.fusion import (
    LabelLeakError,
    apply_preprocessing,
    build_fusion_head,
    check_covariates,
    clinical_table,
    fit_preprocessing,
    image_features,
    joined_table,
    single_covariate_auc,
)


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


def test_imputation_and_scaling_are_fitted_on_the_training_rows_only(manifest):
    table = clinical_table(manifest, ["a", "b", "c", "d"], ["age", "bmi"])
    fit_rows = np.array([True, True, True, False])
    state = fit_preprocessing(table[fit_rows])
    assert state["fill"] == [65.0, 22.5]  # medians of a, b, c: the held-out row d plays no part
    assert state["n_missing"] == {"age": 1, "bmi": 1}
    x = apply_preprocessing(table, state)
    assert x.dtype == np.float32 and not np.isnan(x).any()
    np.testing.assert_allclose(x[:3].mean(axis=0), 0.0, atol=1e-6)  # standardised on the fit rows
    changed = table.copy()
    changed.loc["d", "age"] = 1000.0  # a validation row cannot move the statistics
    assert fit_preprocessing(changed[fit_rows]) == state
    with pytest.raises(ValueError, match="columns"):
        apply_preprocessing(table[["bmi", "age"]], state)


def test_image_features_come_from_the_requested_model_only():
    table = pd.DataFrame({
        "scan_id": ["a", "b", "a", "b", "a", "b", "t"],
        "source": ["fold", "fold", "fold", "fold", "final", "final", "final"],
        "fold": [0, 0, 1, 1, -1, -1, -1],
        "learning_rate": [1e-3] * 4 + [np.nan] * 3,
        "f0": [0.0, 0.1, 1.0, 1.1, 9.0, 9.1, 9.9],
        "f1": [0.0] * 7,
    })
    fold1 = image_features(table, ["b", "a"], source="fold", fold=1)
    assert list(fold1.columns) == ["f0", "f1"] and fold1["f0"].tolist() == [1.1, 1.0]
    assert image_features(table, ["t"], source="final")["f0"].tolist() == [9.9]
    with pytest.raises(ValueError, match="fold 0 model"):
        image_features(table, ["t"], source="fold", fold=0)
    joined = joined_table(fold1, pd.DataFrame({"age": [1.0, 2.0]}, index=pd.Index(["b", "a"], name="scan_id")))
    assert list(joined.columns) == ["f0", "f1", "age"]


def test_single_covariate_auc_and_the_head():
    labels = np.array([0, 0, 1, 1, 1])
    assert single_covariate_auc(np.array([0, 0, 1, 1, np.nan]), labels, ["normal", "osteoporosis"]) == 1.0
    assert np.isnan(single_covariate_auc(np.array([1, 1, 1]), np.array([1, 1, 1]), ["normal", "osteoporosis"]))
    model = build_fusion_head((68,), 3)
    assert model.output_shape == (None, 3) and model.layers[-1].name == "class_probs"
