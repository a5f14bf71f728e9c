"""Nodes of the ``roi_resize`` pipeline."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # nodes run headless (CI, Airflow workers)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from osteo_pipeline.imaging.decode import ScanDecodeError, decode_scan
from osteo_pipeline.imaging.preprocess import box_iou, choose_roi, crop_resize
from osteo_pipeline.imaging.roi import detect_spine_roi

log = logging.getLogger(__name__)

ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
ROI_TABLE_COLUMNS = ["scan_id", "file_ref", "roi_source", "x0", "y0", "x1", "y1", "auto_roi_iou"]


def _given_box(row: pd.Series) -> tuple[int, int, int, int] | None:
    if not set(ROI_COLUMNS) <= set(row.index) or row[ROI_COLUMNS].isna().any():
        return None
    return tuple(int(row[c]) for c in ROI_COLUMNS)  # type: ignore[return-value]


def crop_and_resize(
    raw_scans: dict[str, Callable[[], bytes]],
    scan_manifest: pd.DataFrame,
    file_index: pd.DataFrame,
    params: dict[str, Any],
    max_pixels: int,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode every manifest scan once, crop its ROI and resize it to both model input sizes.

    ``file_index`` (local-only) gives each scan's raw path from its ``file_ref``; the raw path is
    used to read the bytes and nowhere else: logs and the ROI table name the ``file_ref``.
    ``max_pixels`` is ingest's limit, so a scan ingest accepted is never refused here.

    Returns the ROI table (box used, its source, and the automatic box's IoU against a
    given one) and two ``{"scan_id", "images"}`` dicts of uint8 arrays. Arrays are
    preallocated uint8: no float copy of the whole set is ever held.
    A scan that fails here is logged and left out of the arrays, never fatal.
    """
    sizes = {"small": int(params["size_cnn21"]), "large": int(params["size_baselines"])}
    n = len(scan_manifest)
    arrays = {k: np.zeros((n, s, s, 3), dtype=np.uint8) for k, s in sizes.items()}
    paths = file_index.drop_duplicates("file_ref").set_index("file_ref")["source"]
    rows, kept_ids = [], []
    for row in scan_manifest.itertuples(index=False):
        record = pd.Series(row._asdict())
        ref = record["file_ref"]
        try:
            load = raw_scans[paths[ref]]
        except KeyError:
            log.warning("roi_resize: skipping %s: not in the raw folder any more (re-run ingest)", ref)
            rows.append({"scan_id": record["scan_id"], "file_ref": ref, "roi_source": "failed"})
            continue
        try:
            pixels = decode_scan(load(), name=ref, max_pixels=int(max_pixels)).pixels  # its str() names `ref`
        except ScanDecodeError as err:
            log.warning("roi_resize: skipping %s", err)
            rows.append({"scan_id": record["scan_id"], "file_ref": ref, "roi_source": "failed"})
            continue
        given = _given_box(record) if params.get("use_roi_csv", True) else None
        choice = choose_roi(pixels, given, params["margin"])
        if choice.source == "whole":
            log.warning("roi_resize: no spine found in %s, using the whole image", ref)
        iou = math.nan
        if given is not None and params.get("measure_auto_roi", True):
            auto = detect_spine_roi(pixels, margin=params["margin"])
            iou = box_iou(auto, given) if auto is not None else 0.0
        i = len(kept_ids)
        for key, size in sizes.items():
            arrays[key][i] = crop_resize(pixels, choice.box, size, params["low_percentile"], params["high_percentile"])
        kept_ids.append(record["scan_id"])
        x0, y0, x1, y1 = choice.box
        rows.append({"scan_id": record["scan_id"], "file_ref": ref, "roi_source": choice.source,
                     "x0": x0, "y0": y0, "x1": x1, "y1": y1, "auto_roi_iou": iou})
    roi_table = pd.DataFrame(rows).reindex(columns=ROI_TABLE_COLUMNS)
    if roi_table["auto_roi_iou"].notna().any():
        log.info("roi_resize: automatic ROI median IoU vs given boxes = %.3f", roi_table["auto_roi_iou"].median())
    ids = np.asarray(kept_ids, dtype=str)
    k = len(kept_ids)
    return (
        roi_table,
        {"scan_id": ids, "images": arrays["small"][:k]},
        {"scan_id": ids, "images": arrays["large"][:k]},
    )


def roi_contact_sheet(
    model_input: dict[str, np.ndarray], scan_manifest: pd.DataFrame, per_class: int
) -> plt.Figure:
    """A grid of ROI crops, one row per class, for a quick look at what the models see."""
    labels = scan_manifest.set_index("scan_id")["label"]
    ids = model_input["scan_id"]
    classes = sorted(labels.loc[ids].unique())
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.9 * len(classes)), squeeze=False)
    for r, cls in enumerate(classes):
        idx = np.flatnonzero(labels.loc[ids].to_numpy() == cls)[:per_class]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(idx):
                ax.imshow(model_input["images"][idx[c]][:, :, 0], cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(f"{cls} (n={int((labels.loc[ids] == cls).sum())})", loc="left", fontsize=9)
    fig.suptitle("ROI crops per class (model input)")
    fig.tight_layout()
    return fig
