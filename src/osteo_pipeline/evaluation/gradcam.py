"""Grad-CAM (Selvaraju et al., 2017) for the project's Keras image models.

The heatmap of class c over a convolutional layer A (channels k) is
ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d y_c / d A_k, where y_c is the class
logit (the pre-softmax score of the ``class_probs`` layer; the probability where there is no
such layer). It is upsampled to the input size and scaled to [0, 1] per image.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Layers whose 4-D output is not a feature map worth explaining (they only resample or copy one).
_PASS_THROUGH = (
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
    keras.layers.SpatialDropout2D, keras.layers.InputLayer, keras.layers.Resizing,
    keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
)
_OWN_INPUT_LAYERS = {"osteo_resize", "osteo_preprocess"}  # the transfer models' fixed input layers


def gradcam_layer(model: keras.Model) -> str:
    """The last layer with a 4-D feature-map output that is not pooling, dropout or resizing.

    CNN21: its last Conv2D. Transfer models: the backbone's last convolutional block output
    (VGG ``block5_conv3``, ResNet50 ``conv5_block3_out``, InceptionV3 ``mixed10``).
    """
    for layer in reversed(model.layers):
        if layer.name in _OWN_INPUT_LAYERS or isinstance(layer, _PASS_THROUGH):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used more than once has no single output
            continue
        if len(shape) == 4:
            return layer.name
    raise ValueError(f"{model.name} has no convolutional feature map to explain")


def _score_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.layers.Layer | None]:
    """A model giving (feature map, logits input) and the softmax Dense layer to take logits from."""
    last = model.layers[-1]
    softmax_dense = (
        last if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax" else None
    )
    outputs = [model.get_layer(layer_name).output, softmax_dense.input if softmax_dense is not None else model.output]
    return keras.Model(model.inputs, outputs), softmax_dense


def grad_cam(
    model: keras.Model, images: np.ndarray, class_index: np.ndarray | int, layer_name: str | None = None
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] of ``class_index`` (one per image, or one for all) for float
    images in [0, 1] of shape (N, H, W, C). An all-zero map means no positive evidence."""
    images = np.asarray(images, dtype=np.float32)
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (len(images),))
    score_model, dense = _score_model(model, layer_name or gradcam_layer(model))
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        feature_map, head = score_model(x, training=False)
        if dense is not None:  # logits: the softmax Dense layer without its activation
            head = tf.matmul(tf.cast(head, tf.float32), tf.cast(dense.kernel, tf.float32))
            if dense.use_bias:
                head = head + tf.cast(dense.bias, tf.float32)
        score = tf.gather(head, classes, axis=1, batch_dims=1)
    grads = tape.gradient(score, feature_map)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), axis=-1))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    return np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The image (uint8 or [0, 1], gray or RGB) with the heatmap blended on top: float RGB in [0, 1]."""
    import matplotlib

    base = np.asarray(image, dtype=np.float32)
    base = base / 255.0 if base.max() > 1.0 else base
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=-1)
    colour = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3]
    weight = alpha * np.clip(heatmap, 0, 1)[..., None]  # cold regions keep the scan visible
    return np.clip((1 - weight) * base[..., :3] + weight * colour, 0, 1)
