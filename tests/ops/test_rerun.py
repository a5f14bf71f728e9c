"""Re-runs on new scans (osteo_pipeline.rerun) in a test-scale project copy: a first re-run
makes the missing models, new scans dropped into the raw folder make the next re-run ingest,
retrain and re-evaluate, and a re-run with nothing new writes nothing, in seconds."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_testkit import REPO, in_project

# What the test re-runs: CNN21 and evaluate (the baselines only add minutes, through the same code).
PIPELINES = ["ingest", "roi_resize", "split_augment", "train_cnn21", "evaluate"]
# CNN21 only has to train: 2 folds, 1 epoch; op determinism (process-wide) stays off in pytest.
PARAMS = {"split": {"n_folds": 2}, "train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}}}
N_NEW = 4
AIRFLOW = REPO / ".venv-airflow" / "bin"

# Runs in .venv-airflow: one scheduled-like run of the DAG (dag.test), task states as JSON.
DAG_RUN_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils import db
db.upgradedb()  # `airflow db migrate`: a fresh SQLite metadata db in AIRFLOW_HOME
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
(dag,) = bag.dags.values()
run = dag.test()
with open(sys.argv[2], "w") as out:
    json.dump({"state": str(run.state), "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}, out)
"""


def drop_new_scans(raw: Path, scratch: Path) -> list[str]:
    """Generate ``N_NEW`` scans of new patients and drop them, with their clinical and ROI rows,
    into the raw folder under new names (as a site would add a week's scans)."""
    from osteo_pipeline.cohort import generate_cohort

    clinical = generate_cohort(scratch, seed=7, n_normal=N_NEW // 2, n_osteoporosis=N_NEW - N_NEW // 2, scale=0.25,
                               repeat_patient_fraction=0.0, workers=1)
    roi = pd.read_csv(scratch / "roi.csv")
    rename = {f: f.replace("/", "/NEW_") for f in clinical["file"]}
    for old, new in rename.items():
        shutil.copy(scratch / old, raw / new)
    clinical = clinical.assign(file=clinical["file"].map(rename),
                               patient_id="NEW-" + clinical["patient_id"].astype(str))
    clinical.to_csv(raw / "clinical.csv", mode="a", header=False, index=False)
    roi.assign(file=roi["file"].map(rename)).to_csv(raw / "roi.csv", mode="a", header=False, index=False)
    return sorted(rename.values())


def versions(root: Path, relpath: str) -> list[str]:
    """Saved versions of a versioned dataset, oldest first."""
    return sorted(p.name for p in (root / relpath).iterdir() if p.is_dir())


def load_version(root: Path, relpath: str, version: str) -> Path:
    return root / relpath / version / Path(relpath).name


def snapshot(root: Path) -> dict:
    """Every data file (with its modification time) and every MLflow run and model version."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return {
        "files": {str(p.relative_to(root)): p.stat().st_mtime_ns for p in (root / "data").rglob("*") if p.is_file()},
        "runs": sorted(r.info.run_id for r in runs),
        "models": sorted((v.name, v.version) for v in client.search_model_versions()),
    }


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m osteo_pipeline.rerun ARGS` (what `make rerun` runs) from the project folder."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "KEDRO_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "osteo_pipeline.rerun", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def history(prepared_project: Path, tmp_path_factory) -> dict:
    """Three re-runs of a copy of the prepared project (ingested, no model yet): before new scans
    (in process), after them (the command line, as `make rerun`), then with nothing new (in process)."""
    from osteo_pipeline.rerun import rerun

    base = tmp_path_factory.mktemp("rerun")
    root = base / "project"
    shutil.copytree(prepared_project, root)  # the shared prepared project stays as other tests expect it
    with in_project(root):
        first = rerun(root, env="test", pipelines=PIPELINES, runtime_params=PARAMS)
    after_first = snapshot(root)
    added = drop_new_scans(root / "data" / "01_raw", base / "new_scans")
    start = time.perf_counter()
    cli = run_cli(root, "--env", "test", "--pipelines", ",".join(PIPELINES), "--params",
                  "split.n_folds=2,train_cnn21.training.deterministic=false,train_cnn21.training.max_epochs=1")
    second = {"stdout": cli.stdout, "seconds": time.perf_counter() - start,
              "session_id": versions(root, "data/02_intermediate/scan_manifest.parquet")[-1]}
    after_second = snapshot(root)
    with in_project(root):
        third = rerun(root, env="test", pipelines=PIPELINES, runtime_params=PARAMS)
    after_third = snapshot(root)
    return {"root": root, "added": added, "first": first, "second": second, "third": third,
            "snapshots": [after_first, after_second, after_third]}


def parent_run(root: Path, session_id: str):
    """kedro-mlflow's parent run of a Kedro session (it tags the run with the session id)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.run_id = '{session_id}'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent


