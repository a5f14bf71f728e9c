"""The committed Airflow DAG (airflow/dags/, made by `make airflow-dag` with kedro-airflow): it is
what kedro-airflow generates from today's pipelines, and a real Airflow 3 (.venv-airflow, built by
`make airflow-venv`) imports it with one task per group of Kedro nodes, wired as the pipeline is.
Run by that Airflow (the template, for the cheap ``roi_resize`` pipeline), each DAG run is one
MLflow parent run that every task logs into, ended by the DAG run's outcome, and a triggered
run's ``--conf`` (Kedro env, run-time parameters) reaches every task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from osteo_testkit import REPO, TEST_COHORT, in_project, make_project, run_kedro

DAG_FILE = REPO / "airflow" / "dags" / "osteo_pipeline_dag.py"
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
REGENERATE = "run `make airflow-dag` and commit airflow/dags/"

# Runs in .venv-airflow (no Kedro there): parse the folder as the scheduler does, report as JSON.
DAGBAG_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = {t.task_id: {"upstream": sorted(t.upstream_task_ids), "operator": type(t).__name__,
                             "args": list(t.op_args), "python": t.python,
                             "skip_on_exit_code": sorted(t.skip_on_exit_code), "setup": t.is_setup,
                             "teardown": t.is_teardown, "trigger_rule": t.trigger_rule.value,
                             "fails_dag_run": t.on_failure_fail_dagrun} for t in dag.tasks}
        dags[dag_id] = {"schedule": str(dag.schedule), "catchup": dag.catchup, "params": dag.params.dump(),
                        "max_active_runs": dag.max_active_runs, "tasks": tasks}
    with open(sys.argv[2], "w") as out:
        json.dump({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}, out)
    """
)


def airflow_env(home: Path, dags: Path) -> dict[str, str]:
    """A throwaway AIRFLOW_HOME (config, SQLite db) reading only ``dags``."""
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    if not AIRFLOW_PYTHON.exists():
        pytest.skip(f"NO AIRFLOW: {AIRFLOW_PYTHON} is missing, so the DAG was not loaded in Airflow; "
                    "run `make airflow-venv` (`make test` builds it)")
    return AIRFLOW_PYTHON


@pytest.fixture(scope="module")
def kedro_side(tmp_path_factory) -> dict:
    """From the project's own virtualenv: the node groups kedro-airflow makes of ``__default__``
    (nodes joined by in-memory datasets together), and the DAG file it generates today."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro_airflow.grouping import group_memory_nodes
    from kedro_airflow.plugin import create

    root = make_project(tmp_path_factory.mktemp("airflow") / "project")
    target = root.parent / "dags"
    with in_project(root):
        metadata = bootstrap_project(root)
        pipelines.set_requested(None)  # every pipeline, whatever an earlier test in this process asked for
        with KedroSession.create(project_path=root) as session:
            catalog = session.load_context().catalog
            pipeline = pipelines["__default__"]
            groups = group_memory_nodes(catalog, pipeline)
        # `make airflow-dag`, i.e. `kedro airflow create ...`, through the plugin's own command
        create.main(["--group-by", "memory", "--jinja-file", str(REPO / "airflow" / "dag_template.j2"),
                     "--target-dir", str(target)], obj=metadata, standalone_mode=False)
    by_name = {g.name: frozenset(g.nodes) for g in groups}
    return {
        "groups": {frozenset(g.nodes): frozenset(by_name[d] for d in g.dependencies) for g in groups},
        "nodes": {n.name for n in pipeline.nodes},
        "generated": (target / DAG_FILE.name).read_text(),
    }


@pytest.fixture(scope="module")
def parsed(airflow_python, tmp_path_factory) -> dict:
    """The committed DAG folder as Airflow's DagBag sees it."""
    home = tmp_path_factory.mktemp("airflow_home")
    script, report = home / "dagbag.py", home / "dagbag.json"
    script.write_text(DAGBAG_SCRIPT)
    done = subprocess.run([str(airflow_python), str(script), str(DAG_FILE.parent), str(report)], capture_output=True,
                          text=True, timeout=120, env=airflow_env(home, DAG_FILE.parent))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(report.read_text())


def test_committed_dag_is_what_kedro_airflow_generates_today(kedro_side):
    assert DAG_FILE.read_text() == kedro_side["generated"], f"airflow/dags/ is out of date: {REGENERATE}"


