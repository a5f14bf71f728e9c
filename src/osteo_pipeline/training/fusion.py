"""The fusion head through the one training loop, with fold-local image features and preprocessing.

Each CV fold has its own image features (the CNN21 trained without that fold, train_cnn21's
``cnn21_fold_features``) and its own imputation/standardisation (fitted on the fold's training
rows). ``FusionStreams`` holds one raw joined table (image features ++ covariates) per fold, or
one for the final fit (features of the final CNN21); ``fit_fusion`` has ``loop.fit_model``'s
signature, so ``loop.cross_validate`` and ``loop.final_fit`` run the whole protocol unchanged:
it picks the table of the fold being validated, fits the preprocessing on the training rows and
trains the head with ``fit_model`` over ``FeatureStreams``. What leaves the loop (``on_trained``,
the final model) is the whole network of ``models.fusion.build_fusion_network``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from osteo_pipeline.core.metrics import finite_or_none
from osteo_pipeline.imaging.preprocess import scale_images
from osteo_pipeline.models.fusion import (
    HEAD_NAME,
    PREPROCESSING_NAME,
    apply_preprocessing,
    feature_columns,
    fit_preprocessing,
    preprocessing_state,
)
from osteo_pipeline.training import runtime
from osteo_pipeline.training.data import TrainingSet, assert_no_test_scans
from osteo_pipeline.training.features import FeatureStreams
from osteo_pipeline.training.loop import FitJob, FitResult, ModelBuilder, ModelPool, fit_model

FINAL = "final"  # the key of the final fit's single table


class FusionStreams:
    """The input of ``fit_fusion``: raw joined tables row-aligned with ``training_set``, keyed by
    CV fold (the table whose image features come from the CNN21 trained without that fold) or
    ``FINAL``; and the head's builder, made once (a ``ModelPool`` then reuses one head)."""

    def __init__(self, training_set: TrainingSet, tables: dict[int | str, pd.DataFrame], head_builder: ModelBuilder,
                 batch_size: int):
        for key, table in tables.items():
            if list(table.index.astype(str)) != list(training_set.scan_ids.astype(str)):
                raise ValueError(f"the {key} table must list the training-set scans in order")
        widths = {tuple(t.columns) for t in tables.values()}
        if len(widths) != 1:
            raise ValueError("every fold's table must have the same columns")
        assert_no_test_scans(training_set.scan_ids, training_set.test_scan_ids)
        self.training_set = training_set
        self.tables = tables
        self.head_builder = head_builder
        self.batch_size = batch_size
        self.num_classes = len(training_set.class_names)
        self.columns = list(next(iter(tables.values())).columns)
        self.input_shape = (len(self.columns),)
        self.preprocessing: dict[int | str, dict[str, Any]] = {}  # per key: the fitted constants, for the report
        self.fitted: dict[int | str, Pipeline] = {}  # per key: the fitted sklearn preprocessing

    def key_for(self, train_idx: np.ndarray, val_idx: np.ndarray) -> int | str:
        """The table to train on: ``FINAL`` if that is all there is, else the validated fold's,
        whose features came from a CNN21 that never saw the validation rows (checked)."""
        if len(np.intersect1d(train_idx, val_idx)):
            raise ValueError("training and validation rows overlap")
        if set(self.tables) == {FINAL}:
            return FINAL
        val_folds = np.unique(self.training_set.folds[val_idx])
        if len(val_folds) != 1 or int(val_folds[0]) not in self.tables:
            raise ValueError(f"validation rows span folds {val_folds.tolist()}: a CV fit validates on one fold")
        fold = int(val_folds[0])
        # the fold's CNN21 trained on exactly the other folds: none of them may be validated here
        assert not (self.training_set.folds[train_idx] == fold).any()
        return fold


def fit_fusion(
    builder: ModelBuilder,
    streams: FusionStreams,
    job: FitJob,
    *,
    on_trained: Callable[[keras.Model], None] | None = None,
    models: ModelPool | None = None,
) -> FitResult:
    """``loop.fit_model`` for the fusion head: preprocessing fitted on ``job.train_idx`` of the
    right table, then one ``fit_model`` run. ``on_trained`` gets the whole network (``builder``'s,
    see ``build_fusion_network``) with the fitted preprocessing and trained head; the head trains
    from ``streams.head_builder``. There is nothing to augment (the job's augmentation policy is
    ignored): features are precomputed."""
    train_idx, val_idx = job.train_idx, job.val_idx
    key = streams.key_for(train_idx, val_idx)
    table = streams.tables[key]
    fitted = fit_preprocessing(table.iloc[train_idx])  # training rows only: validation rows play no part
    assert int(fitted.named_steps["scale"].n_samples_seen_) == len(train_idx)
    state = preprocessing_state(fitted, table.iloc[train_idx])
    state["n_missing_val"] = {c: int(n) for c, n in table.iloc[val_idx].isna().sum().items() if n}
    streams.preprocessing[key], streams.fitted[key] = state, fitted
    features = FeatureStreams(streams.training_set, apply_preprocessing(table, fitted), batch_size=streams.batch_size)

    def deliver(head: keras.Model) -> None:
        on_trained(assemble(builder, head, state, streams))

    head_job = replace(job, augmentation_policy=None, run_params={
        **job.run_params, "image_features": f"cnn21 fold {key} model" if key != FINAL else "final cnn21",
        "covariates": ",".join(covariate_columns(streams.columns)),
        "imputed_train_values": sum(state.get("n_missing", {}).values()),
    })
    return fit_model(streams.head_builder, features, head_job, on_trained=None if on_trained is None else deliver,
                     models=models)


