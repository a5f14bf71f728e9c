"""Test kit: a test-scale copy of the project, run through Kedro the way `kedro run` does.

Tests that run pipelines use the ``test`` Kedro environment (conf/test: tiny cohort, 3 folds,
few epochs) on the real code paths, in a temporary project folder so the work tree's data/
and mlflow.db are never touched.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
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


def latest(path: Path) -> Path:
    """The newest saved version of a versioned dataset."""
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@contextmanager
def in_project(project: Path, tracking_uri: str | None = None) -> Iterator[None]:
    """Inside ``project`` as `kedro run` is (relative catalog paths resolve against it), with
    its own MLflow store unless ``tracking_uri`` names one; the caller's state comes back after."""
    import mlflow
    import mlflow.tracking.fluent

    cwd = os.getcwd()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{project / 'mlflow.db'}"
    try:
        yield
    finally:
        # `kedro run` is one session per process; several in one process (as here) must not
        # share kedro-mlflow's still-active parent run, nor the experiment it set (an id in
        # this project's store, which mlflow.set_experiment also exports as MLFLOW_EXPERIMENT_ID).
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.tracking.fluent._active_experiment_id = None
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_kedro(
    project: Path, pipelines: list[str], params: dict[str, Any] | None = None, env: str = "test",
    namespaces: list[str] | None = None, tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Run registered pipelines in-process, as `kedro run --env test --pipelines ... [--namespaces ...]`
    would; MLflow goes to the project's own store, or to ``tracking_uri`` (a server)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with in_project(project, tracking_uri):
        with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
            return session.run(pipeline_names=pipelines, namespaces=namespaces)


@contextmanager
def project_catalog(project: Path, env: str = "test") -> Iterator[Any]:
    """The project's data catalog, with relative paths resolved against ``project`` (to write a
    stage's outputs directly, e.g. an upstream model a test need not train)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with in_project(project), KedroSession.create(project_path=project, env=env) as session:
        yield session.load_context().catalog


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports (Linux; the IANA range elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 49152, 65535
    return range(low, high + 1)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the kernel's ephemeral range: a port picked there can be
    taken, between the pick and the server's bind, by any client socket or Jupyter kernel of the
    other test worker (uvicorn then exits with code 3). Below 49152 too: kedro-viz refuses above."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(20_000, 49_000) if p not in ephemeral]
    for port in random.Random().sample(candidates, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in 20000-49000 outside {ephemeral}")


def http_status(url: str, timeout: float = 30) -> int:
    """The HTTP status of a GET (error statuses too); raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@contextmanager
def server_process(
    command: list[str], ready_url: str, log: Path, *, cwd: Path, env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[subprocess.Popen]:
    """Start a server as its users do, wait until ``ready_url`` answers 200, stop it afterwards.

    It gets its own session, so teardown stops it and every worker it started, nothing else; a
    server that exits or never answers fails the test with the tail of its log.
    """
    import pytest

    name = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command[:3]))
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                text = log.read_text(errors="replace")
                errors = "\n".join([line for line in text.splitlines() if "rror" in line][:15])
                pytest.fail(f"`{name}` exited with code {server.returncode}; its log's error lines:\n{errors}\n"
                            f"its tail ({log}):\n{text[-3000:]}")
            try:
                if http_status(ready_url, timeout=5) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`{name}` did not answer {ready_url} within {timeout_s:.0f} s; its log ({log}):\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
