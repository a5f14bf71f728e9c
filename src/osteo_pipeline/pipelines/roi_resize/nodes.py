"""Nodes of the ``roi_resize`` pipeline (matplotlib is imported by the figure nodes only)."""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd

from osteo_pipeline.core.parallel import map_ordered, worker_count
from osteo_pipeline.imaging.decode import ScanDecodeError, decode_scan
from osteo_pipeline.imaging.preprocess import box_iou, choose_roi, crop_resize
from osteo_pipeline.imaging.roi import detect_spine_roi

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
BOX_COLUMNS = ["x0", "y0", "x1", "y1"]
# confidence: the automatic box's (imaging.roi.spine_confidence), 0 for a whole-image fallback,
# empty for a box a person gave (csv, corrected); reason: what pulled the confidence down.
ROI_TABLE_COLUMNS = ["scan_id", "file_ref", "roi_source", "x0", "y0", "x1", "y1", "confidence", "reason",
                     "auto_roi_iou"]
REVIEW_COLUMNS = ["scan_id", "file_ref", "x0", "y0", "x1", "y1", "width", "height", "view", "confidence",
                   "roi_source", "reason"]


_FILE_REF = re.compile(r"f-[0-9a-f]{6,64}(\.[A-Za-z0-9]{1,5})?")


class RoiCorrectionError(ValueError):
    """The ROI corrections file has rows that cannot be applied (each named by file and line)."""


