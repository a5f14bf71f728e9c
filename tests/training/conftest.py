"""Tiny synthetic training data for the loop: learnable (a bright square marks osteoporosis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

POLICY = {
    "rotation_deg": 40, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2, "zoom": 0.2,
    "horizontal_flip": True, "vertical_flip": False, "fill_mode": "constant", "seed": 42,
}
SIZE = 100  # CNN21's valid convolutions need >= 98 px


def synthetic_inputs(n_patients: int = 24, scans_per_patient: int = 2, size: int = SIZE, n_folds: int = 2, seed: int = 0):
    """(model_input, split_table) as split_augment writes them: patient-grouped folds, 25% test."""
    rng = np.random.default_rng(seed)
    labels = np.array(["normal", "osteopenia", "osteoporosis"])
    patient_label = labels[np.arange(n_patients) % 3]
    rows, images = [], []
    for p in range(n_patients):
        partition = "test" if p % 4 == 3 else "train"
        for s in range(scans_per_patient):
            img = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
            if patient_label[p] == "osteoporosis":
                img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] += 150
            elif patient_label[p] == "osteopenia":
                img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] += 80
            images.append(img)
            rows.append({"scan_id": f"p{p:02d}_s{s}", "patient_id": f"p{p:02d}", "label": patient_label[p], "partition": partition})
    table = pd.DataFrame(rows)
    train_patients = table.loc[table.partition == "train", "patient_id"].unique()
    fold_of = {pid: i % n_folds for i, pid in enumerate(train_patients)}
    table["fold"] = [fold_of.get(pid, -1) for pid in table.patient_id]
    return {"scan_id": table.scan_id.to_numpy(), "images": np.stack(images)}, table


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs()


@pytest.fixture
def policy():
    return dict(POLICY)
