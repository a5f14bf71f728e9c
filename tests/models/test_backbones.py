"""Transfer-learning backbones: preprocessing inside the model, cut points, honest weights."""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import pytest

from osteo_pipeline.models import backbones
from osteo_pipeline.models.backbones import (
    BACKBONES,
    block_boundaries,
    build_transfer_model,
    load_backbone_weights,
    resolve_weights,
    submodel,
)

# Smallest inputs each family takes: the graphs are the real ones, the arithmetic is tiny.
SIZES = {"vgg16": 32, "vgg19": 32, "resnet50": 32, "inceptionv3": 75, "densenet121": 32}
PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "vgg19": keras.applications.vgg19.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "inceptionv3": keras.applications.inception_v3.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def model(request):
    name = request.param
    size = SIZES[name]
    keras.utils.set_random_seed(0)
    return name, build_transfer_model((size, size, 3), 2, backbone=name, dense_units=8)


def test_the_model_takes_unit_range_images_and_applies_the_backbones_own_preprocessing(model):
    name, net = model
    size = SIZES[name]
    x = np.random.default_rng(0).random((2, size, size, 3)).astype(np.float32)
    x[..., 1] *= 0.5  # distinct channels: the RGB -> BGR swap must show
    ours = np.asarray(submodel(net, stop=backbones.PREPROCESS_LAYER)(x))
    np.testing.assert_allclose(ours, PREPROCESS[name](x * 255.0), atol=1e-3)
    assert not net.get_layer(backbones.PREPROCESS_LAYER).trainable


def test_every_block_boundary_is_a_clean_cut(model):
    """Bottom then top == the whole network, at every cut the phases can use (up to 2 blocks)."""
    name, net = model
    size = SIZES[name]
    x = np.random.default_rng(1).random((2, size, size, 3)).astype(np.float32)
    whole = np.asarray(net(x, training=False))
    for boundary in {b for n in range(3) for b in block_boundaries(name, n)}:
        bottom, top = submodel(net, stop=boundary), submodel(net, start=boundary)
        np.testing.assert_allclose(np.asarray(top(bottom(x, training=False), training=False)), whole, atol=1e-6)


def test_block_boundaries_name_the_backbone_output_then_the_unfrozen_blocks_input():
    assert block_boundaries("vgg16", 0) == ("block5_pool",)
    assert block_boundaries("vgg19", 1) == ("block5_pool", "block4_pool")
    assert block_boundaries("resnet50", 1) == ("conv5_block3_out", "conv5_block2_out")
    assert block_boundaries("resnet50", 3) == ("conv5_block3_out", "conv4_block6_out")
    assert block_boundaries("inceptionv3", 2) == ("mixed10", "mixed8")
    assert block_boundaries("densenet121", 1) == ("relu", "pool4_pool")
    with pytest.raises(ValueError, match="unfreeze_blocks"):
        block_boundaries("vgg16", 5)
    with pytest.raises(ValueError, match="unknown backbone"):
        block_boundaries("alexnet", 1)


def test_a_smaller_working_size_resizes_inside_the_model():
    net = build_transfer_model((300, 300, 3), 2, backbone="inceptionv3", input_size=75, dense_units=8)
    assert net.input_shape == (None, 300, 300, 3)
    assert net.get_layer(backbones.RESIZE_LAYER).output.shape[1:3] == (75, 75)
    with pytest.raises(ValueError, match="at least 75"):
        build_transfer_model((300, 300, 3), 2, backbone="inceptionv3", input_size=64)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Keras cache: no weights anywhere."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


def test_without_weights_and_without_download_the_backbone_is_random_and_says_so(offline, caplog):
    source = resolve_weights("vgg16", "imagenet", weights_dir=str(offline), allow_download=False)
    assert not source.pretrained and source.weights is None
    assert "download disabled" in source.description
    net = build_transfer_model((32, 32, 3), 2, backbone="vgg16", dense_units=8)
    with caplog.at_level(logging.WARNING):
        assert load_backbone_weights(net, "vgg16", source).pretrained is False
    assert "NO ImageNet weights" in caplog.text


def test_a_failed_download_falls_back_to_a_random_backbone(offline, monkeypatch, caplog):
    build = BACKBONES["vgg16"].constructor

    def unreachable(weights=None, **kwargs):  # what keras.applications does offline
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known")
        return build(weights=weights, **kwargs)

    monkeypatch.setitem(BACKBONES, "vgg16", dataclasses.replace(BACKBONES["vgg16"], constructor=unreachable))
    source = resolve_weights("vgg16", "imagenet", allow_download=True)
    assert source.weights == "imagenet"  # nothing local: the download is the only way
    with caplog.at_level(logging.WARNING):
        loaded = load_backbone_weights(build_transfer_model((32, 32, 3), 2, backbone="vgg16"), "vgg16", source)
    assert not loaded.pretrained and "download failed" in loaded.description and "NO ImageNet" in caplog.text


def test_weights_supplied_offline_are_found_and_loaded(offline):
    """A no-top file in weights_dir (Keras' own legacy .h5 layout) is used, without any download."""
    h5py = pytest.importorskip("h5py")
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    keras.utils.set_random_seed(7)
    reference = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = offline / BACKBONES["vgg16"].weights_file
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, reference)
    source = resolve_weights("vgg16", "imagenet", weights_dir=str(offline), allow_download=False)
    assert source.pretrained and source.weights == str(path)
    net = build_transfer_model((32, 32, 3), 2, backbone="vgg16", dense_units=8)
    assert load_backbone_weights(net, "vgg16", source).pretrained
    np.testing.assert_array_equal(net.get_layer("block5_conv3").get_weights()[0],
                                  reference.get_layer("block5_conv3").get_weights()[0])
    with pytest.raises(FileNotFoundError):
        resolve_weights("vgg16", str(offline / "missing.h5"))
