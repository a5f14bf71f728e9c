"""Nodes of the ``ingest`` pipeline: inventory the raw files, resolve labels and patients,
drop duplicates and report every file that did not make it into the scan manifest.

Privacy: raw file paths (which may carry patient ids) leave these nodes only in ``file_index``
(local-only); the manifest, the report and every log line name a file by its ``file_ref``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from osteo_pipeline.core.parallel import map_ordered, worker_count
from osteo_pipeline.datasets.raw_bytes import RawReadError, os_reason
from osteo_pipeline.imaging.decode import ScanDecodeError, decode_scan
from osteo_pipeline.imaging.quality import degenerate_reason
from osteo_pipeline.imaging.view import VIEWS, classify_view

from .privacy import PUBLIC_KEY, file_ref, normalise_header, pseudonymise, redact_paths, spelling_map
from .tables import TableError, read_table

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["source", "status", "scan_id", "width", "height", "bit_depth", "format", "view_auto", "reason",
                 "detail"]
MANIFEST_COLUMNS = ["scan_id", "file_ref", "patient_id", "label", "width", "height", "bit_depth", "format"]
FILE_INDEX_COLUMNS = ["file_ref", "source", "status", "scan_id", "reason"]
ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
# What reports and logs say of the raw folder: never its path (it may name a site or a patient).
RAW_DIR_LABEL = "the raw folder (data/01_raw, or the run-time parameter raw_dir; its path is not recorded)"
# view: AP | lateral; view_source: table (the labels CSV's view column) | auto (imaging.view's classifier).
VIEW_COLUMNS = ["view", "view_source"]
PUBLIC_KEY_WARNING = (
    "pseudonyms use the public default key, so anyone can recover patient ids from them by trying "
    "candidate ids: unset OSTEO_PSEUDONYM_KEY to use this project's secret key (conf/local/pseudonym_key.txt)"
)

__all__ = ["build_manifest", "index_scans", "pseudonymise", "IngestError", "NoUsableScansError",
           "EmptyClassError", "TableError"]


class IngestError(ValueError):
    """Ingest cannot give a usable manifest; ``report`` is what it found (for the failed report)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report or {}


class NoUsableScansError(IngestError):
    """Raised when no scan survives ingest; the message says what was found and expected."""


class EmptyClassError(IngestError):
    """A class the raw folder or the labels CSV names ends with no accepted scan."""


# ---------------------------------------------------------------------------- nodes


def index_scans(
    raw_scans: dict[str, Callable[[], bytes]], params: dict[str, Any], workers: int | None = 1,
    dask_scheduler: str | None = None,
) -> pd.DataFrame:
    """Decode every raw file once and keep only its metadata: one row per file.

    ``status`` is ``scan`` (decoded), ``skipped`` (expected non-scan file, never loaded)
    or ``error`` (with ``reason`` code and ``detail``): unreadable files and folders, files
    that do not decode, and ``degenerate`` images. ``scan_id`` is the content sha256.
    ``view_auto`` is the image classifier's view (AP or lateral) of each decoded scan.
    Exceptions that are not about a file (ImportError, MemoryError...) stop the run.
    ``workers`` processes share the files (the parameter ``workers``; None: every CPU; 1, the
    default for direct calls: this process), or the workers of the Dask scheduler ``dask_scheduler``
    (the parameter ``dask_scheduler``); the rows do not depend on either.
    """
    sources = sorted(raw_scans)
    scans = [s for s in sources if not is_expected_non_scan(s, params["skip_files"])]
    settings = (int(params["max_pixels"]), params["degenerate"], params["view"]["classifier"])
    count = worker_count(workers)
    # Each task returns a few fields, never pixels or bytes: memory does not grow with the folder.
    described = dict(zip(scans, map_ordered(_index_one, [(s, raw_scans[s], settings) for s in scans], count,
                                            window=4 * count, scheduler=dask_scheduler)))
    rows = [{"source": s, "status": "skipped"} if s not in described else described[s] for s in sources]
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    for column in ("width", "height", "bit_depth"):
        index[column] = index[column].astype("Int64")
    return index