def test_airflow_imports_the_dag_without_kedro_installed(parsed, airflow_python):
    assert parsed["import_errors"] == {}
    assert list(parsed["dags"]) == ["osteo-pipeline"]
    dag = parsed["dags"]["osteo-pipeline"]
    assert dag["schedule"] == "@weekly" and dag["catchup"] is False and dag["max_active_runs"] == 1
    # The Kedro env and run-time parameters are DAG params (a triggered run's --conf), read when a task starts.
    assert dag["params"] == {"env": "local", "runtime_params": {}}
    # The Airflow side holds no Kedro: the tasks run in the project's virtualenv.
    probe = subprocess.run([str(airflow_python), "-c", "import kedro"], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'kedro'" in probe.stderr
    for task in dag["tasks"].values():
        assert task["operator"] == "_PythonExternalDecoratedOperator"
        assert task["python"] == str(REPO / ".venv" / "bin" / "python")
        assert task["args"][:2] == [str(REPO), "{{ params.env }}"]


def test_one_task_per_group_of_nodes_wired_as_the_pipeline(parsed, kedro_side):
    tasks = dict(parsed["dags"]["osteo-pipeline"]["tasks"])
    gate = tasks.pop("check_new_scans")
    end = tasks.pop("end_mlflow_run")
    assert gate["skip_on_exit_code"] == [gate["args"][5]] and gate["upstream"] == [] and gate["setup"]
    # The MLflow run's end waits for every task, whatever its outcome, and is skipped with the gate.
    assert end["teardown"] and end["fails_dag_run"] and end["trigger_rule"] == "all_done_setup_success"
    assert set(end["upstream"]) == {"check_new_scans", *tasks}
    nodes_of = {task_id: frozenset(task["args"][3]) for task_id, task in tasks.items()}
    assert sorted(n for nodes in nodes_of.values() for n in nodes) == sorted(kedro_side["nodes"]), REGENERATE
    assert set(nodes_of.values()) == set(kedro_side["groups"]), REGENERATE
    task_of = {nodes: task_id for task_id, nodes in nodes_of.items()}
    for task_id, task in tasks.items():
        assert task["args"][2] == "__default__"
        needs = {task_of[group] for group in kedro_side["groups"][nodes_of[task_id]]}
        assert set(task["upstream"]) == (needs or {"check_new_scans"}), task_id
    # Readable names: the baselines are one task each, named after their namespace; the stages after themselves.
    assert {"vgg16", "svm", "fusion", "ingest", "train_cnn21", "evaluate"} <= set(tasks)
    assert all(n.startswith("vgg16.") for n in nodes_of["vgg16"])


# Runs in .venv-airflow: one DAG run per --conf in argv[3] (dag.test, as the scheduler would run it,
# on a fresh SQLite metadata db), each run's id, state and task states as JSON.
DAG_RUNS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db
    db.upgradedb()  # `airflow db migrate`
    bag = DagBag(dag_folder=sys.argv[1])
    assert not bag.import_errors, bag.import_errors
    (dag,) = bag.dags.values()
    runs = []
    for conf in json.loads(sys.argv[3]):
        run = dag.test(run_conf=conf)
        runs.append({"run_id": run.run_id, "state": str(run.state),
                     "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}})
    with open(sys.argv[2], "w") as out:
        json.dump(runs, out)
    """
)
# roi_resize: three tasks (crop_and_resize, then roi_contact_sheet and roi_review), seconds each.
ROI_TASKS = {"crop_and_resize", "roi_contact_sheet", "roi_review"}
# Not the default env (local) the DAG is generated with: conf/test sets review.sheet_max 8 (base: 16).
TEST_ENV_SHEET_MAX = "8"


@pytest.fixture(scope="module")
def dag_runs(airflow_python, tmp_path_factory) -> dict:
    """The template's DAG for ``roi_resize`` on an ingested test-scale project, run three times by
    Airflow: a run whose first Kedro task fails, a triggered run with --conf, and a scheduled-like
    run with nothing new. Returns the Airflow results and every MLflow run of the project's store."""
    from kedro.framework.startup import bootstrap_project
    from kedro_airflow.plugin import create
    from mlflow import MlflowClient

    from osteo_pipeline.cohort import generate_cohort

    base = tmp_path_factory.mktemp("dag_runs")
    root = make_project(base / "project")
    generate_cohort(root / "data" / "01_raw", **TEST_COHORT)
    run_kedro(root, ["ingest"])
    # A failed task must not wait retry_delay (minutes) for its retry.
    airflow_yml = root / "conf" / "base" / "airflow.yml"
    airflow_yml.write_text(airflow_yml.read_text().replace("retries: 1", "retries: 0"))
    home, dags = base / "airflow_home", base / "dags"
    with in_project(root):
        create.main(["--pipelines", "roi_resize", "--group-by", "memory", "--jinja-file",
                     str(REPO / "airflow" / "dag_template.j2"), "--target-dir", str(dags)],
                    obj=bootstrap_project(root), standalone_mode=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    before = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    raw_dir = str(root / "data" / "01_raw")
    confs = [
        {"env": "test", "runtime_params": {"roi_resize.size_cnn21": "x"}},  # crop_and_resize: int("x") fails
        {"env": "test", "runtime_params": {"roi_resize.contact_sheet_per_class": 3, "raw_dir": raw_dir}},
        {},  # the defaults, as a scheduled run: nothing changed since the run before
    ]
    home.mkdir()
    (home / "runs.py").write_text(DAG_RUNS_SCRIPT)
    start = time.perf_counter()
    done = subprocess.run(
        [str(airflow_python), str(home / "runs.py"), str(dags), str(home / "runs.json"), json.dumps(confs)],
        capture_output=True, text=True, timeout=1500,  # ~8 min on an idle 2-core CPU
        env={**airflow_env(home, dags), "OSTEO_PIPELINE_PROJECT": str(root), "OSTEO_PIPELINE_PYTHON": sys.executable,
             "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"three Airflow runs of the roi_resize DAG: {time.perf_counter() - start:.1f} s")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return {"root": root, "raw_dir": raw_dir, "airflow": json.loads((home / "runs.json").read_text()),
            "log": done.stdout + done.stderr, "mlflow": [r for r in runs if r.info.run_id not in before]}


def dag_parent(dag_runs: dict, airflow_run: dict):
    """The one MLflow run tagged with this Airflow DAG run."""
    (parent,) = [r for r in dag_runs["mlflow"] if r.data.tags.get("airflow.run_id") == airflow_run["run_id"]]
    return parent


def test_a_dag_run_is_one_mlflow_parent_run_shared_by_its_tasks(dag_runs):
    failed, triggered, nothing_new = dag_runs["airflow"]
    assert triggered["state"] == "success", triggered
    assert triggered["tasks"] == {"check_new_scans": "success", "end_mlflow_run": "success",
                                  **{task: "success" for task in ROI_TASKS}}
    parent = dag_parent(dag_runs, triggered)
    assert parent.info.run_name == f"airflow osteo-pipeline {triggered['run_id']}"
    assert parent.info.status == "FINISHED" and "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.tags["airflow.dag_id"] == "osteo-pipeline"
    # Every task's Kedro session logged into it (its save version), none opened a run of its own.
    sessions = {k.removeprefix("kedro.session."): v for k, v in parent.data.tags.items() if k.startswith("kedro.session.")}
    assert set(sessions) == ROI_TASKS
    assert len(set(sessions.values())) == 3
    contact_sheets = dag_runs["root"] / "data" / "08_reporting" / "roi_contact_sheet.png"
    if contact_sheets.is_dir():  # its versions are its sessions' ids
        assert sessions["roi_contact_sheet"] in {p.name for p in contact_sheets.iterdir()}
    top_level = [r for r in dag_runs["mlflow"] if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_id for r in top_level) == sorted(dag_parent(dag_runs, run).info.run_id
                                                               for run in (failed, triggered))
    # Params of the three sessions, same keys with the same values (crop_and_resize logs all of roi_resize).
    assert parent.data.params["roi_resize.review.sheet_max"] == TEST_ENV_SHEET_MAX
    assert parent.data.params["ingest.max_pixels"] == "50000000"
    # The one-task tags kedro-mlflow set are gone; no run of the store is left RUNNING.
    assert not {"node_names", "kedro_command", "run_id"} & set(parent.data.tags)
    assert all(r.info.status != "RUNNING" for r in dag_runs["mlflow"])


def test_dag_params_from_conf_reach_every_task_redacted_in_mlflow(dag_runs):
    parent = dag_parent(dag_runs, dag_runs["airflow"][1])
    assert parent.data.tags["env"] == "test"
    assert parent.data.params["roi_resize.contact_sheet_per_class"] == "3"  # a dotted run-time param, nested
    # A folder path is a run-time parameter MLflow must not hold (it may name a patient or a site).
    assert eval(parent.data.tags["runtime_params"]) == {"roi_resize": "<not recorded>", "raw_dir": "<not recorded>"}
    assert not [k for k, v in {**parent.data.tags, **parent.data.params}.items() if dag_runs["raw_dir"] in v]


def test_a_failed_task_ends_the_dag_runs_mlflow_run_failed(dag_runs):
    failed = dag_runs["airflow"][0]
    assert failed["state"] == "failed"
    assert failed["tasks"] == {"check_new_scans": "success", "crop_and_resize": "failed",
                               "roi_contact_sheet": "upstream_failed", "roi_review": "upstream_failed",
                               "end_mlflow_run": "failed"}  # the teardown fails the DAG run (its only leaf)
    parent = dag_parent(dag_runs, failed)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["airflow.failed_tasks"] == "crop_and_resize"
    assert set(k for k in parent.data.tags if k.startswith("kedro.session.")) == {"kedro.session.crop_and_resize"}


def test_a_run_with_nothing_new_opens_no_mlflow_run(dag_runs):
    nothing_new = dag_runs["airflow"][2]
    assert nothing_new["state"] == "success"
    assert nothing_new["tasks"] == {"check_new_scans": "skipped", "end_mlflow_run": "skipped",
                                    **{task: "skipped" for task in ROI_TASKS}}
    assert "check_new_scans: no new or changed scans" in dag_runs["log"]
    assert not [r for r in dag_runs["mlflow"] if r.data.tags.get("airflow.run_id") == nothing_new["run_id"]]
