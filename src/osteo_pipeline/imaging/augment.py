"""On-the-fly training augmentation (paper Table 3) as seeded Keras preprocessing layers.

Table 3 gives width/height shift, shear and zoom as "0.2%". We read that as the Keras
``ImageDataGenerator`` argument value 0.2 (a fraction of the image: 20 %), which is what
such papers pass; a literal 0.2 % (0.3 px at 150 px) would be a no-op. Shear follows the
project brief: Keras 3 ``RandomShear(x_factor=0.2)``, i.e. up to 20 % of the width.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# Offsets keep the five layers' random streams independent while all derive from one seed.
_SEED_OFFSETS = {"rotation": 0, "translation": 1, "shear": 2, "zoom": 3, "flip": 4}


def build_augmenter(policy: dict[str, Any]) -> keras.Sequential:
    """Build the augmentation stack for float images in [0, 255], shape (B, H, W, C).

    Each image in a batch gets its own random transform. Usable inside ``tf.data``
    (``ds.map(lambda x, y: (aug(x, training=True), y))``) and eagerly on numpy arrays.
    """
    seed = int(policy.get("seed", 42))
    fill = {
        "fill_mode": policy.get("fill_mode", "constant"),
        "fill_value": float(policy.get("fill_value", 0.0)),
    }
    # float32 pinned: under a global mixed_bfloat16 policy the warps would otherwise run
    # in bf16, which has only 8 bits of mantissa for pixel coordinates.
    common = {"dtype": "float32"}
    layers: list[keras.layers.Layer] = []
    if policy.get("rotation_deg", 0):
        # RandomRotation's factor is a fraction of a full turn: 40/360 gives +-40 degrees.
        layers.append(
            keras.layers.RandomRotation(
                policy["rotation_deg"] / 360.0, seed=seed + _SEED_OFFSETS["rotation"], **fill, **common
            )
        )
    if policy.get("width_shift", 0) or policy.get("height_shift", 0):
        layers.append(
            keras.layers.RandomTranslation(
                height_factor=policy.get("height_shift", 0.0),
                width_factor=policy.get("width_shift", 0.0),
                seed=seed + _SEED_OFFSETS["translation"],
                **fill,
                **common,
            )
        )
    if policy.get("shear", 0):
        # x only, like ImageDataGenerator's single shear angle; RandomShear flips the sign at random.
        layers.append(
            keras.layers.RandomShear(
                x_factor=policy["shear"], seed=seed + _SEED_OFFSETS["shear"], **fill, **common
            )
        )
    if policy.get("zoom", 0):
        layers.append(
            keras.layers.RandomZoom(policy["zoom"], seed=seed + _SEED_OFFSETS["zoom"], **fill, **common)
        )
    flip_mode = {
        (True, True): "horizontal_and_vertical",
        (True, False): "horizontal",
        (False, True): "vertical",
    }.get((bool(policy.get("horizontal_flip")), bool(policy.get("vertical_flip"))))
    if flip_mode:
        layers.append(keras.layers.RandomFlip(flip_mode, seed=seed + _SEED_OFFSETS["flip"], **common))
    return keras.Sequential(layers, name="augmenter")


def augment_preview(images_uint8: np.ndarray, policy: dict[str, Any], n_views: int) -> np.ndarray:
    """Return ``n_views`` augmented views of each image: uint8 array (N, n_views, H, W, C).

    Deterministic for a given policy seed, so preview figures are reproducible.
    """
    augmenter = build_augmenter(policy)
    images = np.asarray(images_uint8, dtype=np.float32)
    views = [
        np.asarray(augmenter(images, training=True)) for _ in range(n_views)
    ]
    stacked = np.stack(views, axis=1) if views else np.empty((len(images), 0, *images.shape[1:]))
    return np.clip(np.rint(stacked), 0, 255).astype(np.uint8)
