"""Nodes of the ``ingest`` pipeline: inventory the raw files, resolve labels and patients,
drop duplicates and report every file that did not make it into the scan manifest."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import io
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from osteo_pipeline.imaging.decode import ScanDecodeError, decode_scan

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["source", "status", "scan_id", "width", "height", "bit_depth", "format", "reason", "detail"]
MANIFEST_COLUMNS = ["scan_id", "source", "patient_id", "label", "width", "height", "bit_depth", "format"]
ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
_TABLE_KEYS = {"file", "label", "patient_id"}
_PUBLIC_SALT = "osteo-pipeline-public-default-salt"  # the default in conf/base/parameters_ingest.yml


class NoUsableScansError(ValueError):
    """Raised when no scan survives ingest; the message says what was found and expected."""


# ---------------------------------------------------------------------------- nodes


def index_scans(raw_scans: dict[str, Callable[[], bytes]], params: dict[str, Any]) -> pd.DataFrame:
    """Decode every raw file once and keep only its metadata: one row per file.

    ``status`` is ``scan`` (decoded), ``skipped`` (expected non-scan file, never loaded)
    or ``error`` (with ``reason`` code and ``detail``). ``scan_id`` is the content sha256.
    """
    rows = []
    seen: dict[str, dict[str, Any]] = {}  # content hash -> outcome, so copies decode once
    for source in sorted(raw_scans):
        if _is_expected_non_scan(source, params["skip_files"]):
            rows.append({"source": source, "status": "skipped"})
            continue
        try:
            data = raw_scans[source]()
        except Exception as exc:  # any loader failure is a reported file, not a crashed run
            rows.append({"source": source, "status": "error", "reason": "unreadable",
                         "detail": f"{type(exc).__name__}: {exc}"})
            continue
        scan_id = hashlib.sha256(data).hexdigest()
        if scan_id not in seen:
            seen[scan_id] = _describe_scan(data, source, int(params["max_pixels"]))
        del data  # pixels and bytes are dropped here; only metadata is kept
        rows.append({"source": source, "scan_id": scan_id, **seen[scan_id]})
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    for column in ("width", "height", "bit_depth"):
        index[column] = index[column].astype("Int64")
    return index


def build_manifest(
    raw_scans: dict[str, Callable[[], bytes]],
    scan_index: pd.DataFrame,
    params: dict[str, Any],
    patient_id_regex: str | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Label, pseudonymise and de-duplicate the decoded scans; report everything left out.

    Labels come from the labels CSV (``file,label[,patient_id,clinical...]``) and/or the
    nearest enclosing class folder; a scan whose two labels disagree is handled by
    ``label_disagreement``. Identical files (same sha256) are kept once when their labels
    agree and all excluded when they do not. Patient ids (CSV, else ``patient_id_regex``
    on the file name, else the file's hash) leave only as ``pt-`` + HMAC-SHA256.

    Raises:
        NoUsableScansError: when no scan is left.
    """
    aliases = _alias_map(params["classes"])
    regex = _compile_regex(patient_id_regex)
    if params["label_disagreement"] not in ("exclude", "prefer_table"):
        raise ValueError("ingest.label_disagreement must be 'exclude' or 'prefer_table'")
    candidates = scan_index[scan_index["status"] != "skipped"]
    sources = candidates["source"].tolist()
    # Every problem found is appended to one of these lists, which go into the report as is.
    found: dict[str, list] = {k: [] for k in ("excluded", "duplicate_groups", "conflict_groups", "table_issues",
                                              "label_disagreements", "dropped_identifying_columns")}

    table_name = next((t for t in params["label_tables"] if t in raw_scans), None)
    table = _read_label_table(raw_scans[table_name](), table_name, sources, params, found) if table_name else None
    roi_name = params.get("roi_table") if params.get("roi_table") in raw_scans else None
    roi = _read_roi_table(raw_scans[roi_name](), roi_name, sources, found["table_issues"]) if roi_name else None

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

    kept = _deduplicate(labelled, found)
    manifest, id_sources = _assemble(kept, table, roi, regex, params)
    if roi is not None:
        _blank_invalid_boxes(manifest, roi_name, found["table_issues"])
    layout = {
        "raw_dir": str(params.get("raw_dir", "")),
        "layout": "labels_table" if table is not None else "class_folders",
        "label_table": table_name if table is not None else None,
        "roi_table": roi_name if roi is not None else None,
    }
    report = _report(scan_index, manifest, found, id_sources, layout, params, patient_id_regex)
    _log_problems(report)
    if manifest.empty:
        raise NoUsableScansError(_nothing_usable_message(report, params))
    return manifest, report


