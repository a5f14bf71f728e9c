"""Nodes of the ``split_augment`` pipeline."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.utils.class_weight import compute_class_weight

from osteo_pipeline.leakage import assert_patients_disjoint

log = logging.getLogger(__name__)

# Label schemes: which canonical labels each trains on (binary drops osteopenia).
SCHEMES = {"binary": ["normal", "osteoporosis"], "three_class": ["normal", "osteopenia", "osteoporosis"]}
SEVERITY = {"normal": 0, "osteopenia": 1, "osteoporosis": 2}


class SplitError(ValueError):
    """The cohort cannot be split as configured."""


def _patient_table(manifest: pd.DataFrame) -> pd.Series:
    """One label per patient: the most severe of their scans, so a patient is stratified once.

    Patients come in the order of their first scan's content hash, not of their pseudonyms: a
    pseudonym depends on the project's secret key, and the same scans and seed must give the
    same split on every machine.
    """
    severity = manifest["label"].map(SEVERITY)
    worst = severity.groupby(manifest["patient_id"]).max()
    order = manifest.groupby("patient_id")["scan_id"].min().sort_values().index
    return worst.loc[order].map({v: k for k, v in SEVERITY.items()})


def _check_enough_patients(patient_labels: pd.Series, needed: int, what: str) -> None:
    counts = patient_labels.value_counts()
    short = counts[counts < needed]
    if short.size:
        detail = ", ".join(f"{cls}: {n} patient(s)" for cls, n in short.items())
        raise SplitError(f"Too few patients for {what} (need at least {needed} per class): {detail}.")


def split_patients(scan_manifest: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Patient-grouped, class-stratified train/(val)/test split plus CV folds on the training part.

    Every class keeps its proportion at patient level; all scans of a patient land in one
    partition and, within training, in one fold. Osteopenia scans are split too, so the
    binary and three-class schemes share the same held-out patients.
    """
    n_folds = int(params["n_folds"])
    test_size, val_size = float(params["test_size"]), float(params.get("val_size") or 0.0)
    patients = _patient_table(scan_manifest)
    _check_enough_patients(patients, 2, "a stratified train/test split")
    train_p, test_p = train_test_split(
        patients.index.to_numpy(), test_size=test_size, stratify=patients.to_numpy(), random_state=seed
    )
    val_p = np.array([], dtype=train_p.dtype)
    if val_size > 0:  # the second paper's 70/15/15 variant: val taken from what is not test
        train_p, val_p = train_test_split(
            train_p, test_size=val_size / (1 - test_size), stratify=patients.loc[train_p].to_numpy(),
            random_state=seed,
        )
    partition = pd.Series("train", index=patients.index)
    partition.loc[test_p] = "test"
    partition.loc[val_p] = "val"

    table = scan_manifest[["scan_id", "patient_id", "label"]].copy()
    table["partition"] = table["patient_id"].map(partition)
    table["fold"] = -1
    train = table["partition"] == "train"
    _check_enough_patients(patients.loc[train_p], n_folds, f"{n_folds}-fold cross-validation on the training part")
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    train_rows = table.index[train]
    rank = pd.Series(np.arange(len(patients)), index=patients.index)  # key-independent group labels
    groups = table.loc[train, "patient_id"].map(rank)
    for fold, (_, val_idx) in enumerate(cv.split(train_rows, table.loc[train, "label"], groups)):
        table.loc[train_rows[val_idx], "fold"] = fold
    table = table.sort_values(["partition", "fold", "scan_id"]).reset_index(drop=True)
    assert_patients_disjoint(table)  # at run time, every run: a leak here would void every figure downstream
    log.info("split: %s", table.groupby(["partition", "label"]).size().to_dict())
    return table


def class_weights(split_table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Balanced class weights from the training labels, per label scheme (minority weighted up)."""
    train = split_table.loc[split_table["partition"] == "train", "label"]
    weights = {}
    for scheme, labels in SCHEMES.items():
        y = train[train.isin(labels)]
        present = [c for c in labels if (y == c).any()]
        if not present:
            continue
        w = compute_class_weight("balanced", classes=np.array(present), y=y.to_numpy())
        weights[scheme] = {c: float(v) for c, v in zip(present, w)}
    return weights


def augmentation_policy(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Validate the Table 3 augmentation parameters and return the policy used by training."""
    policy = {
        "rotation_deg": float(params["rotation_deg"]),
        "width_shift": float(params["width_shift"]),
        "height_shift": float(params["height_shift"]),
        "shear": float(params["shear"]),
        "zoom": float(params["zoom"]),
        "horizontal_flip": bool(params["horizontal_flip"]),
        "vertical_flip": bool(params["vertical_flip"]),
        "fill_mode": str(params.get("fill_mode", "constant")),
        "seed": int(seed),
    }
    for key in ("width_shift", "height_shift", "shear", "zoom"):
        if not 0 <= policy[key] < 1:
            raise ValueError(f"augmentation.{key} must be a fraction in [0, 1), got {policy[key]}")
    return policy


def augmentation_preview(
    model_input: dict[str, np.ndarray], split_table: pd.DataFrame, policy: dict[str, Any], n_scans: int, n_views: int
) -> plt.Figure:
    """Original training crops next to augmented views of them (training scans only, by construction)."""
    from osteo_pipeline.imaging.augment import augment_preview  # TensorFlow loads only when needed

    train_ids = set(split_table.loc[split_table["partition"] == "train", "scan_id"])
    idx = [i for i, s in enumerate(model_input["scan_id"]) if s in train_ids][:n_scans]
    images = model_input["images"][idx]
    views = augment_preview(images, policy, n_views)  # (n_scans, n_views, H, W, 3)
    fig, axes = plt.subplots(len(idx), n_views + 1, figsize=(1.6 * (n_views + 1), 1.6 * len(idx)), squeeze=False)
    for r in range(len(idx)):
        for c, img in enumerate([images[r], *views[r]]):
            axes[r][c].imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255)
            axes[r][c].axis("off")
    axes[0][0].set_title("original", fontsize=8)
    fig.suptitle("Training-time augmentation (Table 3 policy)")
    fig.tight_layout()
    return fig


def data_fingerprint(scan_manifest: pd.DataFrame, split_table: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Identify the data a model was trained on: manifest content hash, split seed, counts."""
    ids = "\n".join(sorted(scan_manifest["scan_id"]) + sorted(split_table["partition"] + ":" + split_table["scan_id"]))
    return {
        "manifest_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "split_seed": int(seed),
        "n_scans": int(len(scan_manifest)),
        "n_patients": int(scan_manifest["patient_id"].nunique()),
    }
