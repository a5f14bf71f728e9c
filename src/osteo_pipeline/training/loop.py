"""The one training loop: fit a model, cross-validate a learning-rate grid, final fit.

Models plug in as builders: ``builder(input_shape=(H, W, C), num_classes=K) -> keras.Model``
(uncompiled, softmax output, input scaled to [0, 1]; a multi-input network's builder gets a list
of shapes, one per input); bind their own hyper-parameters with
``functools.partial``. The loop owns everything else: input streams, optimiser, class-weighted
cross-entropy, early stopping, metrics, MLflow child runs, precision, strategy, determinism.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from osteo_pipeline.core.metrics import finite_or_none
from osteo_pipeline.training import runtime, tracking
from osteo_pipeline.training.data import VAL_PARTITION_FOLD, TrainingSet
from osteo_pipeline.training.streams import InputStreams
from osteo_pipeline.training.metrics import EPOCH_AUC, METRIC_NAMES, classification_metrics, prefixed

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., keras.Model]
SELECTION_METRIC = "val_auc"


@dataclass(frozen=True)
class TrainingConfig:
    """The training protocol (paper section 4); built from the ``training`` parameters."""

    model_name: str
    learning_rates: tuple[float, ...] = (1e-3,)
    optimizer: str = "adam"
    batch_size: int = 16
    max_epochs: int = 50
    early_stopping_patience: int = 10
    final_val_fraction: float = 0.15
    augment: bool = True
    precision: str = "auto"
    strategy: str = "default"
    deterministic: bool = False
    seed: int = 42
    track: bool = True
    registered_model_name: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> TrainingConfig:
        """Build from a parameters dict; unknown keys are an error (a typo must not pass silently)."""
        values = {**params, **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training parameters: {sorted(unknown)}")
        values["learning_rates"] = tuple(float(lr) for lr in values.get("learning_rates", cls.learning_rates))
        return cls(**values)

    @classmethod
    def for_model(cls, training: dict[str, Any], model: dict[str, Any], seed: int) -> TrainingConfig:
        """The shared protocol block (``training``) run under a model's own name and registry entry."""
        return cls.from_params(training, seed=seed, model_name=model["name"],
                               registered_model_name=model["registered_model_name"])

    def as_params(self) -> dict[str, Any]:
        """Flat MLflow params (the learning-rate grid is logged by the parent run)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "learning_rates"}


@dataclass
class FitResult:
    """A trained model with its history and validation metrics (sklearn, best weights)."""

    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    run_id: str | None
    still_improving: bool = False  # cut off by max_epochs while its validation loss was still falling


def still_improving(val_loss: list[float], max_epochs: int) -> bool:
    """True when training hit the epoch limit with the validation loss at its best in the last
    epoch: more epochs would likely have helped, so its figures understate the model."""
    return len(val_loss) >= max_epochs and int(np.argmin(val_loss)) == len(val_loss) - 1


class EpochProgress(keras.callbacks.Callback):
    """One log line per epoch: metrics, seconds per epoch, ETA to the epoch limit."""

    def __init__(self, label: str, max_epochs: int):
        super().__init__()
        self.label, self.max_epochs = label, max_epochs

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        per_epoch = (time.perf_counter() - self._start) / (epoch + 1)
        eta = per_epoch * (self.max_epochs - epoch - 1)
        shown = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        logger.info(
            "%s epoch %d/%d  %s  | %.1f s/epoch, ETA <= %dm%02ds (early stopping may end sooner)",
            self.label, epoch + 1, self.max_epochs, shown, per_epoch, eta // 60, eta % 60,
        )


def compile_model(
    builder: ModelBuilder, input_shape: tuple[int, ...], num_classes: int, learning_rate: float, optimizer: str = "adam"
) -> keras.Model:
    """Build and compile for training: softmax + categorical cross-entropy, accuracy and (micro) AUC per epoch."""
    model = builder(input_shape=input_shape, num_classes=num_classes)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}}),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy", keras.metrics.AUC(name=EPOCH_AUC)],
    )
    return model


class ModelPool:
    """Compiled models reused across the fits of one cross-validation, each reset to its
    freshly built state (weights, dropout RNG, optimiser) before a fit.

    A new Keras model per fold leaves ~50 MB of TensorFlow function state behind per fit and
    retraces every step function; one reset model per configuration keeps memory flat across
    folds and learning rates, with results identical to a fresh seeded build.
    """

    def __init__(self) -> None:
        self._models: dict[tuple, tuple[keras.Model, str, list, list]] = {}

    def get(self, builder: ModelBuilder, input_shape: tuple[int, ...], num_classes: int, learning_rate: float,
            config: TrainingConfig) -> tuple[keras.Model, str]:
        """A compiled model in its initial state at ``learning_rate``, and the resolved precision."""
        key = (id(builder), input_shape, num_classes, config.precision, config.strategy, config.optimizer)
        if key not in self._models:
            with runtime.precision_policy(config.precision) as precision, runtime.get_strategy(config.strategy).scope():
                model = compile_model(builder, input_shape, num_classes, learning_rate, config.optimizer)
                model.optimizer.build(model.trainable_variables)  # create its slots now, to snapshot them
            self._models[key] = (model, precision, [v.numpy() for v in model.variables],
                                 [v.numpy() for v in model.optimizer.variables])
        model, precision, weights, optimizer_state = self._models[key]
        for variable, value in zip(model.variables, weights, strict=True):
            variable.assign(value)
        for variable, value in zip(model.optimizer.variables, optimizer_state, strict=True):
            variable.assign(value)
        model.optimizer.learning_rate = learning_rate
        return model, precision

    def clear(self) -> None:
        """Drop the models and Keras' global graph state."""
        self._models.clear()
        keras.backend.clear_session(free_memory=True)
        gc.collect()


