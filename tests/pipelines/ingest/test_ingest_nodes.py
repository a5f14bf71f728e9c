"""ingest nodes on small generated raw folders: both layouts, labels, patients, every bad input."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from osteo_pipeline.pipelines.ingest import create_pipeline
from osteo_pipeline.pipelines.ingest.nodes import (
    MANIFEST_COLUMNS,
    RAW_DIR_LABEL,
    ROI_COLUMNS,
    VIEW_COLUMNS,
    NoUsableScansError,
    TableError,
    index_scans,
    pseudonymise,
)


def _counts_add_up(report: dict) -> None:
    c = report["counts"]
    assert c["files_seen"] == c["accepted"] + c["excluded"] + c["duplicates_dropped"] + c["files_skipped"]
    assert c["accepted"] == sum(c["accepted_by_class"].values())
    assert c["excluded"] == len(report["excluded"]) == sum(c["excluded_by_reason"].values())


def _our_log(caplog) -> str:
    # The project's log lines (libraries log raw paths at DEBUG, which the project's logging.yml hides).
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("osteo_pipeline"))


def _reasons(report: dict) -> dict[str, str]:
    return {e["file_ref"]: e["reason"] for e in report["excluded"]}


def test_class_folders_with_aliases(write_scan, write_file, run_ingest, ref):
    write_scan("Healthy/a.png", 1)
    write_scan("CONTROL/b.png", 2)
    write_scan("Low-Bone-Mass/c.png", 3)
    write_scan("train/osteoporotic/d.png", 4)  # nearest class folder counts
    write_file(".gitkeep", "")
    write_file("README.md", "# scans")
    manifest, report = run_ingest()

    assert list(manifest.columns) == MANIFEST_COLUMNS + VIEW_COLUMNS + ROI_COLUMNS
    assert dict(zip(manifest["file_ref"], manifest["label"])) == {
        ref("Healthy/a.png"): "normal", ref("CONTROL/b.png"): "normal",
        ref("Low-Bone-Mass/c.png"): "osteopenia", ref("train/osteoporotic/d.png"): "osteoporosis"}
    assert manifest["scan_id"].is_monotonic_increasing
    assert manifest[ROI_COLUMNS].isna().all().all() and (manifest[ROI_COLUMNS].dtypes == float).all()
    assert set(manifest["format"]) == {"png"} and set(manifest["bit_depth"]) == {8}
    assert (manifest["width"] == 30).all() and (manifest["height"] == 20).all()
    assert report["layout"] == "class_folders"
    assert report["counts"]["accepted_by_class"] == {"normal": 2, "osteopenia": 1, "osteoporosis": 1}
    assert report["counts"]["files_skipped"] == 2 and report["excluded"] == []
    assert report["counts"]["patient_id_source"]["file"] == 4  # no ids anywhere: a file is a patient
    _counts_add_up(report)
    json.dumps(report)  # the catalog saves it as JSON


def test_scan_id_is_the_content_sha256(write_scan, run_ingest):
    path = write_scan("normal/a.png", 1)
    manifest, _ = run_ingest()
    assert manifest.loc[0, "scan_id"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_labels_table_layout_with_clinical_columns_roi_and_pseudonyms(write_scan, write_file, run_ingest, caplog, ref):
    for i in range(4):
        write_scan(f"images/DXA_{i}.png", i)
    write_file("clinical.csv", (
        "File,Label,Patient_ID,age,sex,t_score,patient_name,dob\n"
        "images/DXA_0.png,Normal,0012345,61,F,-0.5,DOE^JANE,1945-02-03\n"
        "images/DXA_1.png,osteoporotic,0012345,61,F,-2.9,DOE^JANE,1945-02-03\n"
        "DXA_2.png,osteopenic,0099,70,M,-1.7,ROE^RICHARD,1950-01-01\n"  # bare name: found in images/
        "images/DXA_3.png,low bone mass,,55,F,-1.2,POE^EDGAR,1960-01-01\n"
        "images/gone.png,normal,0777,50,F,0.1,MISSING^PERSON,1970-01-01\n"
    ))
    write_file("roi.csv", "file,x0,y0,x1,y1\nimages/DXA_0.png,2,3,20,18\nimages/DXA_1.png,5,5,2,2\n")
    caplog.set_level(logging.DEBUG)
    manifest, report = run_ingest()  # key "test-secret"

    assert report["layout"] == "labels_table" and report["label_table"] == "clinical.csv"
    assert report["roi_table"] == "roi.csv"
    assert list(manifest.columns) == MANIFEST_COLUMNS + ["age", "sex", "t_score"] + VIEW_COLUMNS + ROI_COLUMNS
    rows = manifest.set_index("file_ref")
    assert rows.loc[[ref("images/DXA_2.png"), ref("images/DXA_3.png")], "label"].tolist() == ["osteopenia"] * 2
    assert rows.loc[ref("images/DXA_0.png"), "age"] == 61 and rows.loc[ref("images/DXA_0.png"), "t_score"] == -0.5
    # The same patient keeps one pseudonym; the id is an HMAC with the salt, leading zeros kept.
    expected = "pt-" + hmac.new(b"test-secret", b"0012345", hashlib.sha256).hexdigest()[:12]
    assert rows.loc[ref("images/DXA_0.png"), "patient_id"] == rows.loc[ref("images/DXA_1.png"), "patient_id"] == expected
    assert report["counts"]["patients"] == 3
    assert report["counts"]["patient_id_source"] == {"table": 3, "filename": 0, "file": 1}
    # ROI joined where valid; an inverted box is blanked and reported.
    assert rows.loc[ref("images/DXA_0.png"), ROI_COLUMNS].tolist() == [2.0, 3.0, 20.0, 18.0]
    assert rows.loc[ref("images/DXA_1.png"), ROI_COLUMNS].isna().all()
    issues = {(i["file_ref"], i["reason"]) for i in report["table_issues"]}
    assert issues == {(ref("images/gone.png"), "missing_file"), (ref("images/DXA_1.png"), "invalid_roi")}
    assert report["dropped_columns"] == ["patient_name", "dob"] and report["patient_id_column"] == "Patient_ID"
    assert report["parameters"]["pseudonym_key"] == "project secret (not shown)" and not report["warnings"]
    # Raw ids, names, raw paths and the key are written nowhere and logged nowhere.
    everything = json.dumps(report) + manifest.to_csv() + _our_log(caplog)
    for secret in ("0012345", "0099", "0777", "DOE", "ROE", "POE", "1945", "test-secret", "DXA_", "gone.png"):
        assert secret not in everything


def test_table_and_folder_disagreement_excludes_by_default_or_prefers_table(write_scan, write_file, run_ingest, ref):
    write_scan("normal/a.png", 1)
    write_scan("normal/b.png", 2)
    write_scan("osteoporosis/c.png", 3)
    write_file("labels.csv", "file,label\nnormal/a.png,osteoporosis\nnormal/b.png,normal\n")
    manifest, report = run_ingest()
    assert manifest["file_ref"].tolist() == sorted([ref("normal/b.png"), ref("osteoporosis/c.png")],
                                                   key=dict(zip(manifest["file_ref"], manifest["scan_id"])).get)
    assert _reasons(report) == {ref("normal/a.png"): "label_disagreement"}
    assert "osteoporosis" in report["excluded"][0]["detail"] and "normal" in report["excluded"][0]["detail"]

    manifest, report = run_ingest(label_disagreement="prefer_table")
    assert dict(zip(manifest["file_ref"], manifest["label"]))[ref("normal/a.png")] == "osteoporosis"
    assert report["label_disagreements"][0]["file_ref"] == ref("normal/a.png")
    assert report["excluded"] == []


def test_patient_id_from_filename_regex(write_scan, run_ingest, load_params, ref, caplog):
    write_scan("normal/2144657_study1_1.png", 1)
    write_scan("normal/2144657_study2_1.png", 2)
    write_scan("osteoporosis/3000001_study1_1.png", 3)
    write_scan("osteoporosis/no_id_here.png", 4)
    regex = load_params({"patient_id_regex": r"^(\d+)_"})["patient_id_regex"]  # as `--params` sets it
    caplog.set_level(logging.DEBUG)
    manifest, report = run_ingest(regex=regex)
    ids = dict(zip(manifest["file_ref"], manifest["patient_id"]))
    assert ids[ref("normal/2144657_study1_1.png")] == ids[ref("normal/2144657_study2_1.png")]
    assert ids[ref("normal/2144657_study1_1.png")] == pseudonymise("2144657", "test-secret")
    assert len(set(ids.values())) == 3
    assert report["counts"]["patient_id_source"] == {"table": 0, "filename": 3, "file": 1}
    assert report["parameters"]["patient_id_regex"] == r"^(\d+)_"
    # The raw id is in the file names only: nothing written or logged names those files.
    assert "2144657" not in json.dumps(report) + manifest.to_csv() + _our_log(caplog)
    with pytest.raises(ValueError, match="patient_id_regex"):
        run_ingest(regex="(unclosed")


def test_every_bad_input_is_reported_once_and_nothing_crashes(write_scan, write_file, run_ingest, caplog, ref):
    good = write_scan("normal/good.png", 1)
    write_file("normal/copy_of_good.png", good.read_bytes())  # exact duplicate, same label
    conflict = write_scan("normal/conflict.png", 2)
    write_file("osteoporosis/conflict_copy.png", conflict.read_bytes())  # duplicate, other label
    write_scan("osteoporosis/fine.png", 3)
    write_file("normal/empty.png", b"")
    write_file("normal/notes.png", "this is a text file")
    write_file("normal/truncated.png", cv2.imencode(".png", np.eye(40, dtype=np.uint8) * 255)[1].tobytes()[:60])
    write_scan("normal/huge.png", 5, shape=(200, 200))
    write_scan("misc/unknown_class.png", 6)
    write_scan("loose.png", 7)
    write_file("normal/.DS_Store", b"\x00\x01")
    write_file("normal/notes.txt", "annotator notes")
    caplog.set_level(logging.INFO)

    manifest, report = run_ingest(max_pixels=10_000)

    assert set(manifest["file_ref"]) == {ref("normal/copy_of_good.png"), ref("osteoporosis/fine.png")}  # first path
    assert _reasons(report) == {
        ref("normal/empty.png"): "empty_file",
        ref("normal/notes.png"): "not_an_image",
        ref("normal/truncated.png"): "corrupt",
        ref("normal/huge.png"): "too_large",
        ref("misc/unknown_class.png"): "unknown_label",
        ref("loose.png"): "no_label",
        ref("normal/conflict.png"): "duplicate_label_conflict",
        ref("osteoporosis/conflict_copy.png"): "duplicate_label_conflict",
    }
    assert all(e["detail"] for e in report["excluded"])
    (dup,) = report["duplicate_groups"]
    assert dup["file_refs"] == [ref("normal/copy_of_good.png"), ref("normal/good.png")]
    assert dup["kept"] == ref("normal/copy_of_good.png")
    (conf,) = report["conflict_groups"]
    assert conf["file_refs"] == [ref("normal/conflict.png"), ref("osteoporosis/conflict_copy.png")]
    assert conf["labels"] == ["normal", "osteoporosis"]
    assert report["skipped"] == sorted([ref("normal/.DS_Store"), ref("normal/notes.txt")])
    assert report["counts"]["duplicates_dropped"] == 1 and report["counts"]["files_seen"] == 13
    _counts_add_up(report)
    # One warning per problem (8 excluded files + 1 duplicate group), one summary; no raw path.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("ingest.nodes")]
    assert len(warnings) == 8 + 1
    assert not any(name in caplog.text for name in ("normal/", "good.png", "conflict.png", "unknown_class.png"))
    for file in _reasons(report):
        assert sum(file in r.getMessage() for r in warnings) >= 1
    assert any(r.levelno == logging.INFO and "2 scans accepted" in r.getMessage() for r in caplog.records)


def test_unreadable_file_is_reported_by_file_ref(write_scan, run_ingest, make_partitions, tmp_path, ref):
    write_scan("normal/a.png", 1)

    def unreadable() -> bytes:
        raise PermissionError(13, "Permission denied", str(tmp_path / "raw/normal/locked.png"))

    parts = {**make_partitions(tmp_path / "raw"), "normal/locked.png": unreadable}
    manifest, report = run_ingest(parts=parts)
    assert manifest["file_ref"].tolist() == [ref("normal/a.png")]
    assert _reasons(report) == {ref("normal/locked.png"): "unreadable"}
    assert "locked" not in json.dumps(report)


def test_a_labels_table_that_cannot_be_used_stops_ingest(write_scan, write_file, run_ingest):
    write_scan("normal/a.png", 1)
    write_file("labels.csv", "image,diagnosis\nnormal/a.png,normal\n")  # not silently ignored any more
    with pytest.raises(TableError, match=r"labels.csv has no 'file' or 'label' column: columns found: 2 undeclared \(names not shown: the first line may be data\)"):
        run_ingest()


def test_unknown_label_in_table_and_repeated_rows(write_scan, write_file, run_ingest, ref):
    for name in ("a", "b", "c", "d"):
        write_scan(f"scans/{name}.png", ord(name))
    write_file("labels.csv", "file,label\nscans/a.png,fractured\nscans/b.png,normal\nscans/b.png,osteoporosis\n"
                             "scans/c.png,normal\nscans/c.png,Normal\nscans/d.png,osteoporosis\n")
    manifest, report = run_ingest()
    assert set(manifest["file_ref"]) == {ref("scans/c.png"), ref("scans/d.png")}
    assert _reasons(report) == {ref("scans/a.png"): "unknown_label", ref("scans/b.png"): "label_disagreement"}
    detail = next(e["detail"] for e in report["excluded"] if e["file_ref"] == ref("scans/a.png"))
    assert "is not a known class (known: normal, osteopenia, osteoporosis" in detail
    assert "fractured" not in detail  # a label cell is not echoed: a free-text column would leak through it
    assert [i["reason"] for i in report["table_issues"]] == ["duplicate_row", "duplicate_row"]


def test_all_bad_input_stops_with_one_clear_error(write_file, run_ingest, tmp_path):
    write_file(".gitkeep", "")
    write_file("normal/a.png", b"")
    write_file("normal/b.png", "not an image")
    write_file("c.png", b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(NoUsableScansError) as err:
        run_ingest()
    message = str(err.value)
    assert message.startswith(f"0 usable scans among 4 files in {RAW_DIR_LABEL}:")
    for part in ("1 empty_file", "1 not_an_image", "1 corrupt", "1 non-scan files skipped",
                 "normal/ osteopenia/ osteoporosis/", "labels.csv", "file,label"):
        assert part in message
    with pytest.raises(NoUsableScansError, match="0 files"):
        run_ingest(parts={})


def test_raw_files_are_never_modified(write_scan, write_file, run_ingest, tmp_path):
    write_scan("normal/a.png", 1)
    write_scan("osteoporosis/b.png", 2)
    write_file("labels.csv", "file,label\nnormal/a.png,normal\n")
    write_file("normal/bad.png", "junk")
    files = sorted(p for p in (tmp_path / "raw").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}
    run_ingest()
    after = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in sorted(q for q in (tmp_path / "raw").rglob("*") if q.is_file())}
    assert after == before


def test_index_keeps_metadata_only_and_loads_each_file_once(write_scan, write_file, make_partitions, tmp_path,
                                                            ingest_params):
    write_scan("normal/a.png", 1)
    write_file("normal/a_copy.png", (tmp_path / "raw" / "normal" / "a.png").read_bytes())
    write_file("README.md", "hello")
    calls: dict[str, int] = {}

    def counting(key, load):
        def wrapped():
            calls[key] = calls.get(key, 0) + 1
            return load()
        return wrapped

    parts = {k: counting(k, v) for k, v in make_partitions(tmp_path / "raw").items()}
    index = index_scans(parts, ingest_params)
    assert calls == {"normal/a.png": 1, "normal/a_copy.png": 1}  # README.md never loaded
    assert index.set_index("source")["status"].to_dict() == {
        "README.md": "skipped", "normal/a.png": "scan", "normal/a_copy.png": "scan"}
    assert not any(isinstance(v, (bytes, np.ndarray)) for v in index.to_numpy().ravel())


def _phi_dicom(rows: int = 16) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "MRN-31337", "19450203"
    ds.InstitutionName, ds.AccessionNumber = "Saint Example Hospital", "ACC-777"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(16 * 16, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_patient_tags_stay_out_of_manifest_report_and_logs(write_file, write_scan, run_ingest, caplog, ref):
    write_file("osteoporosis/scan.dcm", _phi_dicom())
    write_file("osteoporosis/broken.dcm", _phi_dicom()[:-50])
    write_file("normal/too_tall.dcm", _phi_dicom(rows=64))  # header disagrees with pixel data
    write_scan("normal/a.png", 1)
    caplog.set_level(logging.DEBUG)
    manifest, report = run_ingest()
    row = manifest.set_index("file_ref").loc[ref("osteoporosis/scan.dcm")]
    assert (row["format"], row["bit_depth"], row["width"], row["height"]) == ("dicom", 12, 16, 16)
    assert _reasons(report) == {ref("osteoporosis/broken.dcm"): "corrupt", ref("normal/too_tall.dcm"): "corrupt"}
    everything = json.dumps(report) + manifest.to_csv() + caplog.text
    for secret in ("DOE", "JANE", "MRN-31337", "19450203", "Saint Example", "ACC-777"):
        assert secret not in everything


def test_pipeline_wiring():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {"raw_scans", "params:ingest", "params:patient_id_regex", "pseudonym_key",
                                 "params:workers", "params:dask_scheduler"}
    assert pipeline.outputs() == {"scan_manifest", "file_index", "ingest_report"}
    assert {n.name for n in pipeline.nodes} == {"index_scans", "build_manifest"}


def test_parameters_resolve_run_time_overrides(load_params):
    params = load_params({"raw_dir": "/scans/Saint Example", "patient_id_regex": r"^(\d+)_"})
    assert "/scans/Saint Example" not in str(params["ingest"])  # the catalog's folder: never an ingest parameter (MLflow logs those)
    assert params["patient_id_regex"] == r"^(\d+)_"
    defaults = load_params()
    assert defaults["patient_id_regex"] is None