# ---------------------------------------------------------------------------- decoding


def _is_expected_non_scan(source: str, patterns: list[str]) -> bool:
    path = PurePosixPath(source)
    if any(part.startswith(".") for part in path.parts):
        return True  # hidden files and folders (.gitkeep, .DS_Store, .ipynb_checkpoints)
    return any(fnmatch.fnmatchcase(path.name.lower(), p.lower()) for p in patterns)


def _describe_scan(data: bytes, source: str, max_pixels: int) -> dict[str, Any]:
    try:
        scan = decode_scan(data, name=source, max_pixels=max_pixels)
    except ScanDecodeError as err:
        return {"status": "error", "reason": err.code, "detail": err.reason}
    return {"status": "scan", "width": scan.width, "height": scan.height,
            "bit_depth": scan.bit_depth, "format": scan.format}


# ---------------------------------------------------------------------------- tables


def _norm_token(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(value).strip().lower())


def _alias_map(classes: dict[str, list[str]]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for canonical, names in classes.items():
        for name in [canonical, *(names or [])]:
            key = _norm_token(name)
            if mapping.setdefault(key, canonical) != canonical:
                raise ValueError(f"ingest.classes: alias '{name}' maps to both {mapping[key]} and {canonical}")
    return mapping


def _compile_regex(pattern: str | None) -> re.Pattern | None:
    if pattern in (None, ""):
        return None
    try:
        return re.compile(str(pattern))
    except re.error as err:
        raise ValueError(f"patient_id_regex {pattern!r} is not a valid regular expression: {err}") from None


def _read_csv(data: bytes, name: str, required: set[str], issues: list[dict[str, str]]) -> pd.DataFrame | None:
    # Everything as text first: ids such as 00123 must keep their leading zeros.
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, encoding="utf-8-sig", skipinitialspace=True)
    except ValueError as err:  # parser, encoding and empty-file errors are all ValueErrors
        issues.append({"file": name, "reason": "bad_table", "detail": f"unreadable CSV ({type(err).__name__})"})
        return None
    table.columns = [_norm_token(c) for c in table.columns]
    missing = required - set(table.columns)
    if missing:
        issues.append({"file": name, "reason": "bad_table", "detail": f"missing columns: {', '.join(sorted(missing))}"})
        return None
    table["line"] = table.index + 2  # 1-based, after the header line
    return table


def _resolve_paths(table: pd.DataFrame, name: str, sources: list[str], issues: list[dict[str, str]]) -> pd.DataFrame:
    """Map the ``file`` column onto raw-folder paths; a bare file name may match one file."""
    known = set(sources)
    by_name: dict[str, list[str]] = {}
    for source in sources:
        by_name.setdefault(PurePosixPath(source).name, []).append(source)
    resolved = []
    for listed, line in zip(table["file"], table["line"]):
        path = "" if pd.isna(listed) else re.sub(r"^(\./|/)+", "", str(listed).strip().replace("\\", "/"))
        candidates = [path] if path in known else by_name.get(path, [])
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
        issues.append({"file": path or name, "reason": reason, "detail": detail})
    table = table.assign(file=resolved)
    return table[table["file"].notna()]


def _flag_repeated_rows(table: pd.DataFrame, name: str, note: str, issues: list[dict[str, str]]) -> None:
    repeated = table[table["file"].duplicated()]
    for source, line in zip(repeated["file"], repeated["line"]):
        issues.append({"file": source, "reason": "duplicate_row",
                       "detail": f"{name} line {line} repeats the file: {note}"})


def _read_label_table(data: bytes, name: str, sources: list[str], params: dict[str, Any],
                      found: dict[str, list]) -> pd.DataFrame | None:
    table = _read_csv(data, name, {"file", "label"}, found["table_issues"])
    if table is None:
        return None
    # Identifying columns are dropped unread, before anything can pass them through.
    identifying = [c for c in table.columns if c in {_norm_token(i) for i in params.get("identifying_columns", [])}]
    found["dropped_identifying_columns"].extend(identifying)
    table = table.drop(columns=identifying)
    for column in table.columns:
        if column not in _TABLE_KEYS | {"line"}:
            table[column] = _maybe_numeric(table[column])
    table = _resolve_paths(table, name, sources, found["table_issues"])
    _flag_repeated_rows(table, name, "labels must agree, the first row's other values are used", found["table_issues"])
    return table


