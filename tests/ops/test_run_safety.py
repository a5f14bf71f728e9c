"""Killed and concurrent runs, through the real `kedro run` command line (issue 11, section 4).

One project copy (made from the session's prepared project), then in order:
1. `kedro run --pipelines=train_cnn21` gets SIGTERM while a fold's MLflow run is training: every
   MLflow run it opened ends KILLED, it exits 143, and `rerun --dry-run` says it did not complete.
2. `kedro run --pipelines=ingest` is stopped with SIGINT (Ctrl-C) half-way through saving the
   manifest (a dataset that writes half a file and waits): that version folder is gone. While it
   waits, a second `kedro run` on the project is refused at once, naming it, and opens no MLflow run.
3. A truncated model file in data/06_models: `kedro run --pipelines=evaluate` names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from osteo_testkit import make_project

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
KEDRO_TIMEOUT = 240
IGNORE_RUN_STATE = shutil.ignore_patterns(".run.lock", ".run_holders", "run_journal.jsonl")


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2",
            "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def _kedro(project: Path, *args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "kedro", "run", "--env", "test", *args], cwd=project,
                                env=_env(project), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _runs(project: Path) -> list[dict]:
    """Every MLflow run in the project's store (read-only: the store is the run's to create)."""
    db = project / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            runs = con.execute("SELECT run_uuid, name, status FROM runs").fetchall()
            parents = dict(con.execute("SELECT run_uuid, value FROM tags WHERE key = 'mlflow.parentRunId'").fetchall())
            with_metrics = {r for (r,) in con.execute("SELECT DISTINCT run_uuid FROM metrics").fetchall()}
    except sqlite3.OperationalError:  # not created yet, or its tables not yet
        return []
    return [{"id": i, "name": n, "status": s, "parent": parents.get(i), "metrics": i in with_metrics}
            for i, n, s in runs]


def _wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = KEDRO_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        if proc.poll() is not None:
            pytest.fail(f"`kedro run` ended ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    _stop(proc)
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _journal(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "data" / "run_journal.jsonl").read_text().splitlines()]


def _version_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture(scope="module")
def project(prepared_project: Path, tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("run_safety"))
    shutil.rmtree(root / "data")
    shutil.copytree(prepared_project / "data", root / "data", ignore=IGNORE_RUN_STATE)
    return root


@pytest.fixture(scope="module")
def killed_training(project: Path) -> dict:
    """`kedro run --pipelines=train_cnn21` sent SIGTERM while a fold run has logged an epoch."""
    log = project / "sigterm.log"
    models_before = _version_files(project / "data" / "06_models")
    proc = _kedro(project, "--pipelines=train_cnn21",
                  "--params=train_cnn21.training.max_epochs=200,train_cnn21.training.early_stopping_patience=200",
                  log=log)
    try:
        fold = _wait_for("fold run with a logged epoch", lambda: next(
            (r for r in _runs(project) if r["parent"] and r["status"] == "RUNNING" and r["metrics"]), None), proc, log)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        _stop(proc)
    dry = subprocess.run([sys.executable, "-m", "osteo_pipeline.rerun", "--env", "test", "--dry-run",
                          "--pipelines=train_cnn21"], cwd=project, env=_env(project), capture_output=True, text=True,
                         timeout=KEDRO_TIMEOUT)
    return {"code": code, "fold": fold, "runs": _runs(project), "log": log.read_text(), "dry": dry,
            "models_before": models_before, "models_after": _version_files(project / "data" / "06_models"),
            "journal": _journal(project)}


def test_sigterm_marks_every_mlflow_run_killed_and_exits_non_zero(killed_training: dict):
    said = killed_training["log"]
    assert killed_training["code"] == 128 + signal.SIGTERM, said[-3000:]
    runs = {r["id"]: r for r in killed_training["runs"]}
    fold = runs[killed_training["fold"]["id"]]
    assert fold["status"] == "KILLED"
    parent = runs[fold["parent"]]
    assert parent["parent"] is None and parent["status"] == "KILLED"
    assert not [r for r in runs.values() if r["status"] == "RUNNING"], runs
    assert "run interrupted by SIGTERM" in " ".join(said.split()) and fold["id"] in "".join(said.split())
    # nothing half-saved: training never reached its saves, so no new model version either
    assert killed_training["models_after"] == killed_training["models_before"]
    assert killed_training["journal"][-1]["status"] == "interrupted"
    assert killed_training["journal"][-1]["signal"] == "SIGTERM"


def test_dry_run_after_a_killed_run_says_it_did_not_complete(killed_training: dict):
    dry = killed_training["dry"]
    out = " ".join((dry.stdout + dry.stderr).split())
    assert dry.returncode == 0, out[-3000:]
    assert "did not complete: stopped by SIGTERM" in out
    assert "pipelines train_cnn21" in out


@pytest.fixture(scope="module")
def interrupted_save(project: Path, killed_training: dict) -> dict:
    """`kedro run --pipelines=ingest` stopped by SIGINT mid-save; meanwhile a second run is refused."""
    (project / "conf" / "test" / "catalog_slow_save.yml").write_text(
        "scan_manifest:\n  type: slow_save.SlowSaveParquetDataset\n"
        "  filepath: data/02_intermediate/scan_manifest.parquet\n  versioned: true\n"
    )
    manifest_dir = project / "data" / "02_intermediate" / "scan_manifest.parquet"
    before = _version_files(manifest_dir)
    log, second_log = project / "sigint.log", project / "second.log"
    proc = _kedro(project, "--pipelines=ingest", log=log)
    try:
        _wait_for("half-written manifest", lambda: "SLOW_SAVE_STARTED" in log.read_text(), proc, log)
        partial = _version_files(manifest_dir) - before
        runs_before = _runs(project)
        start = time.monotonic()
        second = _kedro(project, "--pipelines=ingest", log=second_log)
        try:
            second_code = second.wait(timeout=KEDRO_TIMEOUT)
        finally:
            _stop(second)
        second_seconds = time.monotonic() - start
        first_still_running = proc.poll() is None
        runs_after_second = _runs(project)
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        _stop(proc)
        (project / "conf" / "test" / "catalog_slow_save.yml").unlink()
    return {"code": code, "log": log.read_text(), "partial": partial, "after": _version_files(manifest_dir),
            "before": before, "second_code": second_code, "second_log": second_log.read_text(),
            "second_seconds": second_seconds, "first_still_running": first_still_running, "pid": proc.pid,
            "runs_before": runs_before, "runs_after_second": runs_after_second, "runs": _runs(project),
            "journal": _journal(project)}


def test_ctrl_c_mid_save_leaves_no_half_written_version(interrupted_save: dict):
    said = interrupted_save["log"]
    assert interrupted_save["code"] == 128 + signal.SIGINT, said[-3000:]
    assert any(p.endswith("scan_manifest.parquet") for p in interrupted_save["partial"])  # it was there...
    assert interrupted_save["after"] == interrupted_save["before"]  # ...and is gone; older versions kept
    # Rich wraps console lines anywhere: compare without whitespace
    assert "half-writtenoutputsremoved:data/02_intermediate/scan_manifest.parquet/" in "".join(said.split())
    assert not [r for r in interrupted_save["runs"] if r["status"] == "RUNNING"]
    assert interrupted_save["journal"][-1]["status"] == "interrupted"


def test_the_run_after_a_killed_run_says_the_last_one_did_not_complete(interrupted_save: dict):
    said = " ".join(interrupted_save["log"].split())
    assert "did not complete: stopped by SIGTERM" in said and "pipelines train_cnn21" in said


def test_a_second_run_is_refused_at_once_naming_the_running_one(interrupted_save: dict):
    said = " ".join(interrupted_save["second_log"].split())
    assert interrupted_save["second_code"] != 0
    assert interrupted_save["first_still_running"]  # refused, not queued behind it
    assert "another `kedro run` is using this project" in said
    assert f"pid {interrupted_save['pid']}, pipelines ingest, started 20" in said
    # took the lock before kedro-mlflow opened a run: no MLflow run of its own
    assert len(interrupted_save["runs_after_second"]) == len(interrupted_save["runs_before"])


def test_a_non_chief_multi_worker_worker_takes_no_lock():
    from osteo_pipeline.runguard import is_non_chief_worker

    cluster = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": %d}}'
    assert not is_non_chief_worker("")
    assert not is_non_chief_worker(cluster % 0)
    assert is_non_chief_worker(cluster % 1)
    assert is_non_chief_worker('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}')


def test_a_truncated_model_file_is_named_by_evaluate(project: Path, interrupted_save: dict, tmp_path: Path):
    version = "2026-01-01T00.00.00.000Z"
    model = project / "data" / "06_models" / "cnn21.keras" / version / "cnn21.keras"
    model.parent.mkdir(parents=True)
    whole = tmp_path / "whole.keras"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}} ) * 50)
        archive.writestr("model.weights.h5", os.urandom(20_000))
    model.write_bytes(whole.read_bytes()[:9_000])  # cut off half-way, as a full disk or a kill leaves it
    report = project / "data" / "08_reporting" / "cnn21_final_fit.json" / version / "cnn21_final_fit.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("{}")
    log = project / "evaluate.log"
    proc = _kedro(project, "--pipelines=evaluate", log=log)
    try:
        code = proc.wait(timeout=KEDRO_TIMEOUT)
    finally:
        _stop(proc)
    said = " ".join(log.read_text().split())
    assert code != 0
    assert f"data/06_models/cnn21.keras/{version}/cnn21.keras" in said
    assert "truncated or corrupt" in said
