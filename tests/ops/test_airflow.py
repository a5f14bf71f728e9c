"""The committed Airflow DAG (airflow/dags/, made by `make airflow-dag` with kedro-airflow): it is
what kedro-airflow generates from today's pipelines, and a real Airflow 3 (.venv-airflow, built by
`make airflow-venv`) imports it with one task per group of Kedro nodes, wired as the pipeline is."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from osteo_testkit import REPO, in_project, make_project

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
                             "skip_on_exit_code": sorted(t.skip_on_exit_code)} for t in dag.tasks}
        dags[dag_id] = {"schedule": str(dag.schedule), "catchup": dag.catchup,
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
    # The Airflow side holds no Kedro: the tasks run in the project's virtualenv.
    probe = subprocess.run([str(airflow_python), "-c", "import kedro"], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'kedro'" in probe.stderr
    for task in dag["tasks"].values():
        assert task["operator"] == "_PythonExternalDecoratedOperator"
        assert task["python"] == str(REPO / ".venv" / "bin" / "python")
        assert task["args"][:3] == [str(REPO), "local", "__default__"]


def test_one_task_per_group_of_nodes_wired_as_the_pipeline(parsed, kedro_side):
    tasks = dict(parsed["dags"]["osteo-pipeline"]["tasks"])
    gate = tasks.pop("check_new_scans")
    assert gate["skip_on_exit_code"] == [gate["args"][3]] and gate["upstream"] == []
    nodes_of = {task_id: frozenset(task["args"][3]) for task_id, task in tasks.items()}
    assert sorted(n for nodes in nodes_of.values() for n in nodes) == sorted(kedro_side["nodes"]), REGENERATE
    assert set(nodes_of.values()) == set(kedro_side["groups"]), REGENERATE
    task_of = {nodes: task_id for task_id, nodes in nodes_of.items()}
    for task_id, task in tasks.items():
        needs = {task_of[group] for group in kedro_side["groups"][nodes_of[task_id]]}
        assert set(task["upstream"]) == (needs or {"check_new_scans"}), task_id
    # Readable names: the baselines are one task each, named after their namespace; the stages after themselves.
    assert {"vgg16", "svm", "fusion", "ingest", "train_cnn21", "evaluate"} <= set(tasks)
    assert all(n.startswith("vgg16.") for n in nodes_of["vgg16"])