def _maybe_numeric(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column.str.strip()


def _read_roi_table(data: bytes, name: str, sources: list[str], issues: list[dict[str, str]]) -> pd.DataFrame | None:
    table = _read_csv(data, name, {"file", "x0", "y0", "x1", "y1"}, issues)
    if table is None:
        return None
    table = _resolve_paths(table, name, sources, issues)
    _flag_repeated_rows(table, name, "ignored, the first box is used", issues)
    table = table.drop_duplicates("file").set_index("file")
    # Non-numeric coordinates become NaN and are then reported as an invalid box.
    boxes = table[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce").astype(float)
    boxes.columns = ROI_COLUMNS
    return boxes


# ---------------------------------------------------------------------------- labels & patients


def _folder_label(source: str, aliases: dict[str, str]) -> tuple[str | None, str | None]:
    """Label of the nearest enclosing class folder (so train/normal/x.png works) and the top folder."""
    folders = PurePosixPath(source).parts[:-1]
    label = next((aliases[_norm_token(f)] for f in reversed(folders) if _norm_token(f) in aliases), None)
    return label, (folders[0] if folders else None)


def _resolve_label(source: str, table_labels: dict[str, list] | None, table_name: str | None,
                   aliases: dict[str, str]) -> tuple[str | None, str, str]:
    """Return (label, reason, detail); label None means excluded for ``reason``.

    A label with reason ``label_disagreement`` is the table's label, used only when the
    table is preferred over the folder.
    """
    folder_label, top_folder = _folder_label(source, aliases)
    if table_labels is not None and source in table_labels:
        raw = [str(v).strip() for v in table_labels[source] if not pd.isna(v) and str(v).strip()]
        unknown = sorted({v for v in raw if _norm_token(v) not in aliases})
        if unknown:
            return None, "unknown_label", f"{table_name} label '{', '.join(unknown)}' is not a known class"
        labels = sorted({aliases[_norm_token(v)] for v in raw})
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
        return None, "unknown_label", f"folder '{top_folder}' is not a known class"
    return None, "no_label", "not in a class folder and no labels table"


def _deduplicate(labelled: list[dict[str, Any]], found: dict[str, list]) -> list[dict[str, Any]]:
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
                others = [f"{f} ({lab})" for f, lab in zip(files, labels) if f != row["source"]]
                found["excluded"].append({"file": row["source"], "reason": "duplicate_label_conflict",
                                 "detail": f"labelled {row['label']}, identical to {', '.join(others)}"})
            continue
        kept.append(rows[0])
        if len(rows) > 1:
            found["duplicate_groups"].append({"scan_id": scan_id, "files": files, "kept": files[0]})
    return kept


def pseudonymise(raw_id: str, salt: str, length: int = 12) -> str:
    """Keyed hash of a patient id: ``pt-`` + the first ``length`` hex chars of HMAC-SHA256."""
    digest = hmac.new(salt.encode(), str(raw_id).strip().encode(), hashlib.sha256).hexdigest()
    return f"pt-{digest[:length]}"


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


def _assemble(kept: list[dict[str, Any]], table: pd.DataFrame | None, roi: pd.DataFrame | None,
              regex: re.Pattern | None, params: dict[str, Any]) -> tuple[pd.DataFrame, Counter]:
    first_rows = table.drop_duplicates("file").set_index("file") if table is not None else None
    clinical = [c for c in first_rows.columns if c not in _TABLE_KEYS | {"line"}] if first_rows is not None else []
    id_sources: Counter = Counter()
    records = []
    for row in kept:
        in_table = first_rows is not None and row["source"] in first_rows.index
        table_row = first_rows.loc[row["source"]] if in_table else None
        raw_id, origin = _patient_id(row, table_row, regex)
        id_sources[origin] += 1
        record = {c: row[c] for c in MANIFEST_COLUMNS if c != "patient_id"}
        record["patient_id"] = pseudonymise(raw_id, params["pseudonym_salt"], int(params["pseudonym_length"]))
        for column in clinical:
            record[_clinical_name(column)] = table_row[column] if table_row is not None else None
        box = roi.loc[row["source"]] if roi is not None and row["source"] in roi.index else None
        for column in ROI_COLUMNS:
            record[column] = float(box[column]) if box is not None else float("nan")
        records.append(record)
    columns = MANIFEST_COLUMNS + [_clinical_name(c) for c in clinical] + ROI_COLUMNS
    manifest = pd.DataFrame(records, columns=columns)
    manifest = manifest.sort_values("scan_id", ignore_index=True)
    for column in ("width", "height", "bit_depth"):
        manifest[column] = manifest[column].astype("int64")
    manifest[ROI_COLUMNS] = manifest[ROI_COLUMNS].astype(float)
    return manifest, id_sources


def _clinical_name(column: str) -> str:
    # A CSV column named like a manifest column must not overwrite it.
    return f"csv_{column}" if column in MANIFEST_COLUMNS + ROI_COLUMNS else column


def _blank_invalid_boxes(manifest: pd.DataFrame, roi_name: str, issues: list[dict[str, str]]) -> None:
    """Blank (NaN) boxes that are incomplete, inverted or miss the image; downstream clips the rest."""
    x0, y0, x1, y1 = (manifest[c] for c in ROI_COLUMNS)
    given = manifest[ROI_COLUMNS].notna().all(axis=1)
    partial = manifest[ROI_COLUMNS].notna().any(axis=1) & ~given
    bad = (given & ((x1 <= x0) | (y1 <= y0) | (x1 <= 0) | (y1 <= 0)
                    | (x0 >= manifest["width"]) | (y0 >= manifest["height"]))) | partial
    for source in manifest.loc[bad, "source"]:
        issues.append({"file": source, "reason": "invalid_roi",
                       "detail": f"box in {roi_name} is incomplete, inverted or outside the image; left empty"})
    manifest.loc[bad, ROI_COLUMNS] = float("nan")


# ---------------------------------------------------------------------------- report


def _report(scan_index: pd.DataFrame, manifest: pd.DataFrame, found: dict[str, list], id_sources: Counter,
            layout: dict[str, Any], params: dict[str, Any], patient_id_regex: str | None) -> dict[str, Any]:
    skipped = scan_index.loc[scan_index["status"] == "skipped", "source"].tolist()
    per_class = manifest["label"].value_counts()
    used = {k: v for k, v in params.items() if k != "pseudonym_salt"}
    used["pseudonym_salt"] = "public default" if params["pseudonym_salt"] == _PUBLIC_SALT else "set (not shown)"
    used["patient_id_regex"] = patient_id_regex
    excluded = sorted(found["excluded"], key=lambda e: e["file"])
    groups = found["duplicate_groups"]
    return {
        **layout,
        "counts": {
            "files_seen": int(len(scan_index)),
            "files_skipped": len(skipped),
            "scan_files": int(len(scan_index)) - len(skipped),
            "accepted": int(len(manifest)),
            "accepted_by_class": {c: int(per_class.get(c, 0)) for c in params["classes"]},
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
        "duplicate_groups": sorted(groups, key=lambda g: g["kept"]),
        "conflict_groups": sorted(found["conflict_groups"], key=lambda g: g["files"][0]),
        "table_issues": found["table_issues"],
        "label_disagreements": found["label_disagreements"],
        "dropped_identifying_columns": found["dropped_identifying_columns"],
        "skipped": skipped,
        "parameters": used,
    }


def _log_problems(report: dict[str, Any]) -> None:
    for item in report["excluded"]:
        log.warning("ingest: excluded %s [%s]: %s", item["file"], item["reason"], item["detail"])
    for group in report["duplicate_groups"]:
        log.warning("ingest: %d identical copies, kept %s, dropped %s", len(group["files"]), group["kept"],
                    ", ".join(f for f in group["files"] if f != group["kept"]))
    for item in report["table_issues"]:
        log.warning("ingest: table issue %s [%s]: %s", item["file"], item["reason"], item["detail"])
    for item in report["label_disagreements"]:
        log.warning("ingest: label disagreement for %s: %s; used %s", item["file"], item["detail"], item["used"])
    if report["dropped_identifying_columns"]:
        log.warning("ingest: dropped identifying columns from %s: %s", report["label_table"],
                    ", ".join(report["dropped_identifying_columns"]))
    if report["parameters"]["pseudonym_salt"] == "public default":
        log.warning("ingest: pseudonym_salt is the public default; set a secret one in conf/local")
    counts = report["counts"]
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
        f"0 usable scans among {counts['files_seen']} files in {report['raw_dir'] or 'the raw folder'}: "
        f"{', '.join(found) or 'the folder is empty'}. "
        f"Expected class folders {folders} or a {tables} with columns file,label."
    )