def _class_weight(training_set: TrainingSet, indices: np.ndarray, class_weights: dict[str, Any] | None) -> dict[int, float]:
    """Class weights by index: the given ``{scheme: {class: w}}`` entry, else balanced on ``indices``."""
    scheme = training_set.counts.get("label_scheme")
    given = (class_weights or {}).get(scheme)
    if given:
        # a class the cohort lacks (no osteopenia scans) has no weight and no samples: 1.0
        return {i: float(given.get(c, 1.0)) for i, c in enumerate(training_set.class_names)}
    classes = np.arange(len(training_set.class_names))
    present = np.unique(training_set.labels[indices])
    weights = compute_class_weight("balanced", classes=present, y=training_set.labels[indices])
    lookup = dict(zip(present.tolist(), weights.tolist(), strict=True))
    return {int(c): float(lookup.get(c, 1.0)) for c in classes}


def _export_float32(builder: ModelBuilder, model: keras.Model) -> keras.Model:
    """Copy trained weights into a float32, strategy-free twin: the saved model then runs
    anywhere (bf16/fp16 inference is slow or missing on many CPUs); variables are float32 anyway."""
    shape = model.input_shape  # a list for a multi-input network (fusion): one shape per input
    input_shape = [tuple(s[1:]) for s in shape] if isinstance(shape, list) else tuple(shape[1:])
    with runtime.precision_policy("float32"):
        twin = builder(input_shape=input_shape, num_classes=model.output_shape[-1])
    twin.set_weights(model.get_weights())
    return twin


def _no_empty_replicas(
    train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, n_train: int, n_val: int, batch_size: int, replicas: int
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Batch the streams so that every replica gets at least one scan of every batch.

    A distribution strategy splits each batch over the replicas; a last batch smaller than their
    number leaves some replica an empty one, and TensorFlow's CPU (oneDNN) convolution fails on
    an empty batch. Training skips such a last batch (a different one each epoch: the stream
    reshuffles); validation, which must see every scan, takes the smallest batch size from
    ``batch_size`` up that leaves no such remainder (inference does not depend on it).
    """
    if batch_size < replicas or n_val < replicas:
        raise ValueError(f"batch size ({batch_size}) and validation set ({n_val} scans) must each be at least "
                         f"the number of replicas in sync ({replicas})")
    if 0 < n_train % batch_size < replicas:
        train_ds = train_ds.take(n_train // batch_size)
    def no_small_remainder(size: int) -> bool:
        return n_val % size == 0 or n_val % size >= replicas

    if not no_small_remainder(batch_size):  # then n_val > batch_size, and n_val itself qualifies
        val_ds = val_ds.rebatch(next(b for b in range(batch_size + 1, n_val + 1) if no_small_remainder(b)))
    return train_ds, val_ds


@dataclass(frozen=True)
class FitJob:
    """One training run: its scans, learning rate and protocol, and how MLflow records it."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    learning_rate: float
    config: TrainingConfig
    augmentation_policy: dict[str, Any] | None = None
    class_weights: dict[str, Any] | None = None
    run_name: str = "fit"
    run_params: dict[str, Any] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)


