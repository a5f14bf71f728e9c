"""Transfer learning in phases over cached frozen activations (paper 1, section 3.3).

Phase 1 trains the new head on a frozen backbone; phase 2 unfreezes the last block(s) and
fine-tunes at a lower learning rate. Whatever lies below a phase's cut point does not change
while that phase trains, so its activations are computed once per image view
(``cache_activations``: K augmented views per scan and one clean view, float16) and every fold,
learning rate and epoch trains only the part above the cut (``fit_phases``). Each phase is one
``loop.fit_model`` call; ``fit_phases`` is a drop-in for ``fit_model``, so ``loop.cross_validate``
and ``loop.final_fit`` run the whole protocol unchanged. The model that leaves is still the whole
network (``assemble``): frozen bottom + trained top, taking [0, 1] images like CNN21.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import keras
import numpy as np

from osteo_pipeline.models.backbones import HEAD_LAYERS, block_boundaries, submodel
from osteo_pipeline.training import runtime, tracking
from osteo_pipeline.imaging.preprocess import scale_images
from osteo_pipeline.training.data import TrainingSet
from osteo_pipeline.training.features import FeatureStreams, compact, predict_images
from osteo_pipeline.training.loop import FitJob, FitResult, ModelBuilder, ModelPool, fit_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One training phase: the top model above ``boundary`` (a layer name) trains."""

    name: str
    boundary: str
    learning_rate_factor: float = 1.0  # x the grid's learning rate
    max_epochs: int | None = None  # None: the training config's
    early_stopping_patience: int | None = None


def transfer_phases(
    backbone: str, unfreeze_blocks: int, learning_rate_factor: float = 0.1,
    max_epochs: int | None = None, early_stopping_patience: int | None = None,
) -> tuple[Phase, ...]:
    """``head`` (backbone frozen, the grid's rate), then ``fine_tune`` (the last ``unfreeze_blocks``
    blocks train too, at ``learning_rate_factor`` x the rate) unless ``unfreeze_blocks`` is 0."""
    boundaries = block_boundaries(backbone, unfreeze_blocks)
    head = Phase("head", boundaries[0])
    if len(boundaries) == 1:
        return (head,)
    return head, Phase("fine_tune", boundaries[1], float(learning_rate_factor), max_epochs, early_stopping_patience)


@dataclass
class FrozenActivations:
    """Cached activations of a network's frozen part, per phase boundary, row-aligned with
    ``training_set``; with what it takes to rebuild the network they came from."""

    training_set: TrainingSet
    builder: ModelBuilder  # the whole network (what is saved), input [0, 1] images
    initial_weights: list[np.ndarray]  # its weights when the activations were computed
    phases: tuple[Phase, ...]
    clean: dict[str, np.ndarray]  # boundary -> (N, ...) one unaugmented view per scan
    views: dict[str, np.ndarray | None]  # boundary -> (N, K, ...) K augmented views per scan
    tops: dict[str, keras.Model]  # boundary -> the network above it, initial weights (cloned per fit)
    info: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # on every MLflow run trained from it (pretrained=...)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.training_set.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.training_set.class_names)


def _build(builder: ModelBuilder, input_shape: tuple[int, ...], num_classes: int, weights: list[np.ndarray]) -> keras.Model:
    model = builder(input_shape=input_shape, num_classes=num_classes)
    model.set_weights(weights)
    return model


