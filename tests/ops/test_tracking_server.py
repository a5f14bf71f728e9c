"""A remote MLflow tracking server, started as users start it (`mlflow server`), receives the
test-scale `kedro run --pipelines=train_cnn21` through MLFLOW_TRACKING_URI alone (no YAML edit);
its runs, nested fold runs, artifacts and registered model are then read back through the
server's REST API and an MlflowClient pointed at it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from osteo_testkit import free_port, run_kedro, server_process

pytestmark = pytest.mark.slow

# Folds and the final fit only have to exist: one epoch; op determinism (process-wide) stays off here.
CNN21_PARAMS = {"train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}}}
N_FOLDS = 3  # conf/test/parameters_split_augment.yml
START_TIMEOUT_S = 240  # it imports MLflow, FastAPI and its job executor: over 90 s on 2 busy cores


def _rest(url: str, path: str, **query: str) -> Any:
    """GET one MLflow REST endpoint and decode its JSON."""
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`mlflow server` on 127.0.0.1 with a SQLite store, serving artifacts from a local folder.

    ``--artifacts-destination`` (artifacts proxied through the server, its default mode) rather
    than ``--default-artifact-root``: with a plain root path, each client writes artifacts to
    that path on its own disk, which only works when every training machine mounts it.
    """
    base = tmp_path_factory.mktemp("tracking_server")
    store, artifacts, log = base / "mlflow.db", base / "artifacts", base / "server.log"
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts)]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/health", log, cwd=base, timeout_s=START_TIMEOUT_S):
        yield {"url": url, "store": store, "artifacts": artifacts, "log": log}


@pytest.fixture(scope="module")
def trained(tracking_server, prepared_project: Path, tmp_path_factory) -> dict[str, Any]:
    """train_cnn21 on a copy of the prepared project, logging to the server; then the server's view."""
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("tracked") / "project"
    shutil.copytree(prepared_project, root)  # the shared prepared project stays as other tests expect it
    url = tracking_server["url"]
    try:
        run_kedro(root, ["train_cnn21"], params=CNN21_PARAMS, tracking_uri=url)
    finally:
        # kedro-mlflow set the server process-wide, and it stops after this module: back to the environment's
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.get_experiment_by_name("osteo_pipeline")
    assert experiment is not None, f"no experiment osteo_pipeline on {url}"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {"root": root, "url": url, "client": client, "experiment": experiment, "runs": runs}


def test_runs_reach_the_server_only(trained, tracking_server):
    from mlflow import MlflowClient

    # The prepared project's own store holds the data pipelines' runs, and no training run.
    local = MlflowClient(tracking_uri=f"sqlite:///{trained['root'] / 'mlflow.db'}")
    local_runs = local.search_runs([e.experiment_id for e in local.search_experiments()], max_results=1000)
    assert "train_cnn21" not in {r.info.run_name for r in local_runs}
    assert not local.search_registered_models()
    # The REST API (what any client on another machine talks to) lists the same runs.
    experiment_id = trained["experiment"].experiment_id
    found = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{trained['url']}/api/2.0/mlflow/runs/search", method="POST",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        headers={"Content-Type": "application/json"}), timeout=30).read())
    assert sorted(r["info"]["run_id"] for r in found["runs"]) == sorted(r.info.run_id for r in trained["runs"])


def test_one_parent_run_with_nested_fold_runs_and_the_final_fit(trained):
    runs = trained["runs"]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "train_cnn21"
    assert "cnn21.cv_val_auc_mean" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    stages = sorted(r.data.tags["stage"] for r in children)
    assert stages == ["cv"] * N_FOLDS + ["final"]
    assert sorted(int(r.data.params["fold"]) for r in children if r.data.tags["stage"] == "cv") == list(range(N_FOLDS))
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"val_loss", "epochs_run"} <= set(child.data.metrics)
        history = trained["client"].get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in history] == [0]  # one epoch, logged per epoch


def test_registered_model_and_its_artifacts_are_served(trained, tracking_server):
    url, client = trained["url"], trained["client"]
    registered = _rest(url, "/api/2.0/mlflow/registered-models/get", name="osteo-cnn21")["registered_model"]
    assert registered["name"] == "osteo-cnn21"
    versions = client.search_model_versions("name='osteo-cnn21'")
    assert [v.version for v in versions] == ["1"]
    final = next(r for r in trained["runs"] if r.data.tags.get("stage") == "final")
    assert versions[0].run_id == final.info.run_id and versions[0].status == "READY"
    # Artifacts travelled through the server (mlflow-artifacts:/ URIs) into its destination
    # folder: every training's curves, and the registered model's files.
    experiment_id = trained["experiment"].experiment_id
    destination = tracking_server["artifacts"] / experiment_id
    for run in trained["runs"]:
        if "stage" in run.data.tags:
            assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run.info.run_id}/artifacts"
            assert (destination / run.info.run_id / "artifacts" / "training_curves.png").stat().st_size > 1000
    model_id = versions[0].source.removeprefix("models:/")
    model_files = destination / "models" / model_id / "artifacts"
    assert (model_files / "MLmodel").is_file() and list(model_files.rglob("*.keras"))
    # and back out through the server's artifact proxy, as a client on another machine reads them
    path = f"{experiment_id}/models/{model_id}/artifacts/MLmodel"
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=30) as response:
        assert response.read() == (model_files / "MLmodel").read_bytes()


def test_mlflow_ui_compares_the_fold_runs_in_chromium(trained, tmp_path):
    """The server's web UI, as a user compares runs: the folds and the final fit side by side."""
    from playwright.sync_api import expect

    from browser_kit import chromium_page, screenshot

    children = [r for r in trained["runs"] if "stage" in r.data.tags]
    ids = json.dumps([r.info.run_id for r in children])
    experiments = json.dumps([trained["experiment"].experiment_id])
    with chromium_page() as page:
        page.goto(f"{trained['url']}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                  f"&experiments={urllib.parse.quote(experiments)}", timeout=60_000)
        expect(page.get_by_text(f"Comparing {len(children)} Runs from 1 Experiment")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Run details")).to_be_visible()
        for run in children:
            expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible()
        # the assistant side panel would cover a third of the comparison
        close = page.locator('button[aria-label="Close"], button[aria-label="close"]')
        if close.count():
            close.first.click()
        page.wait_for_timeout(1000)  # the parallel-coordinates plot is drawn after the table
        screenshot(page, tmp_path, "mlflow-compare-runs.png")