@pytest.mark.slow
def test_first_rerun_makes_what_is_missing(history):
    first = history["first"]
    assert first.ran and not first.plan.change
    assert "missing or older" in first.plan.reason
    assert {"cnn21_model", "evaluation_summary"} <= set(first.plan.stale)


@pytest.mark.slow
def test_new_scans_are_ingested_into_a_new_manifest_version(history):
    root, second = history["root"], history["second"]
    assert f"rerun: ran {', '.join(PIPELINES)}" in second["stdout"]
    assert f"raw scans changed since {history['first'].session_id}: {N_NEW} new scans" in second["stdout"]
    said = next(line for line in second["stdout"].splitlines() if line.startswith("rerun: ran"))
    # Scans are named by file_ref (raw paths may carry patient ids); the local-only file index maps them.
    index = pd.read_parquet(load_version(root, "data/02_intermediate/file_index.parquet",
                                         versions(root, "data/02_intermediate/file_index.parquet")[-1]))
    added_refs = set(index.set_index("source").loc[history["added"], "file_ref"])
    assert all(f in said for f in added_refs) and "removed" not in said and "changed scan" not in said
    assert not any(f in said for f in history["added"])
    manifests = versions(root, "data/02_intermediate/scan_manifest.parquet")
    assert manifests == [manifests[0], history["first"].session_id, second["session_id"]]  # every version kept
    before = pd.read_parquet(load_version(root, "data/02_intermediate/scan_manifest.parquet", manifests[-2]))
    after = pd.read_parquet(load_version(root, "data/02_intermediate/scan_manifest.parquet", manifests[-1]))
    new_ids = {hashlib.sha256((root / "data" / "01_raw" / f).read_bytes()).hexdigest() for f in history["added"]}
    assert new_ids <= set(after.scan_id) and not new_ids & set(before.scan_id)
    assert len(after) == len(before) + N_NEW
    assert set(after.loc[after.scan_id.isin(new_ids), "file_ref"]) == added_refs


@pytest.mark.slow
def test_new_scans_retrain_cnn21_with_runs_tagged_by_the_new_fingerprint(history):
    root, sessions = history["root"], [history["first"].session_id, history["second"]["session_id"]]
    assert versions(root, "data/06_models/cnn21.keras") == sessions
    fingerprints = [json.loads(load_version(root, "data/05_model_input/data_fingerprint.json", s).read_text())
                    for s in sessions]
    assert fingerprints[1]["n_scans"] == fingerprints[0]["n_scans"] + N_NEW
    assert fingerprints[1]["manifest_sha256"] != fingerprints[0]["manifest_sha256"]
    for session_id, fingerprint in zip(sessions, fingerprints, strict=True):
        client, parent = parent_run(root, session_id)
        assert parent.data.tags["data.n_scans"] == str(fingerprint["n_scans"])
        assert parent.data.tags["data.fingerprint"] == fingerprint["manifest_sha256"][:12]
        assert "rerun.reason" in parent.data.tags
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        trained = [c for c in children if c.data.tags.get("stage") in {"cv", "final"}]
        assert sorted(c.data.tags["stage"] for c in trained) == ["cv", "cv", "final"]  # 2 folds + final fit
        for child in trained:
            assert child.data.tags["data.manifest_sha256"] == fingerprint["manifest_sha256"]
            assert child.data.tags["data.n_scans"] == str(fingerprint["n_scans"])
    assert history["first"].mlflow_run_id == parent_run(root, sessions[0])[1].info.run_id
    registered = client.search_model_versions("name='osteo-cnn21'")
    # two versions; the new one comes from the final fit on the new scans
    assert sorted((int(v.version), v.run_id in {c.info.run_id for c in trained}) for v in registered) == [
        (1, False), (2, True)]


