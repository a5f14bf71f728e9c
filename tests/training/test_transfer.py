"""Transfer learning over cached frozen activations: the saved whole network predicts what the
cached path trained and predicted, every phase, and nothing below a phase's cut changes."""

from __future__ import annotations

import dataclasses
from functools import partial

import keras
import numpy as np
import pytest

from osteo_pipeline.models.backbones import build_transfer_model, submodel
from osteo_pipeline.training.data import select_training_set
from osteo_pipeline.training.loop import FitJob, TrainingConfig
from osteo_pipeline.imaging.preprocess import scale_images
from osteo_pipeline.training.transfer import (
    TransferStreams,
    build_top,
    cache_activations,
    export_gap,
    fit_phases,
    transfer_phases,
)

SIZE = 32  # the smallest input VGG and ResNet take: real graphs, tiny arithmetic
POLICY = {"rotation_deg": 40, "zoom": 0.2, "horizontal_flip": True, "seed": 3}  # Table 3's kind, short
# float16 cache vs float32 images: observed gaps are 0 to 5e-5; training moves them > 2e-2
TOLERANCE = 1e-3


def test_phases_are_the_head_then_the_unfrozen_blocks():
    head, fine = transfer_phases("vgg16", 1, learning_rate_factor=0.1, max_epochs=3, early_stopping_patience=2)
    assert (head.name, head.boundary, head.learning_rate_factor, head.max_epochs) == ("head", "block5_pool", 1.0, None)
    assert (fine.name, fine.boundary, fine.learning_rate_factor, fine.max_epochs) == ("fine_tune", "block4_pool", 0.1, 3)
    assert [p.name for p in transfer_phases("inceptionv3", 0)] == ["head"]


def _cache(inputs, backbone: str):
    """A tiny training set, its network and its activations cached at both phase boundaries (2 augmented views)."""
    model_input, split_table = inputs
    small = {**model_input, "images": model_input["images"][:, ::3, ::3][:, :SIZE, :SIZE]}  # 100 -> 32 px
    ts = select_training_set(small, split_table, "binary")
    builder = partial(build_transfer_model, backbone=backbone, dense_units=8, dropout=0.0)
    keras.utils.set_random_seed(0)
    network = builder(input_shape=(SIZE, SIZE, 3), num_classes=2)
    phases = transfer_phases(backbone, 1, learning_rate_factor=0.5, max_epochs=2, early_stopping_patience=2)
    cache = cache_activations(builder, network.get_weights(), ts, phases, augmentation_policy=POLICY,
                              views_per_scan=2, batch_size=8, tags={"pretrained": "false"})
    return network, cache


@pytest.fixture(scope="module")
def vgg16(inputs):
    return _cache(inputs, "vgg16")


def test_the_cache_holds_the_frozen_networks_activations_of_clean_and_augmented_views(vgg16):
    network, cache = vgg16
    n = len(cache.training_set.labels)
    images = scale_images(cache.training_set.images).numpy()
    for boundary in cache.clean:
        clean, views = cache.clean[boundary], cache.views[boundary]
        assert clean.dtype == np.float16 and views.dtype == np.float16  # compact
        assert views.shape == (n, 2, *clean.shape[1:])
        expected = np.asarray(submodel(network, stop=boundary)(images, training=False))
        np.testing.assert_allclose(clean.astype(np.float32), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
        # augmented views are other images: unlike the clean one and unlike each other
        assert not np.allclose(views[:, 0], clean, atol=1e-2) and not np.allclose(views[:, 0], views[:, 1], atol=1e-2)


# Phase 1 alone on VGG16; both phases on ResNet50, whose unfrozen block holds batch normalisation.
@pytest.mark.parametrize(("backbone", "n_phases"), [("vgg16", 1), ("resnet50", 2)])
def test_the_assembled_network_predicts_what_the_cached_path_trained(request, inputs, backbone, n_phases):
    """The whole network on images == its trained top on cached activations, training moved the
    predictions far more than that, and the layers below the last cut keep their cached weights."""
    network, cache = request.getfixturevalue("vgg16") if backbone == "vgg16" else _cache(inputs, backbone)
    cache = dataclasses.replace(cache, phases=cache.phases[:n_phases])
    boundary = cache.phases[-1].boundary
    ts = cache.training_set
    idx = np.arange(len(ts.labels))
    config = TrainingConfig.from_params(
        {"max_epochs": 2, "early_stopping_patience": 2, "batch_size": 8, "track": False, "precision": "float32"},
        model_name=backbone,
    )
    kept = {}
    job = FitJob(idx, idx, learning_rate=1e-2, config=config, augmentation_policy=POLICY, run_name="equivalence")
    result = fit_phases(cache.builder, TransferStreams(cache, config.batch_size), job,
                        on_trained=partial(kept.setdefault, "net"))
    assert result.epochs_run == 2 * n_phases  # patience 2: no early stop
    whole = kept["net"]
    activations = cache.clean[boundary].astype(np.float32)
    cached_probs = np.asarray(result.model(activations, training=False))
    whole_probs = np.asarray(whole(scale_images(ts.images), training=False))
    gap = np.abs(whole_probs - cached_probs).max()
    assert gap < TOLERANCE
    if backbone == "vgg16":  # what fit_final reports, measured the same way
        assert export_gap(whole, cache, idx) == pytest.approx(gap, abs=1e-5)
    untrained = build_top(activations.shape[1:], 2, cache=cache, boundary=boundary)
    assert np.abs(np.asarray(untrained(activations, training=False)) - cached_probs).max() > 10 * TOLERANCE
    below, frozen = submodel(whole, stop=boundary), submodel(network, stop=boundary)
    for mine, theirs in zip(below.weights, frozen.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    with pytest.raises(ValueError, match="activation cache"):
        fit_phases(partial(build_transfer_model, backbone=backbone), TransferStreams(cache, 8),
                   FitJob(idx, idx, learning_rate=1e-3, config=config, run_name="wrong"))