def assemble(builder: ModelBuilder, head: keras.Model, state: dict[str, Any], streams: FusionStreams) -> keras.Model:
    """The whole float32 network (``builder``): the fitted preprocessing constants and ``head``'s weights."""
    image_shape = tuple(int(d) for d in streams.training_set.images.shape[1:])
    with runtime.precision_policy("float32"):
        network = builder(input_shape=[image_shape, (len(covariate_columns(streams.columns)),)], num_classes=streams.num_classes)
    network.get_layer(PREPROCESSING_NAME).set_state(state)
    network.get_layer(HEAD_NAME).set_weights(head.get_weights())
    return network


def covariate_columns(columns: list[str]) -> list[str]:
    """The covariate columns of a joined table (all but the image features ``f00..``)."""
    image = set(feature_columns(columns))
    return [c for c in columns if c not in image]


def export_gap(network: keras.Model, streams: FusionStreams, covariates: pd.DataFrame, indices: np.ndarray) -> float:
    """Largest |probability difference| on ``indices`` between the saved network on raw images and
    raw ``covariates`` and its head on the final table, preprocessed by sklearn as in training:
    checks that the network's CNN21 branch and preprocessing layer reproduce the training input."""
    ts = streams.training_set
    x = apply_preprocessing(streams.tables[FINAL].iloc[indices], streams.fitted[FINAL])
    head_probs = network.get_layer(HEAD_NAME).predict(x, verbose=0)
    full = network.predict(
        {"image": scale_images(ts.images[indices]).numpy(), "covariates": covariates.iloc[indices].to_numpy(np.float32)},
        batch_size=streams.batch_size, verbose=0,
    )
    return float(np.abs(full - head_probs).max())


# --------------------------------------------------------------------------- covariates alone


def single_covariate_auc(values: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """ROC-AUC of one covariate as a score for the positive class (the last, osteoporosis) vs the
    rest; rows with a missing value are left out; NaN if only one class remains."""
    values = np.asarray(values, dtype=float)
    known = ~np.isnan(values)
    positive = np.asarray(labels)[known] == len(class_names) - 1
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, values[known]))


def covariate_aucs(
    clinical: pd.DataFrame, labels: np.ndarray, folds: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Each covariate alone as a score: its AUC over all rows and its mean AUC over the CV folds'
    validation rows (the rows the fusion model's val AUC is measured on), and its separability
    max(AUC, 1 - AUC), which does not care about the direction."""
    folds = np.asarray(folds)
    out: dict[str, dict[str, float | None]] = {}
    for name in clinical.columns:
        values = clinical[name].to_numpy(dtype=float)
        pooled = single_covariate_auc(values, labels, class_names)
        per_fold = [single_covariate_auc(values[folds == k], labels[folds == k], class_names) for k in np.unique(folds[folds >= 0])]
        val_mean = float(np.nanmean(per_fold)) if not np.isnan(per_fold).all() else float("nan")
        out[name] = {
            "auc": finite_or_none(pooled),
            "val_auc_mean": finite_or_none(val_mean),
            "separability": finite_or_none(max(pooled, 1 - pooled)) if np.isfinite(pooled) else None,
        }
    return out


def dominant_covariate_warnings(
    aucs: dict[str, dict[str, float | None]], threshold: float, fusion_val_auc: float | None
) -> list[str]:
    """One warning per covariate whose separability alone reaches ``threshold``: the fusion model
    may then be reading the recruitment criterion rather than the scan (in the first paper's
    cohort the classes were recruited by fracture history)."""
    warnings = []
    for name, auc in aucs.items():
        if auc["separability"] is not None and auc["separability"] >= threshold:
            fusion = "undefined" if fusion_val_auc is None else f"{fusion_val_auc:.3f}"
            alone = "n/a" if auc["val_auc_mean"] is None else f"{auc['val_auc_mean']:.3f}"
            warnings.append(
                f"{name} alone nearly determines the label in this cohort (AUC {auc['auc']:.3f}, separability "
                f"{auc['separability']:.3f} >= {threshold:g}; mean validation-fold AUC {alone} vs the fusion "
                f"model's {fusion}): the fusion result may reflect how the cohort was recruited, not the scans"
            )
    return warnings