@pytest.mark.slow
def test_new_scans_are_evaluated(history):
    root, sessions = history["root"], [history["first"].session_id, history["second"]["session_id"]]
    assert versions(root, "data/08_reporting/evaluation_summary.json") == sessions
    summary = json.loads(load_version(root, "data/08_reporting/evaluation_summary.json", sessions[1]).read_text())
    fingerprint = json.loads(load_version(root, "data/05_model_input/data_fingerprint.json", sessions[1]).read_text())
    assert summary["data_fingerprint"] == fingerprint
    predictions = pd.read_csv(load_version(root, "data/08_reporting/test_predictions.csv", sessions[1]))
    split = pd.read_csv(load_version(root, "data/05_model_input/split_table.csv", sessions[1]))
    assert set(predictions.scan_id) <= set(split.scan_id[split.partition == "test"])


@pytest.mark.slow
def test_nothing_new_writes_nothing_and_takes_seconds(history):
    third = history["third"]
    _, after_second, after_third = history["snapshots"]
    assert not third.ran and not third.plan.needed
    assert "no new or changed scans" in third.plan.reason and "nothing to do" in third.plan.reason
    for what in ("files", "runs", "models"):  # no file written or touched, no MLflow run, no model version
        assert after_third[what] == after_second[what], what
    assert third.seconds < 15, f"a re-run with nothing new took {third.seconds:.1f} s"
    print(f"no-op re-run: {third.seconds:.2f} s in process; the CLI re-run with new scans: "
          f"{history['second']['seconds']:.0f} s")


