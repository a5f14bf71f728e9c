"""Nodes of the transfer-learning template (vgg16, vgg19, resnet50, inceptionv3 namespaces).

``params:model`` is the namespace's own block (name, backbone, unfreeze_blocks,
registered_model_name); ``params:train_baselines`` holds the shared ``training`` protocol (CNN21's)
and the ``transfer`` settings. TensorFlow is imported inside the nodes (see ``train_cnn21.nodes``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import keras

    from osteo_pipeline.training.data import TrainingSet
    from osteo_pipeline.training.transfer import FrozenActivations


def cache_frozen_activations(
    training_set: TrainingSet, augmentation_policy: dict[str, Any], model: dict[str, Any], params: dict[str, Any], seed: int
) -> tuple[FrozenActivations, dict[str, Any]]:
    """Build the network, load the ImageNet backbone if it can be had, and cache its frozen
    activations at the phase boundaries; with ``baseline_info``, which says whether it was pretrained."""
    import keras

    from osteo_pipeline.models.backbones import build_transfer_model, load_backbone_weights, resolve_weights
    from osteo_pipeline.training.loop import TrainingConfig
    from osteo_pipeline.training.runtime import precision_policy
    from osteo_pipeline.training.transfer import cache_activations, transfer_phases

    transfer, config = params["transfer"], TrainingConfig.for_model(params["training"], model, seed)
    backbone = model["backbone"]
    builder = partial(build_transfer_model, backbone=backbone, input_size=transfer["input_size"], **transfer["head"])
    keras.utils.set_random_seed(seed)  # the head's initial weights (and a random backbone's)
    with precision_policy("float32"):
        network = builder(input_shape=tuple(training_set.images.shape[1:]), num_classes=len(training_set.class_names))
    source = resolve_weights(backbone, transfer["weights"], transfer["weights_dir"], transfer["allow_download"])
    source = load_backbone_weights(network, backbone, source)
    phases = transfer_phases(backbone, model["unfreeze_blocks"], **transfer["fine_tune"])
    warnings = [] if source.pretrained else [
        f"{model['name']} was trained WITHOUT ImageNet weights ({source.description}): a randomly initialised "
        "backbone, not the paper's pretrained transfer model. Supply the weights (transfer.weights_dir or the Keras "
        "cache) to train it as intended."
    ]
    info = {
        "model": model["name"], "family": "transfer", "backbone": backbone,
        "pretrained": source.pretrained, "weights": source.description, "warnings": warnings,
        "input_shape": list(training_set.images.shape[1:]), "input_size": int(transfer["input_size"]),
        "unfreeze_blocks": int(model["unfreeze_blocks"]),
        "phases": [{"name": p.name, "boundary": p.boundary, "learning_rate_factor": p.learning_rate_factor,
                    "max_epochs": p.max_epochs or config.max_epochs} for p in phases],
        "class_names": list(training_set.class_names), "label_scheme": training_set.counts.get("label_scheme"),
        "registered_model_name": model["registered_model_name"],
    }
    cache = cache_activations(
        builder, network.get_weights(), training_set, phases,
        augmentation_policy=augmentation_policy if config.augment else None,
        views_per_scan=int(transfer["views_per_scan"]), batch_size=config.batch_size, precision=config.precision,
        info=info, tags={"pretrained": str(source.pretrained).lower(), "backbone": backbone,
                         "weights_source": source.description[:500]},
    )
    return cache, cache.info


def cross_validate_transfer(
    frozen: FrozenActivations,
    augmentation_policy: dict[str, Any],
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    model: dict[str, Any],
    params: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, dict[str, float]]]:
    """CNN21's cross-validation (folds x learning-rate grid) over the cached activations: per-fold
    metrics, the CV summary with the chosen rate, and its CV means as parent-run metrics."""
    from osteo_pipeline.training.loop import TrainingConfig, cross_validate, cv_outputs, summarise_cv
    from osteo_pipeline.training.transfer import TransferStreams, fit_phases

    config = TrainingConfig.for_model(params["training"], model, seed)
    fold_metrics = cross_validate(
        frozen.builder, frozen.training_set, config=config, augmentation_policy=augmentation_policy,
        class_weights=class_weights, data_fingerprint=data_fingerprint,
        streams=TransferStreams(frozen, config.batch_size), fit=fit_phases,
    )
    summary = {**summarise_cv(fold_metrics), "pretrained": frozen.info["pretrained"]}
    return fold_metrics, *cv_outputs(summary, frozen.training_set, data_fingerprint)


def fit_final_transfer(
    frozen: FrozenActivations,
    augmentation_policy: dict[str, Any],
    class_weights: dict[str, Any],
    data_fingerprint: dict[str, Any],
    cv_summary: dict[str, Any],
    model: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    roi_resize: dict[str, Any],
    ingest: dict[str, Any],
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit at the chosen rate on the whole training partition; the whole float32 network and a
    report, which also gives how far the network's own predictions are from the cached path's.
    The registered model takes raw scans, preprocessed with ``roi_resize``'s settings and ingest's limits."""
    from osteo_pipeline.serving.preprocessing import preprocessing_settings
    from osteo_pipeline.training.loop import TrainingConfig, final_fit, final_split
    from osteo_pipeline.training.transfer import TransferStreams, export_gap, fit_phases

    config = TrainingConfig.for_model(params["training"], model, seed)
    network, report = final_fit(
        frozen.builder, frozen.training_set, learning_rate=cv_summary["best_learning_rate"], config=config,
        augmentation_policy=augmentation_policy, class_weights=class_weights, data_fingerprint=data_fingerprint,
        streams=TransferStreams(frozen, config.batch_size), fit=fit_phases,
        preprocessing=preprocessing_settings(roi_resize, ingest),
    )
    _, val_idx = final_split(frozen.training_set, config.final_val_fraction, config.seed)
    gap = export_gap(network, frozen, val_idx, config.batch_size)
    return network, {**report, "pretrained": frozen.info["pretrained"], "cache_vs_network_max_abs_prob_diff": gap}
