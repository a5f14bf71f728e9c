"""Nodes of the ``split_augment`` pipeline (scikit-learn, matplotlib and TensorFlow are imported by
the nodes that use them, so loading the pipeline stays fast)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from osteo_pipeline.core.labels import CANONICAL, LABEL_SCHEMES
from osteo_pipeline.core.leakage import assert_patients_disjoint
from osteo_pipeline.imaging.view import VIEWS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SEVERITY = {label: rank for rank, label in enumerate(CANONICAL)}  # a patient's worst scan labels them


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


def views_studied(scan_manifest: pd.DataFrame, setting: str | list[str]) -> list[str]:
    """The views a run studies: ``auto`` is AP alone when the manifest holds AP scans (paper 1 used
    AP lumbar DXA), else every view present; a list is taken as given (validated)."""
    present = [v for v in VIEWS if (scan_manifest["view"] == v).any()]
    if setting == "auto":
        return ["AP"] if "AP" in present else present
    views = [setting] if isinstance(setting, str) else list(setting)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"split.views must be 'auto' or a list of {', '.join(VIEWS)}; got {setting!r}")
    return [v for v in VIEWS if v in views]


def _select_views(scan_manifest: pd.DataFrame, setting: str | list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The manifest rows of the studied views; the others are left out and counted in the log."""
    if "view" not in scan_manifest:  # a manifest from before ingest recorded views
        log.warning("split: the scan manifest has no view column (rerun ingest); every scan is kept")
        return scan_manifest, []
    views = views_studied(scan_manifest, setting)
    kept = scan_manifest[scan_manifest["view"].isin(views)]
    left_out = scan_manifest.loc[~scan_manifest["view"].isin(views), "view"].value_counts().to_dict()
    by_image = (~scan_manifest["view"].isin(views)) & (scan_manifest.get("view_source") == "auto")
    if by_image.sum() > 0.25 * len(scan_manifest):
        # The classifier knows spine scans only: on other images (or a scanner it misreads) its
        # "lateral" calls would silently shrink the study. Say so; the user decides.
        log.warning("split: %d of %d scans left out by the image classifier's view (no view in the labels CSV). "
                    "If these are not spine DXA scans, or the views are wrong, set split.views: [AP, lateral] "
                    "or give a view column in the labels CSV", int(by_image.sum()), len(scan_manifest))
    log.info("split: views studied %s (split.views: %s); %d scan(s) of other views left out%s", views, setting,
             len(scan_manifest) - len(kept), f" {left_out}" if left_out else "")
    if kept.empty:
        raise SplitError(f"no scan of the views {views} (split.views: {setting}) in the manifest")
    return kept, views