@pytest.mark.slow
def test_scheduled_airflow_run_with_nothing_new_skips_every_task(history):
    """The DAG template of airflow/dags/, generated for train_cnn21 in the test env, run once by a
    real Airflow: its first task finds no new scan and skips, so the training task is skipped too."""
    from kedro.framework.startup import bootstrap_project
    from kedro_airflow.plugin import create

    if not (AIRFLOW / "python").exists():
        pytest.skip(f"NO AIRFLOW: {AIRFLOW / 'python'} is missing, the DAG was not run; run `make airflow-venv`")
    root = history["root"]
    home, dags = root.parent / "airflow_home", root.parent / "dags"
    with in_project(root):
        create.main(["--env", "test", "--pipelines", "train_cnn21", "--group-by", "memory", "--jinja-file",
                     str(REPO / "airflow" / "dag_template.j2"), "--target-dir", str(dags)],
                    obj=bootstrap_project(root), standalone_mode=False)
    before = snapshot(root)
    (home / "run.py").parent.mkdir(exist_ok=True)
    (home / "run.py").write_text(DAG_RUN_SCRIPT)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "OSTEO_PIPELINE_PROJECT": str(root),
           "OSTEO_PIPELINE_PYTHON": sys.executable, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    start = time.perf_counter()
    done = subprocess.run([str(AIRFLOW / "python"), str(home / "run.py"), str(dags), str(home / "run.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((home / "run.json").read_text())
    # end_mlflow_run is skipped too: no task opened the DAG run's MLflow parent run
    assert result == {"state": "success",
                      "tasks": {"check_new_scans": "skipped", "train_cnn21": "skipped", "end_mlflow_run": "skipped"}}
    assert "check_new_scans: no new or changed scans" in done.stdout + done.stderr
    after = snapshot(root)
    for what in ("files", "runs", "models"):
        assert after[what] == before[what], what
    print(f"Airflow run with nothing new: {time.perf_counter() - start:.1f} s (new metadata db + dag.test)")


def _manifest(**changes) -> pd.DataFrame:
    rows = pd.DataFrame({
        "scan_id": ["a" * 64, "b" * 64, "c" * 64], "file_ref": ["f-a.png", "f-b.png", "f-c.png"],
        "patient_id": ["pt-1", "pt-2", "pt-3"], "label": ["normal", "normal", "osteoporosis"],
        "width": np.array([100, 120, 110], dtype="int64"), "age": [61.0, np.nan, 70.0],
        "roi_x0": [np.nan, 3.0, 4.0],
    })
    for column, values in changes.items():
        rows[column] = values
    return rows


def test_compare_manifests_sees_added_removed_and_changed_scans():
    from osteo_pipeline.rerun import compare_manifests

    before = pd.read_parquet(io.BytesIO(_manifest().to_parquet()))  # as the catalog loads it
    assert not compare_manifests(before, _manifest())  # NaNs, ints and floats survive the round trip
    relabelled = _manifest(label=["normal", "osteoporosis", "osteoporosis"])
    assert compare_manifests(before, relabelled).changed == ("f-b.png",)
    grown = pd.concat([_manifest().iloc[1:], _manifest(scan_id=["d" * 64] * 3, file_ref=["f-d.png"] * 3).iloc[:1]])
    change = compare_manifests(before, grown)
    assert change.added == ("f-d.png",) and change.removed == ("f-a.png",) and not change.changed
    assert "1 new scan (f-d.png)" in change.describe() and "1 removed scan" in change.describe()
    assert compare_manifests(None, _manifest()).added == ("f-a.png", "f-b.png", "f-c.png")
    # A manifest saved before file_ref existed: its removed scans are named by scan id, never by raw path.
    old = before.rename(columns={"file_ref": "source"}).assign(source=["normal/2144650_a.png"] * 3)
    assert compare_manifests(old, _manifest().iloc[1:]).removed == ("scan " + "a" * 12,)
    assert compare_manifests(before, _manifest().drop(columns="age")).columns == ("age",)


def test_stale_outputs_are_missing_or_older_than_the_manifest_they_come_from(tmp_path):
    """A scan-independent output older than the manifest is fine (in the Airflow DAG the policy's
    task may run before ingest's); one made from the manifest but older than it is stale."""
    from kedro.io import DataCatalog, Version
    from kedro.pipeline import Node, Pipeline
    from kedro_datasets.json import JSONDataset

    from osteo_pipeline.rerun import stale_outputs

    day = "2026-01-0{}T00.00.00.000Z".format

    def dataset(name: str, saved: str | None = None, versioned: bool = True) -> JSONDataset:
        path = str(tmp_path / f"{name}.json")
        if saved:
            JSONDataset(filepath=path, version=Version(None, saved)).save({})
        return JSONDataset(filepath=path, version=Version(None, None) if versioned else None)

    catalog = DataCatalog({"policy": dataset("policy", day(1)), "model": dataset("model", day(3)),
                           "old_model": dataset("old_model", day(1)), "never_made": dataset("never_made"),
                           "report": dataset("report", versioned=False)})
    def make(*_):
        return {}

    pipeline = Pipeline([Node(make, None, "policy")]
                        + [Node(make, "manifest", name) for name in ("model", "old_model", "never_made", "report")])
    from_manifest = {"model", "old_model", "never_made", "report"}
    assert stale_outputs(catalog, pipeline, day(2), from_manifest) == ["never_made", "old_model"]
    assert stale_outputs(catalog, pipeline, day(1), from_manifest) == ["never_made"]


def test_make_rerun_runs_the_module():
    done = subprocess.run(["make", "-n", "rerun", "ENV=test"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert ".venv/bin/python -m osteo_pipeline.rerun --env test" in done.stdout


def test_a_changed_roi_corrections_file_is_a_data_change(tmp_path):
    """A person correcting boxes (roi_corrections.csv in the raw folder) makes the next rerun needed,
    until a run has used exactly those boxes (roi_table rows with roi_source "corrected")."""
    from kedro.io import DataCatalog
    from kedro_datasets.pandas import CSVDataset

    from osteo_pipeline.datasets import RawFolderDataset
    from osteo_pipeline.rerun import roi_corrections_change

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"not read here")
    table = CSVDataset(filepath=str(tmp_path / "roi_table.csv"), save_args={"index": False})
    catalog = DataCatalog({"raw_scans": RawFolderDataset(path=str(raw)), "roi_table": table})
    params = {"roi_resize": {"corrections": {"file": "roi_corrections.csv"}}}
    manifest = _manifest(height=[100, 100, 100])
    before = pd.DataFrame({"file_ref": ["f-a.png", "f-b.png"], "roi_source": ["auto", "csv"],
                           "x0": [1, 2], "y0": [1, 2], "x1": [50, 60], "y1": [90, 80]})
    table.save(before)
    assert roi_corrections_change(catalog, params, manifest) == ""  # no corrections file, none used
    (raw / "roi_corrections.csv").write_text("file_ref,x0,y0,x1,y1,confidence\nf-a.png,5,6,40,70,0.2\n")
    assert roi_corrections_change(catalog, params, manifest) == (
        "ROI corrections in roi_corrections.csv changed: 1 new (f-a.png)")
    table.save(before.assign(roi_source=["corrected", "csv"], x0=[5, 2], y0=[6, 2], x1=[40, 60], y1=[70, 80]))
    assert roi_corrections_change(catalog, params, manifest) == ""  # the last run used these boxes
    (raw / "roi_corrections.csv").write_text("file_ref,x0,y0,x1,y1\nf-a.png,5,6,41,70\n")
    assert "1 changed (f-a.png)" in roi_corrections_change(catalog, params, manifest)
    (raw / "roi_corrections.csv").write_text("file_ref,x0,y0,x1,y1\nf-a.png,5,6,4,70\n")  # x1 < x0
    assert "invalid rows" in roi_corrections_change(catalog, params, manifest)  # the run stops and names the row
    (raw / "roi_corrections.csv").unlink()
    assert "1 withdrawn (f-a.png)" in roi_corrections_change(catalog, params, manifest)


# ---------------------------------------------------------------------------- the raw-folder state
# A small project ingested once by `rerun` itself (a run that saves a manifest records the raw
# folder's state); its raw folder names a fake patient in a folder and in file names, as real
# exports do (2144650_study1_1.png), so the state can be checked for names.
FAKE_PATIENT = "DOE_JANE_1957"
RAW_STATE = Path("data/02_intermediate/rerun_raw_state.json")


@pytest.fixture(scope="module")
def ingested_project(tmp_path_factory) -> Path:
    from osteo_pipeline.cohort import generate_cohort
    from osteo_pipeline.rerun import rerun
    from osteo_testkit import make_project

    root = make_project(tmp_path_factory.mktemp("raw_state") / "project")
    raw = root / "data" / "01_raw"
    generate_cohort(raw, seed=3, n_normal=3, n_osteoporosis=3, scale=0.25, repeat_patient_fraction=0.0, workers=1)
    old = sorted((raw / "normal").glob("*.png"))[0].relative_to(raw).as_posix()
    new = f"normal/{FAKE_PATIENT}/{FAKE_PATIENT}_scan1.png"
    (raw / new).parent.mkdir()
    (raw / old).rename(raw / new)
    for table in ("clinical.csv", "roi.csv"):
        (raw / table).write_text((raw / table).read_text().replace(old, new))
    (raw / "normal" / f"{FAKE_PATIENT}_notes.txt").write_text("skipped by ingest, still part of the folder\n")
    with in_project(root):
        first = rerun(root, env="test", pipelines=["ingest"])
    assert first.ran and "no manifest saved yet" in first.plan.reason
    assert (root / RAW_STATE).is_file(), "the run that saved the manifest recorded no raw-folder state"
    return root


@pytest.fixture
def project(ingested_project: Path, tmp_path: Path) -> Path:
    """A copy of the ingested project (copied files: new ctimes, same bytes and mtimes)."""
    root = tmp_path / "project"
    shutil.copytree(ingested_project, root, symlinks=True)
    return root


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The scans ingest decodes from now on, in this process (a spy on its decoder)."""
    from osteo_pipeline.pipelines.ingest import nodes

    calls: list[str] = []
    decode = nodes.decode_scan

    def spy(data, name, **kwargs):
        calls.append(name)
        return decode(data, name=name, **kwargs)

    monkeypatch.setattr(nodes, "decode_scan", spy)
    return calls


def plan(root: Path, pipelines=("ingest",), **kwargs):
    from osteo_pipeline.rerun import plan_for_project

    with in_project(root):
        return plan_for_project(root, env="test", pipelines=list(pipelines), **kwargs)


def test_nothing_new_is_answered_from_the_raw_folder_state_without_decoding(project, decoded):
    copied = plan(project)  # the copy has new ctimes: same bytes by the content hashes, times recorded
    assert (copied.needed, copied.raw_check) == (False, "content") and not decoded
    state = json.loads((project / RAW_STATE).read_text())
    fast = plan(project)
    assert (fast.needed, fast.raw_check) == (False, "stat") and not decoded
    assert "no new or changed scans: 6 scans" in fast.reason and "nothing to do" in fast.reason
    assert fast.manifest_version == state["manifest_version"] == versions(
        project, "data/02_intermediate/scan_manifest.parquet")[-1]
    (project / RAW_STATE).unlink()  # no state (or a lost one): the full check, which records it again
    full = plan(project)
    assert (full.needed, full.raw_check) == (False, "ingest") and len(decoded) == 6
    assert "raw folder unchanged" not in full.reason
    assert json.loads((project / RAW_STATE).read_text()) == state
    assert plan(project).raw_check == "stat" and len(decoded) == 6


def test_touched_files_with_the_same_bytes_are_nothing_new_by_their_content_hashes(project, decoded):
    assert plan(project).raw_check == "content"  # the copy's new ctimes
    later = time.time() + 60
    for path in (project / "data" / "01_raw").rglob("*"):
        if path.is_file():
            os.utime(path, (later, later))
    touched = plan(project)
    assert (touched.needed, touched.raw_check) == (False, "content") and not decoded
    assert "same file contents" in touched.reason
    assert plan(project).raw_check == "stat"  # the new times were recorded


def _reencode_with_one_pixel_changed(source: Path, target: Path) -> None:
    from PIL import Image

    with Image.open(source) as image:
        image.load()
        pixels = image.copy()
    x, y = pixels.width // 2, pixels.height // 2
    value = pixels.getpixel((x, y))
    pixels.putpixel((x, y), (value + 1) % 256 if isinstance(value, int) else tuple((v + 1) % 256 for v in value))
    pixels.save(target)


def _change_a_scan(raw: Path) -> None:
    scan = sorted((raw / "osteoporosis").glob("*.png"))[0]
    _reencode_with_one_pixel_changed(scan, scan)


def _add_a_scan(raw: Path) -> None:
    _reencode_with_one_pixel_changed(sorted((raw / "osteoporosis").glob("*.png"))[0], raw / "normal" / "NEW_1.png")


def _move_a_scan_to_another_class(raw: Path) -> None:
    scan = sorted((raw / "osteoporosis").glob("*.png"))[0]
    scan.rename(raw / "normal" / scan.name)


def _edit_the_clinical_export(raw: Path) -> None:
    table = pd.read_csv(raw / "clinical.csv")
    table.loc[0, "age"] = table.loc[0, "age"] + 1
    table.to_csv(raw / "clinical.csv", index=False)


@pytest.mark.parametrize("change", [_change_a_scan, _add_a_scan, _move_a_scan_to_another_class,
                                    _edit_the_clinical_export], ids=lambda f: f.__name__.strip("_"))
def test_changed_raw_files_plan_a_rerun_with_the_same_reasons_as_without_a_state(project, change):
    assert plan(project).raw_check == "content"
    state = (project / RAW_STATE).read_bytes()
    change(project / "data" / "01_raw")
    with_state = plan(project)
    assert with_state.needed and with_state.raw_check == "ingest" and with_state.change
    assert with_state.reason.startswith("raw scans changed since")
    assert (project / RAW_STATE).read_bytes() == state  # a folder that does not give the manifest is not recorded
    (project / RAW_STATE).unlink()
    without = plan(project)
    assert (without.reason, without.change) == (with_state.reason, with_state.change)
    assert not (project / RAW_STATE).exists()


def test_other_ingest_settings_are_not_answered_from_the_state(project, decoded):
    assert plan(project).raw_check == "content"
    other = plan(project, runtime_params={"ingest": {"degenerate": {"min_side": 17}}})
    assert (other.needed, other.raw_check) == (False, "ingest") and len(decoded) == 6  # found by running ingest
    assert plan(project).raw_check == "ingest"  # the state now holds the other settings
    assert plan(project).raw_check == "stat" and len(decoded) == 12


def test_stale_outputs_and_roi_corrections_are_checked_on_the_fast_path(project, decoded):
    assert plan(project).raw_check == "content"
    stale = plan(project, pipelines=["ingest", "roi_resize"])
    assert stale.needed and stale.raw_check == "stat" and "missing or older than the manifest" in stale.reason
    assert "model_input_150" in stale.stale and not decoded
    # A saved roi_table that used no corrected box, then a person's correction dropped into the raw folder.
    manifest = pd.read_parquet(load_version(project, "data/02_intermediate/scan_manifest.parquet",
                                            stale.manifest_version))
    ref = sorted(manifest.file_ref)[0]
    pd.DataFrame({"file_ref": sorted(manifest.file_ref), "roi_source": "csv", "x0": 1, "y0": 1, "x1": 20,
                  "y1": 30}).to_csv(project / "data/08_reporting/roi_table.csv", index=False)
    (project / "data/01_raw/roi_corrections.csv").write_text(f"file_ref,x0,y0,x1,y1\n{ref},2,2,21,31\n")
    full = plan(project, pipelines=["ingest", "roi_resize"])
    assert full.raw_check == "ingest" and full.reason == f"ROI corrections in roi_corrections.csv changed: 1 new ({ref})"
    fast = plan(project, pipelines=["ingest", "roi_resize"])  # the manifest still matched: the state was recorded
    assert fast.raw_check == "stat" and fast.reason == full.reason
    assert len(decoded) == 6  # once, by the full check


def test_the_raw_folder_state_holds_no_raw_name(project):
    plan(project)
    raw = project / "data" / "01_raw"
    text = (project / RAW_STATE).read_bytes().decode()
    names = {p.relative_to(raw).as_posix() for p in raw.rglob("*")}
    names |= {part for name in names for part in name.split("/")} | {Path(n).stem for n in names}
    assert any(FAKE_PATIENT in n for n in names)
    assert not [n for n in names if n in text] and FAKE_PATIENT.lower() not in text.lower()
    state = json.loads(text)  # an allow-list: a version, digests and counts
    assert set(state) == {"format", "manifest_version", "settings_sha256", "stat_sha256", "content_sha256",
                          "n_files", "n_scans"}
    assert all(len(state[k]) == 64 and int(state[k], 16) >= 0 for k in state if k.endswith("_sha256"))
    assert (state["n_files"], state["n_scans"], state["format"]) == (9, 6, 1)  # 6 scans, 2 CSVs, the notes


def test_latest_versions_from_the_catalog_config_are_kedros(project):
    """``latest_version`` reads a declared versioned file's versions from its configuration, without
    making the dataset (that would import its class: TensorFlow for a Keras model); Kedro's answer."""
    from kedro.framework.startup import bootstrap_project
    from kedro.io.core import AbstractVersionedDataset, VersionNotFoundError

    from osteo_pipeline.rerun import _bare_context, latest_version

    (project / "data/02_intermediate/scan_manifest.parquet/2099-01-01T00.00.00.000Z").mkdir()  # no file: no version
    names = ("scan_manifest", "file_index", "ingest_report", "model_input_150", "cnn21_model", "evaluation_mlflow")
    bootstrap_project(project)
    with in_project(project):
        by_config, by_kedro = {}, {}
        for answers, catalog in ((by_config, _bare_context(project, "test", None).catalog),
                                 (by_kedro, _bare_context(project, "test", None).catalog)):
            for name in names:
                try:
                    if answers is by_config:
                        answers[name] = latest_version(catalog, name)
                    else:
                        dataset = catalog.get(name)
                        answers[name] = (dataset.resolve_load_version()
                                         if isinstance(dataset, AbstractVersionedDataset) else None)
                except VersionNotFoundError:
                    answers[name] = "no version"
            if answers is by_config:
                assert not set(names) & set(catalog._datasets), "latest_version made datasets"
    assert by_config == by_kedro
    assert by_config["scan_manifest"] == versions(project, "data/02_intermediate/scan_manifest.parquet")[-2]
    assert (by_config["model_input_150"], by_config["ingest_report"]) == ("no version", None)


def test_make_rerun_with_nothing_new_imports_no_tensorflow_or_mlflow(project):
    plan(project)  # records the copy's times
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "KEDRO_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # --pipelines ingest: nothing to do; every pipeline (--dry-run): every model's versions are looked up.
    for args, said in ((["--pipelines", "ingest"], "nothing to do"), (["--dry-run"], "missing or older")):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "osteo_pipeline.rerun", "--env", "test", *args],
                              cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert said in done.stdout and "same file sizes and times" in done.stdout, done.stdout[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "osteo_pipeline.datasets.raw_folder" in imported  # -X importtime did list the imports
        heavy = sorted(m for m in imported if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "kedro_mlflow"})
        assert not heavy, (args, heavy[:10])
