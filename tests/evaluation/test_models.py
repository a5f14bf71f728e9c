"""The test partition, each model family's prediction adapter and the predictions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluate_kit import SIZE, tiny_image_model
from osteo_pipeline.evaluation.models import (
    TrainedModel,
    assert_not_trained_on,
    predict_proba,
    predictions_table,
    select_test_set,
)
from osteo_pipeline.core.leakage import LeakageError


def test_test_set_holds_the_test_partition_of_the_scheme_only(cohort):
    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    expected = table[(table.partition == "test") & table.label.isin(["normal", "osteoporosis"])]
    assert sorted(test.scan_ids) == sorted(expected.scan_id) and list(test.scan_ids) == sorted(test.scan_ids)
    assert test.counts["n_excluded_out_of_scheme"] == int(((table.partition == "test") & (table.label == "osteopenia")).sum())
    for size, model_input in inputs.items():  # each row's image is that scan's image, at every size
        where = {s: i for i, s in enumerate(model_input["scan_id"])}
        assert np.array_equal(test.images_at(size), model_input["images"][[where[s] for s in test.scan_ids]])
    truth = expected.set_index("scan_id").loc[test.scan_ids]
    assert list(np.asarray(test.class_names)[test.labels]) == truth.label.tolist()
    assert list(test.patient_ids) == truth.patient_id.tolist()
    assert list(test.manifest.scan_id) == list(test.scan_ids) and "age" in test.manifest
    three = select_test_set(inputs, table, manifest, "three_class")
    assert len(three) == int((table.partition == "test").sum())


def test_evaluate_keys_test_images_by_their_own_size_not_the_dataset_names(cohort):
    """roi_resize.size_cnn21 / size_baselines other than 150 / 300: the model inputs keep their
    catalog names (model_input_150, model_input_300), and evaluate finds each size by its images."""
    from osteo_pipeline.pipelines.evaluate.nodes import select_test_scans

    inputs, table, manifest = cohort
    assert SIZE not in (150, 300)
    test = select_test_scans(inputs[SIZE], inputs[2 * SIZE], table, manifest, "binary")
    assert sorted(test.images) == [SIZE, 2 * SIZE]
    assert test.images_at(SIZE).shape[1:3] == (SIZE, SIZE) and test.images_at(2 * SIZE).shape[1:3] == (2 * SIZE, 2 * SIZE)


def test_a_patient_in_two_partitions_stops_the_evaluation(cohort):
    inputs, table, manifest = cohort
    table.loc[table.index[0], "partition"] = "test"  # p00's first scan moves, its second stays in train
    with pytest.raises(LeakageError, match="more than one partition"):
        select_test_set(inputs, table, manifest, "binary")


def test_a_test_patient_in_the_early_stopping_set_is_a_leak(cohort):
    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    model = TrainedModel("cnn21", "cnn21", None, {"val_patients": [test.patient_ids[0]]})
    with pytest.raises(LeakageError, match="early-stopping"):
        assert_not_trained_on(model, test)


def test_keras_models_get_scaled_images_at_their_own_input_size(cohort):
    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    for size in (SIZE, 2 * SIZE):
        net = tiny_image_model(size)
        proba = predict_proba(TrainedModel("m", "transfer", net, {"class_names": ["normal", "osteoporosis"]}), test)
        direct = net.predict(test.images_at(size).astype(np.float32) / 255.0, verbose=0)
        assert proba == pytest.approx(direct, abs=1e-6) and proba.sum(axis=1) == pytest.approx(1.0)


def test_classical_models_get_uint8_images_and_full_probability_columns(cohort):
    from osteo_pipeline.models.classical import make_image_classifier

    inputs, table, manifest = cohort
    train = table[(table.partition == "train") & (table.label != "osteopenia")]
    where = {s: i for i, s in enumerate(inputs[SIZE]["scan_id"])}
    x = inputs[SIZE]["images"][[where[s] for s in train.scan_id]]
    y = (train.label == "osteoporosis").astype(int).to_numpy()
    fitted = make_image_classifier("random_forest", {"n_estimators": 10}, seed=0).fit(x, y)
    test = select_test_set(inputs, table, manifest, "binary")
    info = {"input": {"dtype": "uint8", "shape": [SIZE, SIZE, 3]}}
    model = TrainedModel("random_forest", "classical", fitted, {"class_names": ["normal", "osteoporosis"]}, baseline_info=info)
    assert predict_proba(model, test) == pytest.approx(fitted.predict_proba(test.images_at(SIZE)))


def test_fusion_gets_images_and_the_named_covariates(cohort):
    import keras

    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    image = keras.Input((SIZE, SIZE, 3), name="image")
    covariates = keras.Input((2,), name="covariates")
    # probabilities that depend on the covariates only (bmi, age): checks the columns and their order
    logits = keras.layers.Dense(2, name="class_probs", activation="softmax", use_bias=False,
                                kernel_initializer=keras.initializers.Constant([[0.0, 0.1], [0.0, -0.05]]))(covariates)
    net = keras.Model([image, covariates], logits)
    info = {"inputs": {"image": {"shape": [SIZE, SIZE, 3]}, "covariates": {"columns": ["bmi", "age"]}}}
    model = TrainedModel("fusion", "fusion", net, {"class_names": ["normal", "osteoporosis"]}, baseline_info=info)
    proba = predict_proba(model, test)
    z = 0.1 * test.manifest["bmi"].to_numpy() - 0.05 * test.manifest["age"].to_numpy()
    assert proba[:, 1] == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-5)


def test_a_model_of_another_label_scheme_is_refused(cohort):
    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    model = TrainedModel("m", "cnn21", tiny_image_model(num_classes=3), {"class_names": ["normal", "osteopenia", "osteoporosis"]})
    with pytest.raises(ValueError, match="trained on classes"):
        predict_proba(model, test)


def test_predictions_table_columns_and_correctness(cohort):
    inputs, table, manifest = cohort
    test = select_test_set(inputs, table, manifest, "binary")
    proba = np.column_stack([np.linspace(0, 1, len(test)), 1 - np.linspace(0, 1, len(test))])
    out = predictions_table("cnn21", test, proba)
    assert list(out.columns) == ["model", "scan_id", "patient_id", "label", "p_normal", "p_osteoporosis", "prediction", "correct"]
    assert (out.prediction == np.where(proba[:, 1] > proba[:, 0], "osteoporosis", "normal")).all()
    assert (out.correct == (out.label == out.prediction)).all()


def test_chosen_fold_metrics_pick_the_final_setting():
    folds = pd.DataFrame({"learning_rate": [1e-3, 1e-3, 1e-4, 1e-4], "fold": [1, 0, 1, 0], "accuracy": [.1, .2, .3, .4]})
    model = TrainedModel("cnn21", "cnn21", None, {}, cv_summary={"best_learning_rate": 1e-4}, fold_metrics=folds)
    assert model.chosen_fold_metrics()[["fold", "accuracy"]].values.tolist() == [[0, .4], [1, .3]]
    grid = pd.DataFrame({"setting": ["C=1", "C=10", "C=10"], "fold": [0, 0, 1], "accuracy": [.5, .6, .7]})
    svm = TrainedModel("svm", "classical", None, {}, cv_summary={"best_setting": "C=10"}, fold_metrics=grid)
    assert svm.chosen_fold_metrics()["accuracy"].tolist() == [.6, .7]
