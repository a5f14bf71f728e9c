"""Issue 11 through the real `kedro run` command line: a hostile raw folder (hospital CSV
headers, cp1252 with ';', raw patient ids in file names) leaves no identifying
value in any output, log, console line or the MLflow store; a labels CSV that cannot be used
and a class with no usable scan stop the run, say why, and leave a failed ingest report."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from osteo_testkit import make_project
from osteo_pipeline.pipelines.ingest.privacy import file_ref, pseudonymise

# Values that identify someone: none may appear in any shared output.
IDENTIFYING = ["2144650", "2144651", "2144652", "2144653", "MRN-889911", "DOE^JANE", "DOE", "MÜLLER", "19450203",
               "ACC-5551234", "Saint Example Hospital", "called the family"]


def _scan(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = (np.linspace(0, 255, 64)[None, :] * np.ones((80, 1)) * 0.5 + rng.integers(0, 128, (80, 64))).astype(np.uint8)
    assert cv2.imwrite(str(path), pixels)


def _kedro(project: Path, *params: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env.pop("OSTEO_PSEUDONYM_KEY", None)
    env["COLUMNS"] = "250"  # Rich wraps the console at the terminal width
    args = [sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines=ingest,roi_resize"]
    return subprocess.run([*args, f"--params={','.join(params)}"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def _said(run: subprocess.CompletedProcess) -> str:
    return " ".join((run.stdout + run.stderr).split())  # Rich wraps long lines


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    project = make_project(root / "proj")
    raw = root / "Saint Example Hospital" / "scans"  # the folder's path names the site: never recorded
    for i, name in enumerate(["normal/2144650_study1_1.png", "normal/2144650_study2_1.png",
                              "osteoporosis/2144651_study1_1.png", "osteoporosis/2144651_study1_2.png",
                              "osteoporosis/2144653_é_1.png"]):
        _scan(raw / name, i)
    (raw / "normal/2144652_study1_1.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (raw / "osteoporosis/2144651_copy.png").write_bytes((raw / "osteoporosis/2144651_study1_1.png").read_bytes())
    rows = [
        "File;Label;PatientID;PatientName;PatientBirthDate;AccessionNumber;InstitutionName;Comments;Age;Sex;BMI;T-score",
        "normal/2144650_study1_1.png;normal;MRN-889911;DOE^JANE;19450203;ACC-5551234;Saint Example Hospital;"
        "called the family;79;F;22,5;-0,4",
        "osteoporosis/2144653_é_1.png;osteoporosis;MRN-889911;MÜLLER^HANS;19450203;ACC-5551234;"
        "Saint Example Hospital;;79;F;22,5;-2,9",  # é in cp1252 (NFD names: test_ingest_privacy.py)
        "normal/2144652_study1_1.png;normal;;DOE^JANE;19450203;;;;;;;",
    ]
    (raw / "labels.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))  # Excel on Windows
    run = _kedro(project, f"raw_dir={raw}", r"patient_id_regex=^(\d+)_")
    return {"project": project, "raw": raw, "run": run}


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


def test_hostile_folder_runs_and_nothing_identifying_is_shared(hostile):
    project, run = hostile["project"], hostile["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "register_new_resolver" not in run.stdout + run.stderr  # filtered in settings.py: nobody can act on it
    shared = [p for p in (project / "data" / "08_reporting").rglob("*") if p.is_file()]
    shared += [p for p in (project / "data" / "05_model_input").rglob("*") if p.is_file()]
    shared += [p for p in (project / "data" / "02_intermediate" / "scan_manifest.parquet").rglob("*") if p.is_file()]
    shared += [project / "info.log", project / "mlflow.db"]
    shared += [p for p in (project / "mlruns").rglob("*") if p.is_file()] if (project / "mlruns").exists() else []
    assert len(shared) >= 7 and all(p.exists() for p in shared)
    blobs = {str(p.relative_to(project)): p.read_bytes() for p in shared}
    blobs["console"] = (run.stdout + run.stderr).encode()
    key = (project / "conf/local/pseudonym_key.txt").read_text().strip()
    for value in [*IDENTIFYING, key]:
        for encoded in {value.encode("utf-8"), value.encode("cp1252")}:
            leaks = [name for name, blob in blobs.items() if encoded in blob]
            assert not leaks, f"{value!r} found in {leaks}"
    # The raw paths are kept in one place: the local-only file index.
    index = pd.read_parquet(latest(project / "data/02_intermediate/file_index.parquet"))
    assert "normal/2144650_study1_1.png" in set(index["source"]) and index["file_ref"].is_unique


def test_hostile_folder_manifest_and_report(hostile):
    project = hostile["project"]
    key_file = project / "conf/local/pseudonym_key.txt"
    key = key_file.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    manifest = pd.read_parquet(latest(project / "data/02_intermediate/scan_manifest.parquet"))
    assert "source" not in manifest.columns
    assert set(manifest.patient_id) == {pseudonymise("MRN-889911", key), pseudonymise("2144650", key),
                                        pseudonymise("2144651", key)}
    assert {"age", "sex", "bmi", "t_score"} <= set(manifest.columns)
    assert not {"patient_name", "patient_birth_date", "comments", "institution_name"} & set(manifest.columns)
    report = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    assert report["status"] == "ok" and not report["warnings"]
    assert report["patient_id_column"] == "PatientID"
    assert report["dropped_columns"] == ["PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                                         "Comments"]
    assert report["label_table_read"][0].startswith("encoding cp1252") and "delimiter ';'" in report["label_table_read"]
    assert report["counts"]["patient_id_source"] == {"table": 2, "filename": 3, "file": 0}
    assert report["counts"]["accepted"] == len(manifest) == 5
    assert [e["reason"] for e in report["excluded"]] == ["corrupt"]
    assert report["excluded"][0]["file_ref"].startswith("f-") and report["duplicate_groups"]
    roi = pd.read_csv(project / "data/08_reporting/roi_table.csv")
    assert "source" not in roi.columns and set(roi.file_ref) == set(manifest.file_ref)


def test_a_class_with_no_usable_scan_stops_and_the_report_says_failed(hostile, tmp_path):
    project = hostile["project"]  # its last report (from the hostile run) says ok
    raw = tmp_path / "scans"
    _scan(raw / "normal/a.png", 1)
    (raw / "osteopenia").mkdir()
    (raw / "osteopenia/b.png").write_bytes(b"")
    (raw / "osteopenia/c.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    run = _kedro(project, f"raw_dir={raw}")
    said = _said(run)
    assert run.returncode != 0
    assert "class 'osteopenia' (named by class folder) has 0 accepted scans out of 2 file(s): 1 corrupt, 1 empty_file" in said
    report = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    assert report["status"] == "failed" and "class 'osteopenia'" in report["error"]
    assert report["counts"]["accepted_by_class"]["osteopenia"] == 0


def test_a_labels_csv_without_label_column_stops_and_says_why(hostile, tmp_path):
    project = hostile["project"]
    raw = tmp_path / "scans"
    _scan(raw / "normal/a.png", 1)
    (raw / "labels.csv").write_text("file;diagnosis\nnormal/a.png;normal\n")
    run = _kedro(project, f"raw_dir={raw}")
    said = _said(run)
    assert run.returncode != 0
    assert "labels.csv has no 'label' column (delimiter ';' detected): columns found: file, 1 undeclared (names not shown: the first line may be data)" in said
    report = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    assert report["status"] == "failed" and "no 'label' column" in report["error"]


def test_osteo_locate_maps_a_reported_file_ref_back_to_its_raw_path(hostile):
    project = hostile["project"]
    key = (project / "conf/local/pseudonym_key.txt").read_text().strip()
    ref = file_ref("normal/2144652_study1_1.png", key)  # the truncated scan (later runs rewrote the report)
    osteo = str(Path(sys.executable).parent / "osteo")
    run = subprocess.run([osteo, "locate", ref, "f-000000000000.png", "--project", str(project)],
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.split("\t") == [ref, "excluded (corrupt)", "normal/2144652_study1_1.png\n"], run.stdout + run.stderr
    assert "f-000000000000.png: not in the latest file index" in run.stderr and run.returncode == 1