def _index_one(task: tuple[str, Callable[[], bytes], tuple[int, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """One file's index row (run in a worker process). Identical copies are each decoded (no cache):
    they are rare, and a shared cache across processes would cost more than it saves."""
    source, load, (max_pixels, degenerate, view_classifier) = task
    try:
        data = load()
    except RawReadError as err:  # the system refused this file or folder: a reported row
        return {"source": source, "status": "error", "reason": err.code, "detail": err.reason}
    except OSError as err:  # the same, from a loader other than RawBytesDataset
        return {"source": source, "status": "error", "reason": "unreadable", "detail": os_reason(err)}
    scan_id = hashlib.sha256(data).hexdigest()
    return {"source": source, "scan_id": scan_id,
            **_describe_scan(data, source, max_pixels, degenerate, view_classifier)}


def build_manifest(
    raw_scans: dict[str, Callable[[], bytes]],
    scan_index: pd.DataFrame,
    params: dict[str, Any],
    patient_id_regex: str | None,
    pseudonym_key: str,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Label, pseudonymise and de-duplicate the decoded scans; report everything left out.

    Labels come from the labels CSV (``file,label[,patient id,clinical...]``) and/or the
    nearest enclosing class folder; a scan whose two labels disagree is handled by
    ``label_disagreement``. Identical files (same sha256) are kept once when their labels
    agree and all excluded when they do not. Patient ids (CSV, else ``patient_id_regex``
    on the file name, else the file's hash) leave only as ``pt-`` + HMAC-SHA256 with
    ``pseudonym_key``. Only allow-listed CSV columns pass (``clinical_columns`` and
    ``extra_clinical_columns``); the others are dropped unread and named in the report.

    Returns the manifest (by ``file_ref``), the local-only ``file_index`` (file_ref -> raw path)
    and the ingest report.

    Raises:
        TableError: a labels CSV exists but cannot be used.
        NoUsableScansError: when no scan is left.
        EmptyClassError: a class named by a class folder or the CSV has no accepted scan.
    """
    aliases = spelling_map(params["classes"], what="class alias")
    regex = _compile_regex(patient_id_regex)
    if params["label_disagreement"] not in ("exclude", "prefer_table"):
        raise ValueError("ingest.label_disagreement must be 'exclude' or 'prefer_table'")
    refs = {s: file_ref(s, pseudonym_key) for s in scan_index["source"]}
    candidates = scan_index[scan_index["status"] != "skipped"]
    sources = candidates["source"].tolist()
    # Every problem found is appended to one of these lists (by raw path; file_refs in the report).
    found: dict[str, list] = {k: [] for k in ("excluded", "duplicate_groups", "conflict_groups", "table_issues",
                                              "label_disagreements", "unmatched_rows")}

    table_name = next((t for t in params["label_tables"] if t in raw_scans), None)
    table, columns = (_read_label_table(raw_scans, table_name, sources, params, found)
                      if table_name else (None, {}))
    roi_name = params.get("roi_table") if params.get("roi_table") in raw_scans else None
    roi = _read_roi_table(raw_scans, roi_name, sources, params, found["table_issues"]) if roi_name else None

    table_labels = table.groupby("file")["label"].agg(list).to_dict() if table is not None else None
    labelled: list[dict[str, Any]] = []
    for row in candidates.itertuples(index=False):
        if row.status == "error":
            found["excluded"].append({"file": row.source, "reason": row.reason, "detail": row.detail})
            continue
        label, reason, detail = _resolve_label(row.source, table_labels, table_name, aliases)
        if label is not None and reason == "label_disagreement":  # table vs folder
            if params["label_disagreement"] == "prefer_table":
                found["label_disagreements"].append({"file": row.source, "detail": detail, "used": label})
            else:
                label = None
        if label is None:
            found["excluded"].append({"file": row.source, "reason": reason, "detail": detail})
            continue
        labelled.append({**row._asdict(), "label": label})

    kept = _deduplicate(labelled, found, refs)
    manifest, id_sources = _assemble(kept, table, columns, roi, regex, params, pseudonym_key, refs,
                                     found["table_issues"], table_name)
    if roi is not None:
        _blank_invalid_boxes(manifest, roi_name, found["table_issues"])
    layout = {
        "raw_dir": RAW_DIR_LABEL,
        "layout": "labels_table" if table is not None else "class_folders",
        "label_table": table_name,
        "roi_table": roi_name if roi is not None else None,
    }
    report = _report(scan_index, manifest, found, id_sources, layout, columns, params, patient_id_regex,
                     pseudonym_key, refs)
    index = _file_index(scan_index, manifest, found, refs)
    _log_problems(report)
    if manifest.empty:
        raise NoUsableScansError(_nothing_usable_message(report, params), _failed(report))
    empty = _empty_classes(index, table, aliases, found, table_name)
    if empty:
        raise EmptyClassError(empty, _failed(report))
    return manifest.drop(columns="source"), index, report


# ---------------------------------------------------------------------------- decoding


def is_expected_non_scan(source: str, patterns: list[str]) -> bool:
    """Hidden files and folders, and files matching ``skip_files``: skipped and counted, not errors."""
    path = PurePosixPath(source)
    if any(part.startswith(".") for part in path.parts):
        return True  # hidden files and folders (.gitkeep, .DS_Store, .ipynb_checkpoints)
    return any(fnmatch.fnmatchcase(path.name.lower(), p.lower()) for p in patterns)


def _describe_scan(data: bytes, source: str, max_pixels: int, degenerate: dict[str, Any],
                   view_classifier: dict[str, Any]) -> dict[str, Any]:
    try:
        scan = decode_scan(data, name=source, max_pixels=max_pixels)
    except ScanDecodeError as err:
        return {"status": "error", "reason": err.code, "detail": err.reason}
    why = degenerate_reason(scan.pixels, int(degenerate["min_side"]), float(degenerate["max_aspect"]),
                            float(degenerate["min_dynamic_range"]))
    if why:
        return {"status": "error", "reason": "degenerate", "detail": why, "width": scan.width,
                "height": scan.height, "bit_depth": scan.bit_depth, "format": scan.format}
    # Run on every decoded scan (the pixels are only here): the manifest falls back to it per
    # scan when the labels CSV gives no usable view.
    guess = classify_view(scan.pixels, float(view_classifier["band"]), float(view_classifier["min_correlation"]))
    return {"status": "scan", "width": scan.width, "height": scan.height,
            "bit_depth": scan.bit_depth, "format": scan.format, "view_auto": guess.view}


# ---------------------------------------------------------------------------- tables


def _compile_regex(pattern: str | None) -> re.Pattern | None:
    if pattern in (None, ""):
        return None
    try:
        return re.compile(str(pattern))
    except re.error as err:
        raise ValueError(f"patient_id_regex {pattern!r} is not a valid regular expression: {err}") from None


def _nfc(text: str) -> str:
    # macOS and some zip tools write file names decomposed (NFD); CSVs are usually composed (NFC).
    return unicodedata.normalize("NFC", text)


def _load_table(raw_scans: dict[str, Callable[[], bytes]], name: str) -> bytes:
    try:
        return raw_scans[name]()
    except RawReadError as err:  # its str() names the full path: say only why
        raise TableError(f"{name} cannot be read: {err.reason}") from None
    except OSError as err:
        raise TableError(f"{name} cannot be read: {os_reason(err)}") from None


def _resolve_paths(table: pd.DataFrame, name: str, sources: list[str], found: dict[str, list]) -> pd.DataFrame:
    """Map the ``file`` column onto raw-folder paths (after Unicode NFC); a bare file name may match one file.
    Rows that match no file are reported and left out."""
    known = {_nfc(s): s for s in sources}
    by_name: dict[str, list[str]] = {}
    for source in sources:
        by_name.setdefault(_nfc(PurePosixPath(source).name), []).append(source)
    resolved = []
    for listed, line, label in zip(table["file"], table["line"], table["label"]):
        path = "" if pd.isna(listed) else _nfc(re.sub(r"^(\./|/)+", "", str(listed).strip().replace("\\", "/")))
        candidates = [known[path]] if path in known else by_name.get(path, [])
        if len(candidates) == 1:
            resolved.append(candidates[0])
            continue
        resolved.append(None)
        if not path:
            reason, detail = "blank_file", f"{name} line {line}: empty file name"
        elif candidates:
            reason, detail = "ambiguous_file", f"{name} line {line}: matches {len(candidates)} files"
        else:
            reason, detail = "missing_file", f"listed in {name} line {line}, not in the raw folder"
        found["table_issues"].append({"table": name, "file": path or None, "reason": reason, "detail": detail})
        found["unmatched_rows"].append({"label": label, "reason": reason})
    table = table.assign(file=resolved)
    return table[table["file"].notna()]


def _flag_repeated_rows(table: pd.DataFrame, name: str, note: str, issues: list[dict[str, Any]]) -> None:
    repeated = table[table["file"].duplicated()]
    for source, line in zip(repeated["file"], repeated["line"]):
        issues.append({"table": name, "file": source, "reason": "duplicate_row",
                       "detail": f"{name} line {line} repeats the file: {note}"})


def _spellings(names: list[str]) -> set[str]:
    return {normalise_header(n) for n in names}


def _allowed_columns(header: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """Which CSV columns pass: the patient id column, allow-listed clinical columns; the rest is dropped."""
    patient = next((h for s in params["patient_id_columns"] for h in header
                    if normalise_header(h) == normalise_header(s)), None)
    known = spelling_map(params["clinical_columns"], params.get("extra_clinical_columns") or [])
    clinical: dict[str, str] = {}  # canonical name -> header as spelled in the CSV
    dropped = []
    for column in header:
        if column == patient:
            continue
        canonical = known.get(normalise_header(column))
        if canonical is None or canonical in clinical or canonical in MANIFEST_COLUMNS + ROI_COLUMNS:
            dropped.append(column)
        else:
            clinical[canonical] = column
    return {"patient_id_column": patient, "clinical_columns": clinical, "dropped_columns": dropped}


def _read_label_table(raw_scans: dict[str, Callable[[], bytes]], name: str, sources: list[str],
                      params: dict[str, Any], found: dict[str, list]) -> tuple[pd.DataFrame, dict[str, Any]]:
    columns = params["table_columns"]
    declared = frozenset(spelling_map(params["clinical_columns"], params.get("extra_clinical_columns") or [])) | \
        _spellings(params["patient_id_columns"])
    table, notes = read_table(_load_table(raw_scans, name), name,
                              {"file": _spellings(columns["file"]), "label": _spellings(columns["label"])}, declared)
    header = [c for c in table.columns if c not in ("file", "label", "line")]
    allowed = _allowed_columns(header, params)
    # Everything not allow-listed is dropped here, unread: names, dates, free text never go further.
    keep = ([allowed["patient_id_column"]] if allowed["patient_id_column"] else []) + list(
        allowed["clinical_columns"].values())
    table = table[["file", "label", "line", *keep]].rename(columns={
        **({allowed["patient_id_column"]: "patient_id"} if allowed["patient_id_column"] else {}),
        **{header_name: canonical for canonical, header_name in allowed["clinical_columns"].items()}})
    for column in allowed["clinical_columns"]:
        table[column] = _maybe_numeric(table[column])
    table["label"] = table["label"].map(lambda v: v if pd.isna(v) else str(v).strip())
    table = _resolve_paths(table, name, sources, found)
    _flag_repeated_rows(table, name, "labels must agree, the first row's other values are used", found["table_issues"])
    return table, {**allowed, "notes": notes}


def _maybe_numeric(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column.str.strip()


def _read_roi_table(raw_scans: dict[str, Callable[[], bytes]], name: str, sources: list[str],
                    params: dict[str, Any], issues: list[dict[str, Any]]) -> pd.DataFrame | None:
    required = {"file": _spellings(params["table_columns"]["file"]), **{c: {c} for c in ("x0", "y0", "x1", "y1")}}
    try:
        table, _ = read_table(_load_table(raw_scans, name), name, required)
    except TableError as err:  # optional boxes: detection takes over, and the report says why
        issues.append({"table": name, "file": None, "reason": "bad_table", "detail": f"{err}; boxes not used"})
        return None
    scratch: dict[str, list] = {"table_issues": issues, "unmatched_rows": []}
    table = _resolve_paths(table.assign(label=None), name, sources, scratch)
    _flag_repeated_rows(table, name, "ignored, the first box is used", issues)
    table = table.drop_duplicates("file").set_index("file")
    # Non-numeric coordinates become NaN and are then reported as an invalid box.
    boxes = table[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce").astype(float)
    boxes.columns = ROI_COLUMNS
    return boxes


# ---------------------------------------------------------------------------- labels & patients


def _folder_label(source: str, aliases: dict[str, str]) -> tuple[str | None, str | None]:
    """Label of the nearest enclosing class folder (so train/normal/x.png works) and the top folder.
    A folder's own entry (``normal/``) is labelled by itself."""
    parts = PurePosixPath(source).parts
    folders = parts if source.endswith("/") else parts[:-1]
    label = next((aliases[normalise_header(f)] for f in reversed(folders) if normalise_header(f) in aliases), None)
    return label, (folders[0] if folders else None)


def _known(aliases: dict[str, str]) -> str:
    return f"known: {', '.join(sorted(set(aliases.values())))} and their aliases in ingest.classes"


def _resolve_label(source: str, table_labels: dict[str, list] | None, table_name: str | None,
                   aliases: dict[str, str]) -> tuple[str | None, str, str]:
    """Return (label, reason, detail); label None means excluded for ``reason``.

    A label with reason ``label_disagreement`` is the table's label, used only when the
    table is preferred over the folder.
    """
    folder_label, top_folder = _folder_label(source, aliases)
    if table_labels is not None and source in table_labels:
        raw = [str(v).strip() for v in table_labels[source] if not pd.isna(v) and str(v).strip()]
        unknown = sorted({v for v in raw if normalise_header(v) not in aliases})
        if unknown:
            # The cell is not echoed: a column of free text read as labels would carry it into the report.
            return None, "unknown_label", f"its label in {table_name} is not a known class ({_known(aliases)})"
        labels = sorted({aliases[normalise_header(v)] for v in raw})
        if not labels:
            if folder_label:
                return folder_label, "", ""
            return None, "no_label", f"empty label in {table_name}"
        if len(labels) > 1:
            return None, "label_disagreement", f"{table_name} rows disagree: {', '.join(labels)}"
        if folder_label and folder_label != labels[0]:
            return labels[0], "label_disagreement", f"{table_name} says {labels[0]}, folder says {folder_label}"
        return labels[0], "", ""
    if folder_label:
        return folder_label, "", ""
    if table_labels is not None:
        return None, "no_label", f"not listed in {table_name} and not in a class folder"
    if top_folder:
        # Not echoed: an unknown folder name may be a patient's (Smith_John/scan.png).
        return None, "unknown_label", f"its top folder is not a known class ({_known(aliases)})"
    return None, "no_label", "not in a class folder and no labels table"


def _deduplicate(labelled: list[dict[str, Any]], found: dict[str, list], refs: dict[str, str]) -> list[dict[str, Any]]:
    """Keep one copy (first path) of identical files with one label; exclude all copies when labels differ."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in labelled:
        groups.setdefault(row["scan_id"], []).append(row)
    kept = []
    for scan_id, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["source"])
        files = [r["source"] for r in rows]
        labels = [r["label"] for r in rows]
        if len(set(labels)) > 1:
            found["conflict_groups"].append({"scan_id": scan_id, "files": files, "labels": labels})
            for row in rows:
                others = [f"{refs[f]} ({lab})" for f, lab in zip(files, labels) if f != row["source"]]
                found["excluded"].append({"file": row["source"], "reason": "duplicate_label_conflict",
                                          "detail": f"labelled {row['label']}, identical to {', '.join(others)}"})
            continue
        kept.append(rows[0])
        if len(rows) > 1:
            found["duplicate_groups"].append({"scan_id": scan_id, "files": files, "kept": files[0]})
    return kept


def _patient_id(row: dict[str, Any], table_row: pd.Series | None, regex: re.Pattern | None) -> tuple[str, str]:
    """Raw patient id and where it came from: ``table``, ``filename`` or ``file`` (content hash)."""
    if table_row is not None and "patient_id" in table_row and not pd.isna(table_row["patient_id"]):
        value = str(table_row["patient_id"]).strip()
        if value:
            return value, "table"
    if regex is not None:
        match = regex.search(PurePosixPath(row["source"]).name)
        if match:
            value = match.group(1) if regex.groups else match.group(0)
            if value:
                return value, "filename"
    return row["scan_id"], "file"


def _view(table_row: pd.Series | None, auto: str, views: dict[str, str], table_name: str | None,
          source: str, issues: list[dict[str, Any]]) -> tuple[str, str]:
    """(view, view_source): the labels CSV's view when its cell is a known spelling, else the
    image classifier's. An unknown cell is reported without its value (it may be free text)."""
    value = None if table_row is None or "view" not in table_row else table_row["view"]
    if value is None or pd.isna(value) or not str(value).strip():
        return auto, "auto"
    canonical = views.get(normalise_header(str(value)))
    if canonical is None:
        issues.append({"table": table_name, "file": source, "reason": "unrecognised_view",
                       "detail": f"unrecognised view value in {table_name} line {table_row['line']} (known: "
                                 f"{', '.join(VIEWS)} and their spellings in ingest.view.spellings); "
                                 "the image classifier's view is used"})
        return auto, "auto"
    return canonical, "table"


def _assemble(kept: list[dict[str, Any]], table: pd.DataFrame | None, columns: dict[str, Any],
              roi: pd.DataFrame | None, regex: re.Pattern | None, params: dict[str, Any], key: str,
              refs: dict[str, str], issues: list[dict[str, Any]], table_name: str | None) -> tuple[pd.DataFrame, Counter]:
    """The manifest rows (with the raw ``source`` still attached, dropped before saving)."""
    first_rows = table.drop_duplicates("file").set_index("file") if table is not None else None
    # The CSV's view column is read through ingest.view.spellings into VIEW_COLUMNS, never passed raw.
    clinical = [c for c in columns.get("clinical_columns", {}) if c not in VIEW_COLUMNS]
    views = spelling_map(params["view"]["spellings"], what="view spelling")
    if set(views.values()) != set(VIEWS):
        raise ValueError(f"ingest.view.spellings must declare exactly the views {', '.join(VIEWS)}")
    id_sources: Counter = Counter()
    records = []
    for row in kept:
        in_table = first_rows is not None and row["source"] in first_rows.index
        table_row = first_rows.loc[row["source"]] if in_table else None
        raw_id, origin = _patient_id(row, table_row, regex)
        id_sources[origin] += 1
        record = {c: row[c] for c in MANIFEST_COLUMNS if c not in ("patient_id", "file_ref")}
        record["file_ref"] = refs[row["source"]]
        record["patient_id"] = pseudonymise(raw_id, key, int(params["pseudonym_length"]))
        for column in clinical:
            record[column] = table_row[column] if table_row is not None else None
        record["view"], record["view_source"] = _view(table_row, row["view_auto"], views, table_name,
                                                      row["source"], issues)
        box = roi.loc[row["source"]] if roi is not None and row["source"] in roi.index else None
        for column in ROI_COLUMNS:
            record[column] = float(box[column]) if box is not None else float("nan")
        record["source"] = row["source"]
        records.append(record)
    manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS + clinical + VIEW_COLUMNS + ROI_COLUMNS + ["source"])
    manifest = manifest.sort_values("scan_id", ignore_index=True)
    for column in ("width", "height", "bit_depth"):
        manifest[column] = manifest[column].astype("int64")
    manifest[ROI_COLUMNS] = manifest[ROI_COLUMNS].astype(float)
    return manifest, id_sources


def _blank_invalid_boxes(manifest: pd.DataFrame, roi_name: str, issues: list[dict[str, Any]]) -> None:
    """Blank (NaN) boxes that are incomplete, inverted or miss the image; downstream clips the rest."""
    x0, y0, x1, y1 = (manifest[c] for c in ROI_COLUMNS)
    given = manifest[ROI_COLUMNS].notna().all(axis=1)
    partial = manifest[ROI_COLUMNS].notna().any(axis=1) & ~given
    bad = (given & ((x1 <= x0) | (y1 <= y0) | (x1 <= 0) | (y1 <= 0)
                    | (x0 >= manifest["width"]) | (y0 >= manifest["height"]))) | partial
    for source in manifest.loc[bad, "source"]:
        issues.append({"table": roi_name, "file": source, "reason": "invalid_roi",
                       "detail": f"box in {roi_name} is incomplete, inverted or outside the image; left empty"})
    manifest.loc[bad, ROI_COLUMNS] = float("nan")


# ---------------------------------------------------------------------------- file index & classes


def _file_index(scan_index: pd.DataFrame, manifest: pd.DataFrame, found: dict[str, list],
                refs: dict[str, str]) -> pd.DataFrame:
    """file_ref -> raw path, with what became of each file or folder (local-only: never logged)."""
    accepted = set(manifest["source"])
    copies = {f for g in found["duplicate_groups"] for f in g["files"] if f != g["kept"]}
    reasons = {e["file"]: e["reason"] for e in found["excluded"]}
    rows = []
    for row in scan_index.itertuples(index=False):
        if row.status == "skipped":
            status, reason = "skipped", None
        elif row.source in accepted:
            status, reason = "accepted", None
        elif row.source in copies:
            status, reason = "duplicate", "duplicate"
        else:
            status, reason = "excluded", reasons.get(row.source, row.reason)
        rows.append({"file_ref": refs[row.source], "source": row.source, "status": status,
                     "scan_id": None if pd.isna(row.scan_id) else str(row.scan_id),
                     "reason": None if pd.isna(reason) else str(reason)})
    return pd.DataFrame(rows, columns=FILE_INDEX_COLUMNS).astype(object)


def _empty_classes(index: pd.DataFrame, table: pd.DataFrame | None, aliases: dict[str, str],
                   found: dict[str, list], table_name: str | None) -> str:
    """A message naming every class that a class folder or the labels CSV names but that ended with
    no accepted scan: how many files it had and why they were excluded; "" when there is none."""
    table_classes: dict[str, set[str]] = {}
    if table is not None:
        for source, label in zip(table["file"], table["label"]):
            if not pd.isna(label) and normalise_header(label) in aliases:
                table_classes.setdefault(source, set()).add(aliases[normalise_header(label)])
    outcomes: dict[str, Counter] = {}
    named_by: dict[str, set[str]] = {}
    for row in index.itertuples(index=False):
        if row.status == "skipped":
            continue
        folder, _ = _folder_label(row.source, aliases)
        for cls, by in [(folder, "class folder")] + [(c, table_name) for c in table_classes.get(row.source, ())]:
            if cls:
                named_by.setdefault(cls, set()).add(by)
                outcomes.setdefault(cls, Counter())[row.reason if row.status == "excluded" else row.status] += 1
    for item in found["unmatched_rows"]:
        cls = item.get("label") and aliases.get(normalise_header(item["label"]))
        if cls:
            named_by.setdefault(cls, set()).add(table_name)
            outcomes.setdefault(cls, Counter())[item["reason"]] += 1
    problems = []
    for cls, counts in outcomes.items():
        if counts.get("accepted") or counts.get("duplicate"):
            continue
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        problems.append(f"class '{cls}' (named by {' and '.join(sorted(named_by[cls]))}) has 0 accepted scans "
                        f"out of {sum(counts.values())} file(s): {why}")
    if not problems:
        return ""
    return ("ingest: " + "; ".join(problems) + ". Training without a class it was given would be a different "
            "study: fix those files (each is listed under `excluded` in ingest_report.json), or remove the class "
            "folder / the CSV rows of that class.")


# ---------------------------------------------------------------------------- report


def _report(scan_index: pd.DataFrame, manifest: pd.DataFrame, found: dict[str, list], id_sources: Counter,
            layout: dict[str, Any], columns: dict[str, Any], params: dict[str, Any], patient_id_regex: str | None,
            key: str, refs: dict[str, str]) -> dict[str, Any]:
    def ref(path: str | None) -> str | None:
        return None if path is None else refs.get(path) or file_ref(path, key)

    skipped = scan_index.loc[scan_index["status"] == "skipped", "source"].tolist()
    per_class = manifest["label"].value_counts()
    used = {**params, "patient_id_regex": patient_id_regex,
            "pseudonym_key": "public default" if key == PUBLIC_KEY else "project secret (not shown)"}
    excluded = sorted(({"file_ref": ref(e["file"]), "reason": e["reason"], "detail": redact_paths(str(e["detail"]), refs)}
                       for e in found["excluded"]), key=lambda e: e["file_ref"])
    groups = found["duplicate_groups"]
    warnings = [PUBLIC_KEY_WARNING] if key == PUBLIC_KEY else []
    return {
        "status": "ok",
        **layout,
        "label_table_read": columns.get("notes", []),
        "patient_id_column": columns.get("patient_id_column"),
        "clinical_columns": columns.get("clinical_columns", {}),
        "dropped_columns": columns.get("dropped_columns", []),
        "warnings": warnings,
        "counts": {
            "files_seen": int(len(scan_index)),
            "files_skipped": len(skipped),
            "scan_files": int(len(scan_index)) - len(skipped),
            "accepted": int(len(manifest)),
            "accepted_by_class": {c: int(per_class.get(c, 0)) for c in params["classes"]},
            "accepted_by_view": {v: int((manifest["view"] == v).sum()) for v in VIEWS},
            "view_source": {s: int((manifest["view_source"] == s).sum()) for s in ("table", "auto")},
            "patients": int(manifest["patient_id"].nunique()),
            "patient_id_source": {k: int(id_sources.get(k, 0)) for k in ("table", "filename", "file")},
            "excluded": len(excluded),
            "excluded_by_reason": dict(sorted(Counter(e["reason"] for e in excluded).items())),
            "duplicates_dropped": sum(len(g["files"]) - 1 for g in groups),
            "duplicate_groups": len(groups),
            "conflict_groups": len(found["conflict_groups"]),
            "table_issues": len(found["table_issues"]),
            "label_disagreements_resolved": len(found["label_disagreements"]),
        },
        "excluded": excluded,
        "duplicate_groups": sorted(({"scan_id": g["scan_id"], "file_refs": [ref(f) for f in g["files"]],
                                     "kept": ref(g["kept"])} for g in groups), key=lambda g: g["kept"]),
        "conflict_groups": sorted(({"scan_id": g["scan_id"], "file_refs": [ref(f) for f in g["files"]],
                                    "labels": g["labels"]} for g in found["conflict_groups"]),
                                  key=lambda g: g["file_refs"][0]),
        "table_issues": [{"table": i["table"], "file_ref": ref(i["file"]), "reason": i["reason"],
                          "detail": i["detail"]} for i in found["table_issues"]],
        "label_disagreements": [{"file_ref": ref(d["file"]), "detail": d["detail"], "used": d["used"]}
                                for d in found["label_disagreements"]],
        "skipped": sorted(ref(s) for s in skipped),
        "parameters": used,
    }


def _failed(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "status": "failed"}


def _log_problems(report: dict[str, Any]) -> None:
    # "(reason)", not "[reason]": the console's Rich handler would read brackets as markup.
    for item in report["excluded"]:
        log.warning("ingest: excluded %s (%s): %s", item["file_ref"], item["reason"], item["detail"])
    for group in report["duplicate_groups"]:
        log.warning("ingest: %d identical copies, kept %s, dropped %s", len(group["file_refs"]), group["kept"],
                    ", ".join(f for f in group["file_refs"] if f != group["kept"]))
    for item in report["table_issues"]:
        log.warning("ingest: %s issue (%s)%s: %s", item["table"], item["reason"],
                    f" for {item['file_ref']}" if item["file_ref"] else "", item["detail"])
    for item in report["label_disagreements"]:
        log.warning("ingest: label disagreement for %s: %s; used %s", item["file_ref"], item["detail"], item["used"])
    if report["label_table_read"]:
        log.info("ingest: read %s with %s", report["label_table"], "; ".join(report["label_table_read"]))
    if report["patient_id_column"]:
        log.info("ingest: patient ids from column '%s' of %s", report["patient_id_column"], report["label_table"])
    if report["dropped_columns"]:
        log.warning("ingest: dropped %d column(s) of %s that are not allow-listed clinical columns: %s "
                    "(allow more with ingest.extra_clinical_columns)", len(report["dropped_columns"]),
                    report["label_table"], ", ".join(report["dropped_columns"]))
    for warning in report["warnings"]:
        log.warning("ingest: %s", warning)
    counts = report["counts"]
    log.info("ingest: views %s (from the labels CSV: %d, from the image classifier: %d)",
             ", ".join(f"{k} {v}" for k, v in counts["accepted_by_view"].items()), counts["view_source"]["table"],
             counts["view_source"]["auto"])
    log.info(
        "ingest: %d files in %s (%s layout): %d scans accepted (%s) from %d patients; %d excluded %s; "
        "%d duplicate copies dropped; %d conflict groups; %d table issues; %d non-scan files skipped",
        counts["files_seen"], report["raw_dir"], report["layout"], counts["accepted"],
        ", ".join(f"{k} {v}" for k, v in counts["accepted_by_class"].items()), counts["patients"],
        counts["excluded"], counts["excluded_by_reason"], counts["duplicates_dropped"], counts["conflict_groups"],
        counts["table_issues"], counts["files_skipped"],
    )


def _nothing_usable_message(report: dict[str, Any], params: dict[str, Any]) -> str:
    counts = report["counts"]
    found = [f"{n} {reason}" for reason, n in counts["excluded_by_reason"].items()]
    if counts["files_skipped"]:
        found.append(f"{counts['files_skipped']} non-scan files skipped")
    folders = " ".join(f"{c}/" for c in params["classes"])
    tables = " or ".join(params["label_tables"])
    return (
        f"0 usable scans among {counts['files_seen']} files in {report['raw_dir']}: "
        f"{', '.join(found) or 'the folder is empty'}. "
        f"Expected class folders {folders} or a {tables} with columns file,label."
    )
