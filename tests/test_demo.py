"""`make demo` runs in its own folder and MLflow store, and prints no warning nobody can act on."""

from __future__ import annotations

import subprocess

from osteo_testkit import REPO

# Raised by Kedro's parameter validation on nodes whose hints name lazily imported types.
UNACTIONABLE = ("Could not extract type hints", "Union type hint")


def test_make_demo_keeps_its_data_and_mlflow_store_in_its_own_folder(tmp_path):
    demo = tmp_path / "demo"
    before = sorted(p.name for p in (REPO / "data" / "08_reporting").iterdir())
    out = subprocess.run(["make", "demo", f"DEMO_DIR={demo}", "DEMO_ARGS=--pipelines ingest,roi_resize"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (demo / "data" / "08_reporting" / "ingest_report.json").is_file()
    assert len(list((demo / "data" / "01_raw").rglob("*.png"))) == 50  # the demo cohort, written once
    assert (demo / "mlflow.db").is_file() and (demo / "info.log").is_file()
    assert sorted(p.name for p in (REPO / "data" / "08_reporting").iterdir()) == before
    assert f"The report: {demo}/data/08_reporting/report.html" in out.stdout
    assert f"--backend-store-uri sqlite:///{demo}/mlflow.db" in out.stdout
    printed = out.stdout + out.stderr
    assert not [m for m in UNACTIONABLE if m in printed], [line for line in printed.splitlines() if "type hint" in line]
