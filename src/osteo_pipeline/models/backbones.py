"""Transfer-learning baselines (paper 1, section 3.3): VGG16, VGG19, ResNet50 and InceptionV3.

Each model is one flat Keras functional graph: [0, 1] image (the CNN21 convention, see
``training.data.scale_images``) -> optional resize -> the backbone's own ImageNet preprocessing
(a fixed 1x1 convolution) -> ``keras.applications`` backbone without its top -> a new head
(global average pooling, dense, dropout, softmax). Flat, so the graph can be cut at any block
boundary: the frozen part below a boundary runs once (``training.transfer``), the part above it
trains. A boundary is the output of a whole block, a single tensor every path passes through.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

logger = logging.getLogger(__name__)

# Our layers (everything else in a transfer model belongs to the backbone).
RESIZE_LAYER = "osteo_resize"
PREPROCESS_LAYER = "osteo_preprocess"
HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "class_probs")
_OWN_LAYERS = {RESIZE_LAYER, PREPROCESS_LAYER, *HEAD_LAYERS}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"
_TORCH_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mode "torch" (DenseNet), on [0, 1] RGB


@dataclass(frozen=True)
class BackboneSpec:
    """A ``keras.applications`` family and where it can be cut."""

    constructor: Callable[..., keras.Model]
    preprocessing: str  # "caffe" (RGB->BGR, minus ImageNet mean), "tf" (scale to [-1, 1]) or "torch" (ImageNet mean/std)
    blocks: tuple[str, ...]  # block output layers, bottom to top; the last is the backbone output
    weights_file: str  # the no-top ImageNet file keras.applications caches under ~/.keras/models
    min_size: int


def _units(stage_units: dict[int, int]) -> tuple[str, ...]:
    """ResNet residual-unit outputs, ``conv2_block1_out`` ... ``conv5_block3_out``."""
    return tuple(f"conv{s}_block{b}_out" for s, n in stage_units.items() for b in range(1, n + 1))


_VGG_BLOCKS = tuple(f"block{i}_pool" for i in range(1, 6))
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        keras.applications.VGG16, "caffe", _VGG_BLOCKS, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 32
    ),
    "vgg19": BackboneSpec(
        keras.applications.VGG19, "caffe", _VGG_BLOCKS, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", 32
    ),
    "resnet50": BackboneSpec(
        keras.applications.ResNet50, "caffe", _units({2: 3, 3: 4, 4: 6, 5: 3}),
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 32,
    ),
    "inceptionv3": BackboneSpec(
        keras.applications.InceptionV3, "tf", tuple(f"mixed{i}" for i in range(11)),
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", 75,
    ),
    # Not in the papers and not trained by default: declare a `densenet121` block (family
    # transfer) in parameters_train_baselines.yml to add it to the study.
    "densenet121": BackboneSpec(
        keras.applications.DenseNet121, "torch", ("pool1", "pool2_pool", "pool3_pool", "pool4_pool", "relu"),
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", 32,
    ),
}


def get_spec(backbone: str) -> BackboneSpec:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: use one of {sorted(BACKBONES)}")
    return BACKBONES[backbone]


def preprocessing_layer(mode: str) -> layers.Conv2D:
    """The backbone's ``preprocess_input`` for [0, 1] input as one fixed, built-in layer.

    A 1x1 convolution holds x*255, the channel order and the mean offset, so the saved model
    needs no custom code to load; float32 so mixed precision cannot round pixel values.
    """
    if mode == "caffe":
        kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for out_channel in range(3):  # BGR out from RGB in
            kernel[0, 0, 2 - out_channel, out_channel] = 255.0
        bias = -np.asarray(_CAFFE_MEAN_BGR, dtype=np.float32)
    elif mode == "tf":
        kernel = (2.0 * np.eye(3, dtype=np.float32)).reshape(1, 1, 3, 3)
        bias = -np.ones(3, dtype=np.float32)
    elif mode == "torch":
        mean, std = (np.asarray(v, dtype=np.float32) for v in _TORCH_MEAN_STD)
        kernel = np.diag(1.0 / std).astype(np.float32).reshape(1, 1, 3, 3)
        bias = -mean / std
    else:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    return layers.Conv2D(
        3, 1, name=PREPROCESS_LAYER, trainable=False, dtype="float32",
        kernel_initializer=keras.initializers.Constant(kernel.tolist()),
        bias_initializer=keras.initializers.Constant(bias.tolist()),
    )


def build_transfer_model(
    input_shape: tuple[int, int, int] = (300, 300, 3),
    num_classes: int = 2,
    *,
    backbone: str = "vgg16",
    input_size: int | None = None,
    dense_units: int = 256,
    dropout: float = 0.5,
    l2: float = 1e-4,
) -> keras.Model:
    """Backbone (random weights: ``load_backbone_weights`` fills them) plus a new softmax head.

    Input: float32 images in [0, 1] of ``input_shape``. ``input_size`` (default: the input's own
    size) resizes inside the model first, so a model trained small still takes the catalog images.
    """
    spec = get_spec(backbone)
    size = int(input_size or input_shape[0])
    if size < spec.min_size:
        raise ValueError(f"{backbone} needs inputs of at least {spec.min_size} px, got {size}")
    image = keras.Input(shape=input_shape, name="image")
    x = image
    if (size, size) != tuple(input_shape[:2]):
        x = layers.Resizing(size, size, interpolation="area", name=RESIZE_LAYER, dtype="float32")(x)
    x = preprocessing_layer(spec.preprocessing)(x)
    base = spec.constructor(weights=None, include_top=False, input_tensor=x)
    reg = keras.regularizers.L2(l2) if l2 else None
    x = layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=reg, name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 keeps the softmax and the loss stable under mixed precision (as in CNN21)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32",
                           name="class_probs")(x)
    return keras.Model(image, outputs, name=f"{backbone}_transfer")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers of a transfer model, in graph order (ours excluded)."""
    return [layer for layer in model.layers if layer.name not in _OWN_LAYERS and not isinstance(layer, keras.layers.InputLayer)]