def _run_params(job: FitJob, streams: InputStreams, model: keras.Model, precision: str, replicas: int,
                class_weight: dict[int, float]) -> dict[str, Any]:
    """The MLflow params of one fit: the protocol, the data it saw and the model's size."""
    names = streams.training_set.class_names
    return {
        **job.config.as_params(),
        "learning_rate": job.learning_rate,
        "precision_resolved": precision,
        "replicas": replicas,
        "input_shape": "x".join(map(str, streams.input_shape)),
        "class_names": ",".join(names),
        "class_weight": {names[i]: round(w, 4) for i, w in class_weight.items()},
        "n_train": len(job.train_idx),
        "n_val": len(job.val_idx),
        "n_params": model.count_params(),
        **job.run_params,
    }


def fit_model(
    builder: ModelBuilder,
    streams: InputStreams,
    job: FitJob,
    *,
    on_trained: Callable[[keras.Model], None] | None = None,
    models: ModelPool | None = None,
) -> FitResult:
    """Train one model on ``job.train_idx`` with early stopping on ``job.val_idx``, as one MLflow run.

    ``on_trained``, if given, gets the trained model (best weights) while the run is still active
    (used to log the final model into the same run). ``models`` lets successive fits reuse
    one compiled model (see ``ModelPool``); without it the model is built afresh. The builder
    gets ``streams.input_shape``: the images' shape, or that of precomputed inputs (``features``).
    """
    train_idx, val_idx, config, run_name = job.train_idx, job.val_idx, job.config, job.run_name
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{run_name}: empty training ({len(train_idx)}) or validation ({len(val_idx)}) set")
    ts = streams.training_set
    runtime.seed_everything(config.seed, config.deterministic)
    strategy = runtime.get_strategy(config.strategy)
    class_weight = _class_weight(ts, train_idx, job.class_weights)
    # Streams (and the augmenter's RNG variable) live outside the strategy scope: they run on
    # the host, and a mirrored RNG variable cannot be updated inside tf.data.
    train_ds = streams.train(train_idx, job.augmentation_policy if config.augment else None, seed=config.seed)
    val_ds = streams.evaluate(val_idx)
    if strategy.num_replicas_in_sync > 1:
        train_ds, val_ds = _no_empty_replicas(train_ds, val_ds, len(train_idx), len(val_idx), streams.batch_size,
                                              strategy.num_replicas_in_sync)
    model, precision = (models or ModelPool()).get(
        builder, streams.input_shape, streams.num_classes, job.learning_rate, config
    )
    params = _run_params(job, streams, model, precision, strategy.num_replicas_in_sync, class_weight)
    tags = {**tracking.environment_tags(precision, config.strategy), "model": config.model_name, **job.run_tags}
    with tracking.child_run(run_name, params, tags, enabled=config.track) as run_id:
        start = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.max_epochs,
            class_weight=class_weight,
            shuffle=False,  # the training stream shuffles itself (seeded)
            verbose=0,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
                ),
                EpochProgress(f"[{run_name}]", config.max_epochs),
                tracking.MlflowEpochLogger(),
            ],
        ).history
        seconds = time.perf_counter() - start
        y_prob = model.predict(val_ds, verbose=0)
        metrics = prefixed(classification_metrics(ts.labels[val_idx], y_prob, ts.class_names), "val")
        epochs_run = len(history["loss"])
        best_epoch = int(np.argmin(history["val_loss"])) + 1
        improving = still_improving(history["val_loss"], config.max_epochs)
        if improving:
            logger.warning("[%s] validation loss still falling at the last epoch (%d): more epochs may help",
                           run_name, epochs_run)
        # Logged one step after the last epoch: the run's latest val_* are the restored best
        # weights' sklearn metrics, the figures every model's runs are compared on.
        tracking.log_metrics(metrics, step=epochs_run)
        tracking.log_metrics(
            {"best_epoch": best_epoch, "epochs_run": epochs_run, "train_seconds": seconds,
             "train_images_per_second": len(train_idx) * epochs_run / seconds,
             "still_improving": float(improving)}
        )
        tracking.log_training_curves(history, run_name)
        if on_trained is not None:
            on_trained(model)
    logger.info("[%s] done: %d epochs (best %d) in %.0f s, RSS %.0f MB; %s", run_name, epochs_run, best_epoch,
                seconds, runtime.resident_memory_mb(), ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return FitResult(model, history, metrics, best_epoch, epochs_run, seconds, run_id, improving)


def cross_validate(
    builder: ModelBuilder,
    training_set: TrainingSet,
    *,
    config: TrainingConfig,
    augmentation_policy: dict[str, Any] | None,
    class_weights: dict[str, Any] | None = None,
    data_fingerprint: dict[str, Any] | None = None,
    streams: InputStreams | None = None,
    fit: Callable[..., FitResult] = fit_model,
    on_fold_trained: Callable[[keras.Model, float, int], None] | None = None,
) -> pd.DataFrame:
    """Train one model per learning rate x CV fold (validating on the fold); one row of metrics each.

    ``streams`` and ``fit`` default to images and ``fit_model``; the transfer baselines pass
    cached activations and their phased fit. ``on_fold_trained(model, learning_rate=, fold=)``
    sees each fold's trained model (best weights), e.g. to take its image features.
    """
    runtime.get_strategy(config.strategy)  # before the streams' first TF op: multi-worker needs that
    streams = streams or InputStreams(training_set, config.batch_size)
    folds = training_set.cv_folds
    if len(folds) < 2:
        raise ValueError(f"cross-validation needs >= 2 folds in the split table, got {folds}")
    rows, total, done = [], len(config.learning_rates) * len(folds), 0
    models = ModelPool()
    for lr in config.learning_rates:
        for fold in folds:
            done += 1
            train_idx = np.flatnonzero((training_set.folds != fold) & (training_set.folds != VAL_PARTITION_FOLD))
            val_idx = np.flatnonzero(training_set.folds == fold)
            job = FitJob(
                train_idx, val_idx, lr, config, augmentation_policy, class_weights,
                run_name=f"{config.model_name}-lr{lr:g}-fold{fold} ({done}/{total})",
                run_params={"fold": fold, "n_folds": len(folds), "stage": "cv", "label_scheme": training_set.counts.get("label_scheme")},
                run_tags={"stage": "cv", **tracking.fingerprint_tags(data_fingerprint or {})},
            )
            on_trained = None if on_fold_trained is None else partial(on_fold_trained, learning_rate=lr, fold=fold)
            result = fit(builder, streams, job, on_trained=on_trained, models=models)
            rows.append({
                "model": config.model_name, "learning_rate": lr, "fold": fold,
                "n_train": len(train_idx), "n_val": len(val_idx),
                **{k.removeprefix("val_"): v for k, v in result.metrics.items()},
                "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "still_improving": result.still_improving,
                "train_seconds": round(result.seconds, 2), "mlflow_run_id": result.run_id,
            })
    models.clear()
    return pd.DataFrame(rows)


def summarise_cv(fold_metrics: pd.DataFrame) -> dict[str, Any]:
    """Mean and SD of each metric per learning rate, and the rate with the best mean validation AUC.

    Folds whose AUC is undefined (single-class validation fold) are skipped in the means.
    """
    metric_cols = [c for c in METRIC_NAMES if c in fold_metrics]
    grouped = fold_metrics.groupby("learning_rate")[metric_cols]
    means, sds = grouped.mean(), grouped.std(ddof=1)
    if means["auc"].isna().all():
        raise ValueError("validation AUC undefined in every fold: each fold needs scans of every class")
    best_lr = float(means["auc"].idxmax())  # idxmax: first (grid order) on ties, NaN skipped
    improving = fold_metrics.get("still_improving", pd.Series(False, index=fold_metrics.index)).fillna(False).astype(bool)
    return {
        "selection": f"mean {SELECTION_METRIC} over {fold_metrics['fold'].nunique()} folds",
        "best_learning_rate": best_lr,
        # Folds cut off by max_epochs while validation loss still fell: their figures understate the model.
        "folds_still_improving": {f"{lr:g}": sorted(int(f) for f in fold_metrics.loc[improving & (fold_metrics["learning_rate"] == lr), "fold"])
                                  for lr in means.index},
        "by_learning_rate": {
            f"{lr:g}": {**{f"val_{m}_mean": finite_or_none(means.loc[lr, m]) for m in metric_cols},
                        **{f"val_{m}_sd": finite_or_none(sds.loc[lr, m]) for m in metric_cols}}
            for lr in means.index
        },
    }


def chosen_means(summary: dict[str, Any]) -> dict[str, float | None]:
    """The CV means of the chosen grid point: a learning rate (Keras models) or a setting (scikit-learn)."""
    if "best_setting" in summary:
        return summary["by_setting"][summary["best_setting"]]
    return summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]