def cache_activations(
    builder: ModelBuilder,
    initial_weights: list[np.ndarray],
    training_set: TrainingSet,
    phases: tuple[Phase, ...],
    *,
    augmentation_policy: dict[str, Any] | None,
    views_per_scan: int,
    batch_size: int = 16,
    precision: str = "float32",
    info: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> FrozenActivations:
    """Run the frozen part once: images -> the lowest boundary (clean view + ``views_per_scan``
    augmented views), then each higher boundary from the cached lower one (the frozen blocks
    between them, not the images again)."""
    if views_per_scan < 0:
        raise ValueError(f"views_per_scan must be >= 0, got {views_per_scan}")
    start = time.perf_counter()
    with runtime.precision_policy(precision):
        model = _build(builder, tuple(training_set.images.shape[1:]), len(training_set.class_names), initial_weights)
    boundaries = [phase.boundary for phase in phases]
    order = sorted(boundaries, key=lambda b: model.layers.index(model.get_layer(b)))  # bottom first
    images, policy = training_set.images, augmentation_policy or None
    bottom = submodel(model, stop=order[0])
    clean = {order[0]: compact(predict_images(bottom, images, batch_size), f"{order[0]} clean")}
    views: dict[str, np.ndarray | None] = {order[0]: None}
    if views_per_scan and policy:
        # view k: the policy's augmenter seeded seed + k, so views differ and reruns repeat them
        seeds = [int(policy.get("seed", 42)) + k for k in range(views_per_scan)]
        views[order[0]] = np.stack(
            [compact(predict_images(bottom, images, batch_size, {**policy, "seed": s}), f"{order[0]} view") for s in seeds],
            axis=1,
        )
    for lower, upper in zip(order, order[1:]):
        block = submodel(model, start=lower, stop=upper)
        clean[upper] = compact(block.predict(clean[lower].astype(np.float32), batch_size=batch_size, verbose=0), upper)
        if views[lower] is not None:
            flat = views[lower].reshape(-1, *views[lower].shape[2:]).astype(np.float32)
            out = block.predict(flat, batch_size=batch_size, verbose=0)
            views[upper] = compact(out.reshape(len(images), -1, *out.shape[1:]), upper)
        else:
            views[upper] = None
    seconds = time.perf_counter() - start
    n_bytes = sum(a.nbytes for a in [*clean.values(), *(v for v in views.values() if v is not None)])
    cached_views = views_per_scan if policy else 0
    logger.info("cached activations at %s: %d scans x (1 + %d views) in %.0f s, %.0f MB", ", ".join(order),
                len(images), cached_views, seconds, n_bytes / 2**20)
    info = {**(info or {}), "boundaries": boundaries, "views_per_scan": cached_views,
            "cache_seconds": round(seconds, 1), "cache_mb": round(n_bytes / 2**20, 1), "cache_precision": precision,
            "cache_dtype": str(clean[order[0]].dtype)}
    tops = {b: submodel(model, start=b) for b in boundaries}
    return FrozenActivations(training_set, builder, initial_weights, tuple(phases), clean, views, tops, info, dict(tags or {}))


class TransferStreams:
    """The input of ``fit_phases``: per phase boundary, a ``FeatureStreams`` and the top model's
    builder, made once (a ``ModelPool`` then reuses one model per phase across folds)."""

    def __init__(self, cache: FrozenActivations, batch_size: int):
        self.cache = cache
        self.training_set = cache.training_set
        self.batch_size = batch_size
        self.num_classes = cache.num_classes
        self.input_shape = cache.image_shape  # the whole network's; each phase's streams have their own
        self._streams = {
            b: FeatureStreams(cache.training_set, cache.clean[b], cache.views[b], batch_size) for b in cache.clean
        }
        self._builders = {b: partial(build_top, cache=cache, boundary=b) for b in cache.clean}

    def for_phase(self, phase: Phase) -> tuple[ModelBuilder, FeatureStreams]:
        return self._builders[phase.boundary], self._streams[phase.boundary]


def build_top(input_shape: tuple[int, ...], num_classes: int, *, cache: FrozenActivations, boundary: str) -> keras.Model:
    """The network above ``boundary``, with the weights the activations were cached with.

    Batch normalisation stays in inference mode with its statistics frozen (the usual fine-tuning
    practice, and what the cached bottom computed with). The layers compute in the cache's precision.
    """
    template = cache.tops[boundary]
    if template.output_shape[-1] != num_classes:
        raise ValueError(f"the cached network has {template.output_shape[-1]} classes, not {num_classes}")
    if tuple(template.input_shape[1:]) != tuple(input_shape):
        raise ValueError(f"the network above {boundary} takes {template.input_shape[1:]}, not {input_shape}")
    top = keras.models.clone_model(template)  # fresh layers, ~10x faster than building the whole network
    top.set_weights(template.get_weights())
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return top


def head_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Weights of the head layers (``HEAD_LAYERS``) of a top model."""
    names = {layer.name for layer in model.layers}
    return {name: model.get_layer(name).get_weights() for name in HEAD_LAYERS if name in names}


def assemble(cache: FrozenActivations, top: keras.Model, boundary: str) -> keras.Model:
    """The whole float32 network: the cached weights below ``boundary``, ``top``'s above it."""
    with runtime.precision_policy("float32"):
        model = _build(cache.builder, cache.image_shape, cache.num_classes, cache.initial_weights)
    submodel(model, start=boundary).set_weights(top.get_weights())  # shared layers: sets ``model``'s
    return model


def export_gap(model: keras.Model, cache: FrozenActivations, indices: np.ndarray, batch_size: int = 16) -> float:
    """Largest |probability difference| on ``indices`` between the whole network on the images
    and its top on the cached clean activations (float16 rounding and precision only)."""
    boundary = cache.phases[-1].boundary
    full = model.predict(scale_images(cache.training_set.images[indices]).numpy(), batch_size=batch_size, verbose=0)
    cached = submodel(model, start=boundary).predict(
        cache.clean[boundary][indices].astype(np.float32), batch_size=batch_size, verbose=0
    )
    return float(np.abs(full - cached).max())


def _merge_histories(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    keys = dict.fromkeys(k for h in histories for k in h)
    return {k: [v for h in histories for v in h.get(k, [])] for k in keys}


def fit_phases(
    builder: ModelBuilder,
    streams: TransferStreams,
    job: FitJob,
    *,
    on_trained: Callable[[keras.Model], None] | None = None,
    models: ModelPool | None = None,
) -> FitResult:
    """``loop.fit_model`` for a phased transfer model: one MLflow run holding a nested run per phase.

    Each phase starts from the previous phase's head. The result's metrics are the last phase's
    (best weights); ``on_trained`` gets the whole assembled network. ``builder`` must be the
    cache's own (the whole network); ``models`` reuses the phases' top models across folds. Every
    run also carries the cache's tags.
    """
    cache = streams.cache
    if builder is not cache.builder:
        raise ValueError("fit_phases trains the network its activation cache was computed with")
    config, learning_rate, run_name = job.config, job.learning_rate, job.run_name
    train_idx, val_idx = job.train_idx, job.val_idx
    run_params = dict(job.run_params)
    run_tags = {**job.run_tags, **cache.tags}
    precision = runtime.resolve_precision(config.precision)
    params = {
        **config.as_params(), "learning_rate": learning_rate, "precision_resolved": precision,
        "n_train": len(train_idx), "n_val": len(val_idx),
        "n_params": sum(w.size for w in cache.initial_weights),  # the whole network's; phase runs log their top's
        "phases": "; ".join(f"{p.name} above {p.boundary} at lr x{p.learning_rate_factor:g}" for p in cache.phases),
        **run_params,
    }
    tags = {**tracking.environment_tags(precision, config.strategy), "model": config.model_name, **run_tags}
    results: list[FitResult] = []
    models = ModelPool() if models is None else models
    with tracking.child_run(run_name, params, tags, enabled=config.track) as run_id:
        head: dict[str, list[np.ndarray]] = {}
        for phase in cache.phases:
            phase_config = replace(
                config,
                max_epochs=phase.max_epochs or config.max_epochs,
                early_stopping_patience=phase.early_stopping_patience or config.early_stopping_patience,
            )
            top_builder, phase_streams = streams.for_phase(phase)
            phase_job = replace(
                job, learning_rate=learning_rate * phase.learning_rate_factor, config=phase_config,
                run_name=f"{run_name} {phase.name}",
                run_params={**run_params, "phase": phase.name, "boundary": phase.boundary},
                run_tags={**run_tags, "phase": phase.name},
            )
            result = fit_model(top_builder, phase_streams, phase_job, models=_HeadStart(models, head) if head else models)
            head = head_weights(result.model)
            results.append(result)
        last = results[-1]
        epochs_before = sum(r.epochs_run for r in results[:-1])
        seconds = sum(r.seconds for r in results)
        epochs_run = epochs_before + last.epochs_run
        history = _merge_histories([r.history for r in results])
        tracking.log_metrics(last.metrics, step=epochs_run)
        tracking.log_metrics({"best_epoch": epochs_before + last.best_epoch, "epochs_run": epochs_run,
                              "train_seconds": seconds, **{f"{p.name}_epochs_run": r.epochs_run for p, r in zip(cache.phases, results)}})
        tracking.log_training_curves(history, f"{run_name} ({' then '.join(p.name for p in cache.phases)})")
        if on_trained is not None:
            on_trained(assemble(cache, last.model, cache.phases[-1].boundary))
    return FitResult(last.model, history, last.metrics, epochs_before + last.best_epoch, epochs_run, seconds, run_id,
                     last.still_improving)


class _HeadStart:
    """A ``ModelPool`` whose reset models start their head from the previous phase's weights."""

    def __init__(self, models: ModelPool, head: dict[str, list[np.ndarray]]):
        self.models, self.head = models, head

    def get(self, *args: Any, **kwargs: Any) -> tuple[keras.Model, str]:
        model, precision = self.models.get(*args, **kwargs)
        for name, weights in self.head.items():
            model.get_layer(name).set_weights(weights)
        return model, precision