def submodel(model: keras.Model, start: str | None = None, stop: str | None = None) -> keras.Model:
    """The part of ``model`` from the output of layer ``start`` (default: the input) to the
    output of layer ``stop`` (default: the model output). Layers are shared, not copied."""
    inputs = model.inputs[0] if start is None else model.get_layer(start).output
    outputs = model.outputs[0] if stop is None else model.get_layer(stop).output
    return keras.Model(inputs, outputs, name=f"{model.name}_{start or 'input'}_to_{stop or 'output'}")


def block_boundaries(backbone: str, unfreeze_blocks: int) -> tuple[str, ...]:
    """Cut points of the training phases, top first: the backbone output (phase 1, all frozen),
    then the input of the last ``unfreeze_blocks`` blocks (phase 2, those blocks train)."""
    blocks = get_spec(backbone).blocks
    if not 0 <= unfreeze_blocks < len(blocks):
        raise ValueError(f"unfreeze_blocks must be in 0..{len(blocks) - 1} for {backbone}, got {unfreeze_blocks}")
    top = blocks[-1]
    return (top,) if unfreeze_blocks == 0 else (top, blocks[-1 - unfreeze_blocks])


@dataclass(frozen=True)
class WeightsSource:
    """Where the backbone weights come from: a file, Keras' download, or nowhere (random init)."""

    weights: str | None  # what keras.applications gets: a file path, "imagenet", or None
    pretrained: bool
    description: str


def keras_cache_dir() -> Path:
    """Keras' download cache (``$KERAS_HOME/models``, default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resolve_weights(
    backbone: str, weights: str | None = "imagenet", weights_dir: str | None = None, allow_download: bool = True
) -> WeightsSource:
    """Find the backbone weights without touching the network unless it must.

    ``imagenet``: the no-top file in ``weights_dir``, else in the Keras cache, else a download
    (if allowed; done by ``load_backbone_weights``). A path: that file. ``None``: random init.
    """
    if weights in (None, "none", "random"):
        return WeightsSource(None, False, "random initialisation (weights: null)")
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{backbone} weights file {weights} does not exist")
        return WeightsSource(str(weights), True, f"file {weights}")
    spec = get_spec(backbone)
    supplied = Path(weights_dir) / spec.weights_file if weights_dir else None
    if supplied is not None and supplied.is_file():
        return WeightsSource(str(supplied), True, f"imagenet ({supplied})")
    cached = keras_cache_dir() / spec.weights_file
    if cached.is_file():
        return WeightsSource(str(cached), True, f"imagenet (Keras cache {cached})")
    if allow_download:
        return WeightsSource("imagenet", True, f"imagenet (downloaded to {keras_cache_dir()})")
    return WeightsSource(None, False, f"random initialisation: {spec.weights_file} not in weights_dir "
                                      f"{weights_dir} nor {keras_cache_dir()}, and download disabled")


def load_backbone_weights(
    model: keras.Model, backbone: str, source: WeightsSource
) -> WeightsSource:
    """Put the pretrained backbone weights into ``model`` (a ``build_transfer_model`` graph).

    A failed download does not stop the run: the backbone keeps its random initialisation and
    the returned source says so (``pretrained`` False), with a warning. A supplied file that does
    not load is an error.
    """
    if source.weights is None:
        logger.warning("%s: NO ImageNet weights, %s; the baseline is trained from a random backbone",
                       backbone, source.description)
        return source
    spec = get_spec(backbone)
    size = int(model.get_layer(PREPROCESS_LAYER).output.shape[1])
    try:
        # a standalone copy: keras.applications loads files by its own layer list
        pretrained = spec.constructor(weights=source.weights, include_top=False, input_shape=(size, size, 3))
    except Exception as error:  # noqa: BLE001 - keras reports download failures as bare Exception
        if source.weights != "imagenet":
            raise
        fallback = WeightsSource(None, False, f"random initialisation: ImageNet download failed ({error})")
        logger.warning("%s: NO ImageNet weights, %s; the baseline is trained from a random backbone",
                       backbone, fallback.description)
        return fallback
    ours = [layer for layer in backbone_layers(model) if layer.weights]
    theirs = [layer for layer in pretrained.layers if layer.weights]
    if len(ours) != len(theirs):
        raise ValueError(f"{backbone}: {len(theirs)} weighted layers in the weights, {len(ours)} in the model")
    for target, layer in zip(ours, theirs, strict=True):
        target.set_weights(layer.get_weights())
    logger.info("%s: backbone weights from %s", backbone, source.description)
    return source
