"""Test kit: a test-scale copy of the project, run through Kedro the way `kedro run` does.

Tests that run pipelines use the ``test`` Kedro environment (conf/test: tiny cohort, 3 folds,
few epochs) on the real code paths, in a temporary project folder so the work tree's data/
and mlflow.db are never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KNEE = SHARED / "datasets" / "knee-xray-3class"

# The test-scale cohort: enough patients per class for a stratified split and 3 folds.
TEST_COHORT = {"seed": 42, "n_normal": 14, "n_osteoporosis": 20, "scale": 0.25}

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_project(root: Path) -> Path:
    """Lay out an empty project at ``root``: the repo's conf and pyproject, empty data folders."""
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # Kedro checks the source dir exists; the code runs from the installed package
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO / name, root / name)
    for layer in ("01_raw", "02_intermediate", "05_model_input", "06_models", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    return root


def run_kedro(
    project: Path, pipelines: list[str], params: dict[str, Any] | None = None, env: str = "test",
    namespaces: list[str] | None = None, tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Run registered pipelines in-process, as `kedro run --env test --pipelines ... [--namespaces ...]` would.

    MLflow logs to the project's own ``mlflow.db``, or to ``tracking_uri`` when given (e.g. a
    tracking server's ``http://host:port``), set as ``MLFLOW_TRACKING_URI`` as a user would.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    import mlflow

    bootstrap_project(project)
    cwd, uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(project)  # relative catalog paths (data/...) resolve against the project, as on the CLI
    # each test project its own store, unless the test names one
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{project / 'mlflow.db'}"
    try:
        with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
            return session.run(pipeline_names=pipelines, namespaces=namespaces)
    finally:
        # `kedro run` is one session per process; several in one process (as here) must not
        # share kedro-mlflow's still-active parent run.
        while mlflow.active_run():
            mlflow.end_run()
        os.chdir(cwd)
        if uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri


@contextmanager
def project_catalog(project: Path, env: str = "test") -> Iterator[Any]:
    """The project's data catalog, with relative paths resolved against ``project`` (to write a
    stage's outputs directly, e.g. an upstream model a test need not train)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with KedroSession.create(project_path=project, env=env) as session:
            yield session.load_context().catalog
    finally:
        os.chdir(cwd)
