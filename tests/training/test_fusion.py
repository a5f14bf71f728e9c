"""The fusion head through the one loop: each fold trains on its own table, preprocessing fitted in-fold."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.models.fusion import build_fusion_head
from osteo_pipeline.training.data import select_training_set
from osteo_pipeline.training.loop import TrainingConfig, cross_validate
from osteo_pipeline.training.fusion import FINAL, FusionStreams, fit_fusion


def _tables(training_set, folds, seed=0):
    """Per fold: 3 'image features' (shifted by the fold, so each fold's table is recognisable)
    and one covariate with gaps."""
    rng = np.random.default_rng(seed)
    n = len(training_set.labels)
    age = rng.normal(65, 8, n)
    age[::5] = np.nan
    tables = {}
    for fold in folds:
        feats = rng.normal(size=(n, 3)) + 10.0 * fold + training_set.labels[:, None]
        tables[fold] = pd.DataFrame(
            {"f0": feats[:, 0], "f1": feats[:, 1], "f2": feats[:, 2], "age": age},
            index=pd.Index(training_set.scan_ids, name="scan_id"),
        )
    return tables


def test_each_fold_trains_on_its_own_features_with_in_fold_preprocessing(inputs):
    model_input, split = inputs
    ts = select_training_set(model_input, split, "binary")
    tables = _tables(ts, ts.cv_folds)
    head = partial(build_fusion_head, hidden_units=4)
    streams = FusionStreams(ts, tables, head, batch_size=8)
    config = TrainingConfig(model_name="fusion", learning_rates=(1e-2,), max_epochs=2, early_stopping_patience=1,
                            precision="float32", track=False)
    table = cross_validate(head, ts, config=config, augmentation_policy=None, streams=streams, fit=fit_fusion)
    assert table["fold"].tolist() == ts.cv_folds
    assert list(table.columns) == ["model", "learning_rate", "fold", "n_train", "n_val", "accuracy", "precision", "recall",
                                   "specificity", "f1", "auc", "loss", "best_epoch", "epochs_run", "still_improving", "train_seconds",
                                   "mlflow_run_id"]
    for fold in ts.cv_folds:
        train = tables[fold][ts.folds != fold]  # the other folds' rows of this fold's own table
        state = streams.preprocessing[fold]
        assert state["n_fit_rows"] == len(train)
        assert state["mean"][0] == pytest.approx(train["f0"].mean())  # fold-shifted: this table, these rows
        assert state["fill"][3] == pytest.approx(train["age"].median())
        assert state["n_missing"] == {"age": int(train["age"].isna().sum())}
        assert state["n_missing_val"] == {"age": int(tables[fold]["age"][ts.folds == fold].isna().sum())}


def test_streams_refuse_mixed_folds_overlaps_and_misaligned_tables(inputs):
    model_input, split = inputs
    ts = select_training_set(model_input, split, "binary")
    tables = _tables(ts, ts.cv_folds)
    streams = FusionStreams(ts, tables, build_fusion_head, batch_size=8)
    everything = np.arange(len(ts.labels))
    with pytest.raises(ValueError, match="span folds"):
        streams.key_for(everything[:2], everything[2:])
    with pytest.raises(ValueError, match="overlap"):
        streams.key_for(everything, everything[:3])
    fold0 = np.flatnonzero(ts.folds == 0)
    assert streams.key_for(np.flatnonzero(ts.folds != 0), fold0) == 0
    assert FusionStreams(ts, {FINAL: tables[0]}, build_fusion_head, 8).key_for(everything[:-3], everything[-3:]) == FINAL
    with pytest.raises(ValueError, match="in order"):
        FusionStreams(ts, {0: tables[0].iloc[::-1]}, build_fusion_head, 8)
