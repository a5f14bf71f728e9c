"""The before-run check: a pipeline started before its inputs exist stops at once and says
which pipelines make them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from osteo_testkit import make_project, run_kedro
from osteo_pipeline.hooks import MissingInputsError


def test_train_cnn21_on_a_fresh_project_names_the_pipelines_to_run_first(tmp_path: Path):
    project = make_project(tmp_path / "proj")
    with pytest.raises(MissingInputsError) as caught:
        run_kedro(project, ["train_cnn21"])
    said = str(caught.value)
    assert "model_input_150: made by `roi_resize`" in said
    assert "split_table: made by `split_augment`" in said
    assert "scan_manifest: made by `ingest`" in said  # followed upstream
    assert "raw_scans: no pipeline makes it (raw scans)" in said and "data/01_raw" in said
    assert "kedro run --pipelines=ingest,roi_resize,split_augment,train_cnn21" in said
    assert not any((project / "data" / "08_reporting").iterdir())  # stopped before any node ran


def test_cli_reports_only_what_is_missing(prepared_project: Path, tmp_path: Path):
    """With the model inputs made, train_cnn21 starts; with split_augment's outputs gone, the
    CLI names split_augment only (not the stages whose outputs exist)."""
    project = make_project(tmp_path / "proj")
    for layer in ("01_raw", "02_intermediate"):
        (project / "data" / layer).rmdir()
        (project / "data" / layer).symlink_to(prepared_project / "data" / layer)
    run = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", "test", "--pipelines=roi_resize,train_cnn21"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )
    said = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    assert "split_table: made by `split_augment`" in said
    assert "model_input_150" not in said.split("inputs not made yet")[1].split("Run first")[0]
    assert "kedro run --pipelines=roi_resize,split_augment,train_cnn21" in said


def test_run_params_reach_mlflow_tags_only_as_plain_values():
    from osteo_pipeline.hooks import NOT_RECORDED, redact_run_params

    given = {"label_scheme": "three_class", "seed": 7, "fast": True, "raw_dir": "/data/Smith_John/scans",
             "external_dir": "C:\\site\\ext", "note": "patient asked", "grid": [1, 2]}
    assert redact_run_params(given) == {"label_scheme": "three_class", "seed": 7, "fast": True, "raw_dir": NOT_RECORDED,
                                        "external_dir": NOT_RECORDED, "note": NOT_RECORDED, "grid": NOT_RECORDED}
