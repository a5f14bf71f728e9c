"""Evaluate-stage test kit: tiny real Keras models and a tiny cohort as the upstream stages write it."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

SIZE = 16


def tiny_image_model(size: int = SIZE, num_classes: int = 2, seed: int = 0) -> keras.Model:
    """conv -> pool -> global average -> softmax, named like the project's models' output layer."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="class_probs")(x)
    return keras.Model(image, out)


def fake_cohort(n_patients: int = 12, scans_per_patient: int = 2, size: int = SIZE, seed: int = 0):
    """model inputs at two sizes, a split table (every third patient in test, osteopenia included)
    and a manifest with clinical columns, as the upstream stages write them."""
    rng = np.random.default_rng(seed)
    labels = ["normal", "osteoporosis", "osteopenia"]
    rows = []
    for p in range(n_patients):
        for s in range(scans_per_patient):
            rows.append({"scan_id": f"s{p:02d}{s}", "patient_id": f"p{p:02d}", "label": labels[p % 3],
                         "partition": "test" if p % 4 == 3 else "train", "fold": -1 if p % 4 == 3 else p % 2})
    table = pd.DataFrame(rows)
    order = rng.permutation(len(table))  # the model inputs are not in split-table order
    ids = table["scan_id"].to_numpy()[order]
    inputs = {s: {"scan_id": ids, "images": rng.integers(0, 255, (len(ids), s, s, 3), dtype=np.uint8)}
              for s in (size, 2 * size)}
    manifest = table[["scan_id", "patient_id", "label"]].assign(
        age=rng.integers(50, 80, len(table)), sex=np.where(rng.random(len(table)) < 0.5, "F", "M"),
        bmi=rng.normal(25, 3, len(table)), fracture_history=rng.integers(0, 2, len(table)))
    return inputs, table, manifest