def cv_outputs(
    summary: dict[str, Any], training_set: TrainingSet, data_fingerprint: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The tail of every model family's CV node: the summary with the data it was measured on,
    and the chosen point's CV means as parent-run metrics (``cv_<metric>``)."""
    summary = {**summary, "data": training_set.counts, "data_fingerprint": data_fingerprint}
    return summary, tracking.parent_run_metrics(chosen_means(summary))


def final_split(training_set: TrainingSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices for the final fit: the "val" partition if the split has one, else a
    patient-grouped, class-stratified ``val_fraction`` of the training partition."""
    fixed_val = training_set.folds == VAL_PARTITION_FOLD
    if fixed_val.any():
        return np.flatnonzero(~fixed_val), np.flatnonzero(fixed_val)
    n_splits = max(2, round(1 / val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(training_set.images[:, :1, :1, 0], training_set.labels, training_set.patient_ids))
    return train_idx, val_idx


def final_fit(
    builder: ModelBuilder,
    training_set: TrainingSet,
    *,
    learning_rate: float,
    config: TrainingConfig,
    augmentation_policy: dict[str, Any] | None,
    class_weights: dict[str, Any] | None = None,
    data_fingerprint: dict[str, Any] | None = None,
    streams: InputStreams | None = None,
    fit: Callable[..., FitResult] = fit_model,
    preprocessing: dict[str, Any] | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit on the whole training partition (early stopping on a held-out patient group),
    log and register the model in MLflow; return a float32 model and a report.

    ``streams`` and ``fit`` as in ``cross_validate``; ``builder`` builds the whole network saved.
    ``preprocessing`` (``serving.preprocessing_settings``): the registered model then takes raw
    scans (``tracking.log_keras_model``).
    """
    runtime.get_strategy(config.strategy)  # before the streams' first TF op: multi-worker needs that
    streams = streams or InputStreams(training_set, config.batch_size)
    train_idx, val_idx = final_split(training_set, config.final_val_fraction, config.seed)
    kept: dict[str, Any] = {}

    def export_and_log(model: keras.Model) -> None:
        kept["model"] = _export_float32(builder, model)
        if config.track:
            kept["model_uri"] = tracking.log_keras_model(kept["model"], training_set.class_names,
                                                         config.registered_model_name, preprocessing)

    job = FitJob(
        train_idx, val_idx, learning_rate, config, augmentation_policy, class_weights,
        run_name=f"{config.model_name}-final-lr{learning_rate:g}",
        run_params={"stage": "final", "label_scheme": training_set.counts.get("label_scheme")},
        run_tags={"stage": "final", **tracking.fingerprint_tags(data_fingerprint or {})},
    )
    result = fit(builder, streams, job, on_trained=export_and_log)
    report = {
        "model": config.model_name,
        "learning_rate": learning_rate,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "val_patients": sorted(set(training_set.patient_ids[val_idx].tolist())),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "still_improving": result.still_improving,
        "train_seconds": round(result.seconds, 2),
        **result.metrics,
        "mlflow_run_id": result.run_id,
        "mlflow_model_uri": kept.get("model_uri"),
        "registered_model_name": config.registered_model_name if config.track else None,
        "class_names": list(training_set.class_names),
        **training_set.counts,
    }
    result.model = None  # the float32 twin is what leaves the loop
    gc.collect()
    return kept["model"], report
