"""The training loop: it learns, it selects by mean validation AUC, it keeps patients together."""

from __future__ import annotations

from functools import partial

import keras
import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.models.cnn21 import build_cnn21
from osteo_pipeline.training.data import select_training_set
from osteo_pipeline.training.loop import FitJob, TrainingConfig, cross_validate, summarise_cv
from osteo_pipeline.training.streams import InputStreams
from osteo_pipeline.training.loop import compile_model, final_split, fit_model, still_improving


def test_training_lowers_the_loss(inputs):
    """CNN21 must learn a trivially separable task: a model that cannot learn fails here."""
    ts = select_training_set(*inputs, "binary")
    config = TrainingConfig.from_params(
        {"max_epochs": 6, "early_stopping_patience": 6, "batch_size": 8, "augment": False, "track": False},
        model_name="cnn21",
    )
    idx = np.arange(len(ts.labels))
    result = fit_model(partial(build_cnn21, l2=0.0), InputStreams(ts, config.batch_size),
                       FitJob(idx, idx, learning_rate=1e-3, config=config, run_name="learns"))
    loss = result.history["loss"]
    assert len(loss) == 6
    # Six noisy epochs at batch 8: the last two must be well below the first, and the fit must
    # separate the classes (a model that cannot learn stays near ln 2 = 0.69 and 50% accuracy).
    assert min(loss[-2:]) < 0.8 * loss[0], loss
    assert result.metrics["val_loss"] < 0.55 and result.metrics["val_accuracy"] > 0.8, result.metrics


def test_summary_picks_the_best_mean_validation_auc():
    folds = pd.DataFrame(
        {
            "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4, 1e-2, 1e-2],
            "fold": [0, 1, 0, 1, 0, 1],
            "auc": [0.8, 0.9, 0.95, np.nan, 0.7, 0.99],  # NaN: a single-class fold, skipped
            **{m: 0.5 for m in ("accuracy", "precision", "recall", "specificity", "f1", "loss")},
        }
    )
    summary = summarise_cv(folds)
    assert summary["best_learning_rate"] == 1e-4
    assert summary["by_learning_rate"]["0.001"]["val_auc_mean"] == pytest.approx(0.85)


def test_final_split_holds_out_whole_patients_of_every_class(inputs):
    ts = select_training_set(*inputs, "binary")
    train_idx, val_idx = final_split(ts, val_fraction=0.25, seed=1)
    assert len(train_idx) + len(val_idx) == len(ts.labels)
    assert not set(ts.patient_ids[train_idx]) & set(ts.patient_ids[val_idx])
    assert set(ts.labels[val_idx]) == {0, 1}


def test_config_rejects_unknown_parameters():
    with pytest.raises(ValueError, match="max_epoch"):
        TrainingConfig.from_params({"max_epoch": 3}, model_name="x")
    assert TrainingConfig.from_params({"learning_rates": ["1e-3", 3e-4]}, model_name="x").learning_rates == (1e-3, 3e-4)


def test_three_class_cross_validation_through_the_same_code(inputs, policy, monkeypatch):
    import osteo_pipeline.training.loop as loop

    builds = []
    monkeypatch.setattr(loop, "compile_model", lambda *a, **k: builds.append(a) or compile_model(*a, **k))
    ts = select_training_set(*inputs, "three_class")
    config = TrainingConfig.from_params(
        {"max_epochs": 1, "batch_size": 8, "track": False, "precision": "auto"}, model_name="cnn21"
    )
    folds = cross_validate(partial(build_cnn21), ts, config=config, augmentation_policy=policy)
    assert list(folds.fold) == [0, 1] and (folds.epochs_run == 1).all()
    assert folds[["accuracy", "f1", "auc", "loss"]].notna().all().all()
    assert summarise_cv(folds)["best_learning_rate"] == 1e-3
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks out of the loop
    assert len(builds) == 1  # one model, reset per fold: memory stays flat across folds


@pytest.mark.parametrize(
    ("val_loss", "max_epochs", "expected"),
    [
        ([0.9, 0.8, 0.7], 3, True),  # cut off by the limit at its best epoch
        ([0.9, 0.7, 0.8], 3, False),  # turned up at the end: the limit did not cut learning short
        ([0.9, 0.8], 3, False),  # early stopping ended it before the limit
    ],
)
def test_still_improving_means_cut_off_at_the_best_epoch(val_loss, max_epochs, expected):
    assert still_improving(val_loss, max_epochs) is expected


def test_summary_names_the_folds_still_improving():
    folds = pd.DataFrame({"learning_rate": [1e-3, 1e-3, 1e-4, 1e-4], "fold": [0, 1, 0, 1],
                          "auc": [0.7, 0.8, 0.6, 0.65], "still_improving": [False, True, True, True]})
    assert summarise_cv(folds)["folds_still_improving"] == {"0.001": [1], "0.0001": [0, 1]}