def read_roi_corrections(
    data: bytes | None, name: str, scan_manifest: pd.DataFrame, on_invalid: str = "error"
) -> dict[str, Box]:
    """``{file_ref: box}`` from a corrections CSV (``file_ref,x0,y0,x1,y1``; other columns ignored).

    The CSV is ``roi_review.csv`` edited by a person: any of its rows may be passed back with the
    box fixed (a row whose four box cells are all emptied means "no correction": counted in the
    log). A row naming an unknown ``file_ref``, with a box that is incomplete, not whole numbers,
    empty (x1 <= x0 or y1 <= y0) or outside the image, or a file_ref given twice with different
    boxes, is invalid: ``on_invalid="error"`` raises :class:`RoiCorrectionError` listing every
    invalid row by ``name`` and line; ``"warn"`` logs each one and applies the valid rows only.
    """
    if on_invalid not in ("error", "warn"):
        raise ValueError(f"roi_resize.corrections.on_invalid must be 'error' or 'warn', got {on_invalid!r}")
    if data is None:
        return {}
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RoiCorrectionError(f"ROI corrections file {name} cannot be read as CSV: {type(err).__name__}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ["file_ref", *BOX_COLUMNS] if c not in table.columns]
    if missing:
        raise RoiCorrectionError(f"ROI corrections file {name} lacks the column(s) {', '.join(missing)} "
                                 "(expected file_ref,x0,y0,x1,y1, as in roi_review.csv)")
    sizes = scan_manifest.drop_duplicates("file_ref").set_index("file_ref")[["width", "height"]]
    boxes: dict[str, Box] = {}
    problems: list[str] = []
    blank = 0
    for line, row in zip(range(2, len(table) + 2), table.itertuples(index=False)):  # line 1: the header
        ref = str(row.file_ref).strip()
        cells = [str(getattr(row, c)).strip() for c in BOX_COLUMNS]
        # A cell is echoed only if it has a file_ref's form: a raw file name typed there may carry a patient id.
        shown = ref if _FILE_REF.fullmatch(ref) else "<not a file_ref: value not shown>"
        where = f"{name} line {line} (file_ref {shown})"
        if not any(cells):
            blank += 1
            continue
        why = _correction_problem(ref, cells, sizes)
        if why is None:
            box = tuple(int(float(c)) for c in cells)
            if ref in boxes and boxes[ref] != box:
                why = f"a different box for this file_ref was given on an earlier line ({boxes[ref]})"
            else:
                boxes[ref] = box  # type: ignore[assignment]
                continue
        problems.append(f"{where}: {why}")
    if blank:
        log.info("roi_resize: %d row(s) of %s have no box (not corrected: the automatic ROI is kept)", blank, name)
    if problems:
        if on_invalid == "error":
            raise RoiCorrectionError(f"{len(problems)} invalid row(s) in the ROI corrections file; fix or remove "
                                     "them (or set roi_resize.corrections.on_invalid: warn to skip them):\n  "
                                     + "\n  ".join(problems))
        for problem in problems:
            log.warning("roi_resize: ROI correction skipped: %s", problem)
    log.info("roi_resize: %d corrected ROI box(es) from %s", len(boxes), name)
    return boxes


def _correction_problem(ref: str, cells: list[str], sizes: pd.DataFrame) -> str | None:
    """Why one corrections row cannot be applied, or None."""
    if ref not in sizes.index:
        return "unknown file_ref (not a scan of this raw folder's manifest)"
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return "x0, y0, x1, y1 must all be whole numbers"
    if not all(math.isfinite(v) and v == int(v) for v in values):
        return "x0, y0, x1, y1 must all be whole numbers"
    x0, y0, x1, y1 = (int(v) for v in values)
    width, height = int(sizes.at[ref, "width"]), int(sizes.at[ref, "height"])
    if x1 <= x0 or y1 <= y0:
        return f"empty box: needs x0 < x1 and y0 < y1, got ({x0}, {y0}, {x1}, {y1})"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"box ({x0}, {y0}, {x1}, {y1}) is outside the {width}x{height} image"
    return None


def _given_box(row: pd.Series) -> tuple[int, int, int, int] | None:
    if not set(ROI_COLUMNS) <= set(row.index) or row[ROI_COLUMNS].isna().any():
        return None
    return tuple(int(row[c]) for c in ROI_COLUMNS)  # type: ignore[return-value]


def _corrections(
    raw_scans: dict[str, Callable[[], bytes]], scan_manifest: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Box]:
    """The corrected boxes of the corrections file in the raw folder, if there is one."""
    settings = params.get("corrections") or {}
    name = settings.get("file")
    data = raw_scans[name]() if name and name in raw_scans else None
    return read_roi_corrections(data, str(name), scan_manifest, settings.get("on_invalid", "error"))


def crop_and_resize(
    raw_scans: dict[str, Callable[[], bytes]],
    scan_manifest: pd.DataFrame,
    file_index: pd.DataFrame,
    params: dict[str, Any],
    max_pixels: int,
    workers: int | None = 1,
    dask_scheduler: str | None = None,
) -> Iterator[tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Decode every manifest scan once, crop its ROI and resize it to both model input sizes.

    ``file_index`` (local-only) gives each scan's raw path from its ``file_ref``; the raw path is
    used to read the bytes and nowhere else: logs and the ROI table name the ``file_ref``.
    ``max_pixels`` is ingest's limit, so a scan ingest accepted is never refused here.
    A corrections file in the raw folder (``params["corrections"]["file"]``, see
    :func:`read_roi_corrections`) gives boxes that win over every other (``roi_source`` ``corrected``).

    A generator: every ``params["shard_scans"]`` scans it yields the next shard of each model
    input, ``{"scan_id", "images", "complete"}`` (uint8 arrays; ``complete`` on the last one), and
    the ROI table (box used, its source, the automatic box's confidence, and its IoU against a
    given one), empty until the last yield. Kedro saves each yield (the model inputs' dataset
    appends it as a shard), so memory holds a bounded number of shards, not the cohort;
    :func:`collect_model_inputs` joins the yields for a caller that wants them whole.
    The scans are spread over ``workers`` processes (None: every CPU; the parameter
    ``workers``), or the workers of the Dask scheduler ``dask_scheduler``; the outputs do not
    depend on either. A scan that fails here is logged and left out of the arrays, never fatal.
    """
    sizes = (int(params["size_cnn21"]), int(params["size_baselines"]))
    shard = int(params["shard_scans"])
    paths = file_index.drop_duplicates("file_ref").set_index("file_ref")["source"]
    corrections = _corrections(raw_scans, scan_manifest, params)
    settings = {k: params.get(k, default) for k, default in
                (("use_roi_csv", True), ("measure_auto_roi", True), ("margin", None), ("low_percentile", None),
                 ("high_percentile", None), ("fit", "stretch"))}
    settings.update(sizes=sizes, max_pixels=int(max_pixels))
    tasks = (
        (record, raw_scans.get(paths.get(record["file_ref"], ""), None), corrections.get(record["file_ref"]), settings)
        for record in scan_manifest.to_dict("records")
    )
    count = worker_count(workers)
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    images: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    done = 0
    for row, small, large, warning in map_ordered(_crop_one, tasks, count, window=max(shard, 4 * count),
                                                      scheduler=dask_scheduler):
        done += 1
        rows.append(row)
        if warning:
            log.warning("roi_resize: %s", warning)
        if small is not None:
            ids.append(row["scan_id"])
            images[0].append(small)
            images[1].append(large)
        last = done == len(scan_manifest)
        if len(ids) == shard or last:
            # Kedro hands a generator's yields to the outputs through itertools.tee, which keeps up
            # to 57 yields alive: each yield carries one shard, and the ROI table only at the end
            # (an empty one before: a header-only file until the node completes).
            table = _roi_table(rows) if last else _roi_table([])
            yield (table, *(_shard(ids, part, size, last) for part, size in zip(images, sizes)))
            ids, images = [], ([], [])
    if done == 0:  # nothing to crop: still one (empty) save of every output
        yield (_roi_table(rows), *(_shard([], [], size, True) for size in sizes))


def _roi_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows).reindex(columns=ROI_TABLE_COLUMNS)
    if len(rows) and table["auto_roi_iou"].notna().any():
        log.info("roi_resize: automatic ROI median IoU vs given boxes = %.3f", table["auto_roi_iou"].median())
    return table


def _shard(ids: list[str], images: list[np.ndarray], size: int, complete: bool) -> dict[str, Any]:
    """One shard of a model input; ``complete``: the last one (the dataset then writes its index)."""
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return {"scan_id": np.asarray(ids, dtype=str), "images": stacked, "complete": complete}


def collect_model_inputs(
    chunks: Iterable[tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]],
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`crop_and_resize`'s yields joined: the last ROI table and the whole model inputs."""
    table, smalls, larges = None, [], []
    for table, small, large in chunks:  # the last ROI table is the whole one
        smalls.append(small)
        larges.append(large)

    def join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {"scan_id": np.concatenate([p["scan_id"] for p in parts]).astype(str),
                "images": np.concatenate([p["images"] for p in parts])}

    return table, join(smalls), join(larges)


def _crop_one(
    task: tuple[dict[str, Any], Callable[[], bytes] | None, Box | None, dict[str, Any]],
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None, str | None]:
    """One scan's ROI row, its two model inputs (None when it failed) and a warning to log (run in
    a worker process, whose log records would not reach the run's log: the caller logs it)."""
    record, load, corrected, settings = task
    ref = record["file_ref"]
    failed = {"scan_id": record["scan_id"], "file_ref": ref, "roi_source": "failed"}
    if load is None:
        return failed, None, None, f"skipping {ref}: not in the raw folder any more (re-run ingest)"
    try:
        pixels = decode_scan(load(), name=ref, max_pixels=settings["max_pixels"]).pixels  # its str() names `ref`
    except ScanDecodeError as err:
        return failed, None, None, f"skipping {err}"
    given = _given_box(pd.Series(record)) if settings["use_roi_csv"] else None
    choice = choose_roi(pixels, given, settings["margin"], corrected)
    warning = (f"no spine found in {ref}, using the whole image ({choice.reason})"
               if choice.source == "whole" else None)
    iou = math.nan
    if given is not None and settings["measure_auto_roi"]:
        auto = detect_spine_roi(pixels, margin=settings["margin"])
        iou = box_iou(auto, given) if auto is not None else 0.0
    small, large = (crop_resize(pixels, choice.box, size, settings["low_percentile"], settings["high_percentile"],
                                settings["fit"]) for size in settings["sizes"])
    x0, y0, x1, y1 = choice.box
    row = {"scan_id": record["scan_id"], "file_ref": ref, "roi_source": choice.source, "x0": x0, "y0": y0,
           "x1": x1, "y1": y1, "confidence": choice.confidence, "reason": choice.reason, "auto_roi_iou": iou}
    return row, small, large, warning


def roi_contact_sheet(
    model_input: dict[str, np.ndarray], scan_manifest: pd.DataFrame, per_class: int
) -> Figure:
    """A grid of ROI crops, one row per class, for a quick look at what the models see."""
    labels = scan_manifest.set_index("scan_id")["label"]
    ids = model_input["scan_id"]
    classes = sorted(labels.loc[ids].unique())
    from matplotlib.figure import Figure  # headless: no pyplot, no backend

    fig = Figure(figsize=(1.6 * per_class, 1.9 * len(classes)))
    axes = fig.subplots(len(classes), per_class, squeeze=False)
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


def roi_review(
    roi_table: pd.DataFrame,
    scan_manifest: pd.DataFrame,
    raw_scans: dict[str, Callable[[], bytes]],
    file_index: pd.DataFrame,
    params: dict[str, Any],
    max_pixels: int,
) -> tuple[pd.DataFrame, Figure]:
    """The automatic ROIs a person should check, and a contact sheet of the weakest ones.

    Listed: every whole-image fallback, and every automatic box whose confidence is under
    ``params["threshold"]``, weakest first, with the box, the image size and the reason. The
    table is the corrections file's format: fix ``x0..y1`` of the wrong rows, keep those rows
    and put the file in the raw folder as the ``roi_resize.corrections.file`` (see
    :func:`read_roi_corrections`). The sheet shows the ``params["sheet_max"]`` weakest automatic
    boxes (review rows first, then the least confident of the rest) outlined on the downscaled
    scan; scans are named by ``file_ref`` only.
    """
    auto = roi_table[roi_table["roi_source"].isin(["auto", "whole"])].copy()
    auto["confidence"] = auto["confidence"].astype(float).fillna(0.0)
    auto = auto.sort_values(["confidence", "file_ref"], kind="stable")
    flagged = auto[(auto["roi_source"] == "whole") | (auto["confidence"] < float(params["threshold"]))]
    about = [c for c in ("width", "height", "view") if c in scan_manifest.columns]  # view: from ingest, if known
    sizes = scan_manifest.drop_duplicates("file_ref").set_index("file_ref")[about]
    review = flagged.join(sizes, on="file_ref").reindex(columns=REVIEW_COLUMNS)
    if len(review):
        log.warning("roi_resize: %d automatic ROI(s) to check (confidence < %s or whole image): see roi_review",
                    len(review), params["threshold"])
    shown = auto.head(int(params["sheet_max"]))
    return review.reset_index(drop=True), _review_sheet(shown, raw_scans, file_index, params, max_pixels)


def _review_sheet(
    shown: pd.DataFrame, raw_scans: dict[str, Callable[[], bytes]], file_index: pd.DataFrame,
    params: dict[str, Any], max_pixels: int,
) -> Figure:
    """The rows' boxes outlined on their downscaled scans (re-decoded: only these few)."""
    paths = file_index.drop_duplicates("file_ref").set_index("file_ref")["source"]
    cols = max(1, min(len(shown), int(params.get("sheet_columns", 8))))
    nrows = max(1, math.ceil(len(shown) / cols))
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(1.7 * cols, 3.0 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if shown.empty:
        axes[0][0].text(0.5, 0.5, "no automatic ROI", ha="center", va="center")
    threshold = float(params["threshold"])
    for ax, row in zip(axes.ravel(), shown.itertuples(index=False)):
        try:
            pixels = decode_scan(raw_scans[paths[row.file_ref]](), name=row.file_ref, max_pixels=int(max_pixels)).pixels
        except (KeyError, ScanDecodeError) as err:
            ax.set_title(f"{row.file_ref[:10]}\nnot readable", fontsize=7)
            log.warning("roi_resize: review sheet: %s unreadable: %s", row.file_ref, type(err).__name__)
            continue
        f = min(1.0, float(params.get("thumb_height", 256)) / pixels.shape[0])
        thumb = cv2.resize(pixels, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else pixels
        lo, hi = np.percentile(thumb, [1, 99.5])
        ax.imshow(thumb, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
        x0, y0, x1, y1 = (float(getattr(row, c)) * f for c in BOX_COLUMNS)
        colour = "red" if row.roi_source == "whole" or row.confidence < threshold else "lime"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))
        ax.set_title(f"{row.file_ref[:10]}\n{row.roi_source} {row.confidence:.2f}", fontsize=7)
    fig.suptitle(f"Weakest automatic ROIs (red: to review, confidence < {threshold:g} or whole image)", fontsize=9)
    fig.tight_layout()
    return fig