def _strata(patients: pd.Series, patient_views: pd.Series | None, needed: int, what: str) -> pd.Series:
    """Stratum per patient: label x views when several views are studied and every such stratum
    has ``needed`` patients, else the label alone (said in the log)."""
    if patient_views is None:
        return patients
    combined = patients + "|" + patient_views.loc[patients.index]
    if combined.value_counts().min() >= needed:
        return combined
    log.warning("split: %s stratified by label only: a label x view stratum has under %d patients", what, needed)
    return patients


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
    binary and three-class schemes share the same held-out patients. Only the views of
    ``split.views`` are split (see ``views_studied``); with several, the strata are label x
    view (a patient's views, e.g. ``AP+lateral``) where every stratum is large enough.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    n_folds = int(params["n_folds"])
    test_size, val_size = float(params["test_size"]), float(params.get("val_size") or 0.0)
    scan_manifest, views = _select_views(scan_manifest, params["views"])
    patients = _patient_table(scan_manifest)
    patient_views = (scan_manifest.groupby("patient_id")["view"].agg(lambda v: "+".join(sorted(set(v))))
                     if len(views) > 1 else None)
    _check_enough_patients(patients, 2, "a stratified train/test split")
    strata = _strata(patients, patient_views, 2, "the train/test split")
    train_p, test_p = train_test_split(
        patients.index.to_numpy(), test_size=test_size, stratify=strata.to_numpy(), random_state=seed
    )
    val_p = np.array([], dtype=train_p.dtype)
    if val_size > 0:  # the second paper's 70/15/15 variant: val taken from what is not test
        inner = _strata(patients.loc[train_p], patient_views, 2, "the train/val split")
        train_p, val_p = train_test_split(
            train_p, test_size=val_size / (1 - test_size), stratify=inner.to_numpy(), random_state=seed,
        )
    partition = pd.Series("train", index=patients.index)
    partition.loc[test_p] = "test"
    partition.loc[val_p] = "val"

    table = scan_manifest[["scan_id", "patient_id", "label", *(["view"] if "view" in scan_manifest else [])]].copy()
    table["partition"] = table["patient_id"].map(partition)
    table["fold"] = -1
    train = table["partition"] == "train"
    _check_enough_patients(patients.loc[train_p], n_folds, f"{n_folds}-fold cross-validation on the training part")
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    train_rows = table.index[train]
    rank = pd.Series(np.arange(len(patients)), index=patients.index)  # key-independent group labels
    groups = table.loc[train, "patient_id"].map(rank)
    y = table.loc[train, "label"]
    if patient_views is not None:  # label x view per scan, where each has a patient per fold
        by_view = y + "|" + table.loc[train, "view"]
        if table.loc[train].groupby(by_view)["patient_id"].nunique().min() >= n_folds:
            y = by_view
        else:
            log.warning("split: the CV folds stratified by label only: a label x view stratum has under %d patients",
                        n_folds)
    for fold, (_, val_idx) in enumerate(cv.split(train_rows, y, groups)):
        table.loc[train_rows[val_idx], "fold"] = fold
    table = table.sort_values(["partition", "fold", "scan_id"]).reset_index(drop=True)
    assert_patients_disjoint(table)  # at run time, every run: a leak here would void every figure downstream
    log.info("split: %s", table.groupby(["partition", "label", *(["view"] if "view" in table else [])]).size().to_dict())
    return table


def class_weights(split_table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Balanced class weights from the training labels, per label scheme (minority weighted up)."""
    from sklearn.utils.class_weight import compute_class_weight

    train = split_table.loc[split_table["partition"] == "train", "label"]
    weights = {}
    for scheme in LABEL_SCHEMES.values():
        y = train[train.isin(scheme.classes)]
        present = [c for c in scheme.classes if (y == c).any()]
        if not present:
            continue
        w = compute_class_weight("balanced", classes=np.array(present), y=y.to_numpy())
        weights[scheme.name] = {c: float(v) for c, v in zip(present, w)}
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
) -> Figure:
    """Original training crops next to augmented views of them (training scans only, by construction)."""
    from matplotlib.figure import Figure

    from osteo_pipeline.imaging.augment import augment_preview

    train_ids = set(split_table.loc[split_table["partition"] == "train", "scan_id"])
    idx = [i for i, s in enumerate(model_input["scan_id"]) if s in train_ids][:n_scans]
    images = model_input["images"][idx]
    views = augment_preview(images, policy, n_views)  # (n_scans, n_views, H, W, 3)
    fig = Figure(figsize=(1.6 * (n_views + 1), 1.6 * len(idx)))
    axes = fig.subplots(len(idx), n_views + 1, squeeze=False)
    for r in range(len(idx)):
        for c, img in enumerate([images[r], *views[r]]):
            axes[r][c].imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255)
            axes[r][c].axis("off")
    axes[0][0].set_title("original", fontsize=8)
    fig.suptitle("Training-time augmentation (Table 3 policy)")
    fig.tight_layout()
    return fig


def data_fingerprint(scan_manifest: pd.DataFrame, split_table: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Identify the data a model was trained on: manifest content hash, split seed, counts, and
    (when the manifest has views) the views studied and the scans of other views left out."""
    ids = "\n".join(sorted(scan_manifest["scan_id"]) + sorted(split_table["partition"] + ":" + split_table["scan_id"]))
    fingerprint = {
        "manifest_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "split_seed": int(seed),
        "n_scans": int(len(scan_manifest)),
        "n_patients": int(scan_manifest["patient_id"].nunique()),
    }
    if "view" in scan_manifest and "view" in split_table:
        left_out = scan_manifest[~scan_manifest["scan_id"].isin(split_table["scan_id"])]
        fingerprint["views"] = {
            "studied": [v for v in VIEWS if (split_table["view"] == v).any()],
            "n_split_by_view": {v: int((split_table["view"] == v).sum()) for v in VIEWS},
            "n_left_out_by_view": {v: int((left_out["view"] == v).sum()) for v in VIEWS},
        }
    return fingerprint
