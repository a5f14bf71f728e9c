"""ingest -> roi_resize -> split_augment through Kedro on the test-scale cohort and on real knee X-rays."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from osteo_testkit import KNEE, make_project, run_kedro


def latest(path: Path) -> Path:
    """The newest version of a versioned dataset (``<file>/<timestamp>/<file>``)."""
    versions = sorted(p for p in path.iterdir() if p.is_dir())
    return versions[-1] / path.name


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_foundation_outputs(prepared_project: Path):
    data = prepared_project / "data"
    manifest = pd.read_parquet(latest(data / "02_intermediate" / "scan_manifest.parquet"))
    report = json.loads((data / "08_reporting" / "ingest_report.json").read_text())
    clinical = pd.read_csv(data / "01_raw" / "clinical.csv")
    assert len(manifest) == len(clinical)  # the synthetic cohort is clean: every scan accepted
    assert set(manifest.label) == {"normal", "osteoporosis"}
    assert manifest.scan_id.is_unique and not manifest.patient_id.isin(clinical.patient_id).any()  # pseudonymised

    small = joblib.load(latest(data / "05_model_input" / "model_input_150.joblib"))
    large = joblib.load(latest(data / "05_model_input" / "model_input_300.joblib"))
    assert small["images"].dtype == np.uint8 and small["images"].shape[1:] == (150, 150, 3)
    assert large["images"].shape == (len(manifest), 300, 300, 3)
    assert list(small["scan_id"]) == list(large["scan_id"])
    roi = pd.read_csv(data / "08_reporting" / "roi_table.csv")
    assert (roi.roi_source == "csv").all()  # the cohort ships roi.csv, which wins over detection
    assert roi.auto_roi_iou.median() >= 0.8  # ...and the detector agrees with it
    for png in ("roi_contact_sheet.png", "augmentation_preview.png"):
        assert (data / "08_reporting" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    split = pd.read_csv(latest(data / "05_model_input" / "split_table.csv"))
    assert set(split.scan_id) == set(manifest.scan_id)
    assert split.groupby("patient_id").partition.nunique().max() == 1
    assert sorted(split.loc[split.partition == "train", "fold"].unique()) == [0, 1, 2]
    weights = json.loads(latest(data / "05_model_input" / "class_weights.json").read_text())
    assert weights["binary"]["normal"] > weights["binary"]["osteoporosis"]
    assert report["counts"]["accepted"] == len(manifest) and report["counts"]["excluded"] == 0


def test_rerun_keeps_old_versions_and_raw_data_untouched(prepared_project: Path):
    raw = prepared_project / "data" / "01_raw"
    before = tree_digest(raw)
    run_kedro(prepared_project, ["ingest"])
    assert tree_digest(raw) == before
    versions = [p for p in (prepared_project / "data/02_intermediate/scan_manifest.parquet").iterdir()]
    assert len(versions) >= 2


def test_knee_xrays_ingest_and_roi_resize(tmp_path: Path):
    if not KNEE.is_dir():
        pytest.skip(f"{KNEE} not present (CI and developer machines have ../shared)")
    project = make_project(tmp_path)
    before = tree_digest(KNEE)
    run_kedro(project, ["ingest", "roi_resize"], params={"raw_dir": str(KNEE)})
    assert tree_digest(KNEE) == before
    report = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    assert report["duplicate_groups"] and report["conflict_groups"]
    manifest = pd.read_parquet(latest(project / "data/02_intermediate/scan_manifest.parquet"))
    conflicted = {f for g in report["conflict_groups"] for f in g["file_refs"]}
    assert conflicted and not conflicted & set(manifest.file_ref)  # every conflicting copy excluded
    dropped = {f for g in report["duplicate_groups"] for f in g["file_refs"] if f != g["kept"]}
    assert dropped and not dropped & set(manifest.file_ref)  # duplicates kept once
    small = joblib.load(latest(project / "data/05_model_input/model_input_150.joblib"))
    assert len(small["scan_id"]) == len(manifest)  # no roi.csv: detection or whole-image fallback, never a crash
    roi = pd.read_csv(project / "data/08_reporting/roi_table.csv")
    assert set(roi.roi_source) <= {"auto", "whole"}


def test_cli_deprecated_flag_regex_param_and_clear_error_on_empty_folder(tmp_path: Path):
    """`kedro run --pipeline=...` with `--params=raw_dir=...,patient_id_regex=...`, as users type it."""
    import cv2

    project = make_project(tmp_path / "proj")
    scans = tmp_path / "scans" / "osteoporosis"
    scans.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("2144657_study1_1.png", "2144657_study2_1.png", "3000001_study1_1.png"):
        cv2.imwrite(str(scans / name), rng.integers(0, 255, (64, 40), dtype=np.uint8))
    kedro = [sys.executable, "-m", "kedro", "run", "--env", "test"]
    ok = subprocess.run(
        [*kedro, "--pipeline=ingest", f"--params=raw_dir={scans.parent},patient_id_regex=^(\\d+)_"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    manifest = pd.read_parquet(latest(project / "data/02_intermediate/scan_manifest.parquet"))
    assert manifest.patient_id.nunique() == 2  # the two 2144657 scans are one patient
    assert "2144657" not in "".join(manifest.patient_id)

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([*kedro, "--pipelines=ingest", f"--params=raw_dir={empty}"],
                         cwd=project, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    said = " ".join((bad.stdout + bad.stderr).split())  # rich wraps long lines
    assert "holds no files" in said and "Expected class folders" in said
