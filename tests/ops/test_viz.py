"""kedro-viz started the way a user starts it (`kedro viz run`) on a test-scale project copy,
checked through its REST API (pipelines, catalog layers, namespaces, figure previews) and in
headless Chromium driven by Playwright (select a pipeline, find its nodes, preview a figure);
and `kedro viz build` after a `kedro run`: the static site, served as plain files, draws the
pipelines and shows that run's node timings in its workflow view."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from browser_kit import chromium_page, screenshot
from osteo_testkit import TEST_COHORT, free_port, make_project, project_catalog, server_process

pytestmark = pytest.mark.slow

LAYERS = ["raw", "intermediate", "model_input", "models", "reporting"]
BASELINES = {"vgg16", "vgg19", "resnet50", "inceptionv3", "svm", "random_forest", "fusion"}
STAGES = {"ingest", "roi_resize", "split_augment", "train_cnn21", "train_baselines", "evaluate"}
FIGURE = "evaluate_roc_curves"
START_TIMEOUT_S = 120
INGEST_NODES = {"index_scans", "build_manifest"}


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def viz(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`kedro viz run` on a fresh test-scale project copy holding one saved evaluate figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kedro.framework.project import pipelines

    project = make_project(tmp_path_factory.mktemp("viz") / "project")
    tracking = f"sqlite:///{project / 'mlflow.db'}"  # the copy's own store, never the work tree's
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking)  # read by kedro-mlflow's hook as the session starts
        with project_catalog(project, env="local") as catalog:  # the environment `kedro viz run` uses
            fig, ax = plt.subplots(figsize=(3, 3))
            ax.plot([0, 0.2, 1], [0, 0.8, 1])
            catalog.save(FIGURE, fig)  # through the real (versioned) catalog entry
            registered = {name: {n.name for n in p.nodes} for name, p in pipelines.items()}
            declared = {d for d in pipelines["__default__"].datasets()
                        if not d.startswith("params:") and d != "parameters" and d in catalog}
    figure_dir = project / "data" / "08_reporting" / "evaluate_figures" / "roc_curves.png"
    figure_files = sorted(figure_dir.glob("*/roc_curves.png"))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kedro = Path(sys.executable).with_name("kedro")  # this virtualenv's, as `kedro viz run` on the PATH
    with server_process([str(kedro), "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"],
                        f"{url}/api/main", project / "kedro-viz.log", cwd=project,
                        env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, timeout_s=START_TIMEOUT_S):
        yield {"url": url, "registered": registered, "declared": declared, "figure_files": figure_files,
               "main": _get_json(f"{url}/api/main")}


# ---------------------------------------------------------------- REST API


def test_api_lists_every_registered_pipeline(viz):
    assert STAGES | {"__default__"} <= set(viz["registered"])
    assert {p["id"] for p in viz["main"]["pipelines"]} == set(viz["registered"])


def test_api_has_the_catalog_layers_in_data_flow_order(viz):
    main = viz["main"]
    assert main["layers"] == LAYERS  # empty when kedro-viz finds the layers cyclic
    layer = {n["name"]: n.get("layer") for n in main["nodes"] if n["type"] == "data"}
    assert {name: layer[name] for name in ("raw_scans", "scan_manifest", "model_input_150", "cnn21_model",
                                           "vgg16.model", FIGURE)} == {
        "raw_scans": "raw", "scan_manifest": "intermediate", "model_input_150": "model_input",
        "cnn21_model": "models", "vgg16.model": "models", FIGURE: "reporting"}
    without = sorted(name for name in viz["declared"] if not layer.get(name))
    assert not without, f"catalog entries without metadata.kedro-viz.layer: {without}"


def test_api_shows_each_baseline_as_a_namespace(viz):
    main = viz["main"]
    assert BASELINES <= set(main["modular_pipelines"])
    collapsed = {n["id"] for n in main["nodes"] if n["type"] == "modularPipeline"}
    assert BASELINES <= collapsed
    baselines = _get_json(f"{viz['url']}/api/pipelines/train_baselines")
    tasks = [n for n in baselines["nodes"] if n["type"] == "task"]
    assert tasks and all(set(n["modular_pipelines"] or []) & BASELINES for n in tasks)


def test_api_previews_the_latest_version_of_an_evaluate_figure(viz):
    assert len(viz["figure_files"]) == 1, "the figure entry is versioned: <file>/<version>/<file>"
    node = next(n for n in viz["main"]["nodes"] if n["name"] == FIGURE)
    meta = _get_json(f"{viz['url']}/api/nodes/{node['id']}")
    assert meta["preview_type"] == "ImagePreview"
    assert base64.b64decode(meta["preview"]) == viz["figure_files"][0].read_bytes()


# ---------------------------------------------------------------- in a browser


@contextmanager
def _viz_page(url: str) -> Iterator[Any]:
    with chromium_page() as page:
        # The first-visit tour would cover part of the flowchart: start with it switched off,
        # as its "New feature hints" setting does (kedro-viz keeps settings in localStorage).
        page.add_init_script("localStorage.setItem('KedroViz', JSON.stringify({showFeatureHints: false}))")
        page.goto(url)
        page.locator('[data-test="kedro-pipeline-selector"]').wait_for()
        yield page


@pytest.fixture
def page(viz) -> Iterator[Any]:
    with _viz_page(viz["url"]) as page:
        yield page


def _select_pipeline(page: Any, name: str) -> list[str]:
    """Choose ``name`` in the pipeline drop-down; return the names the drop-down offered."""
    selector = page.locator('[data-test="kedro-pipeline-selector"]')
    selector.locator(".dropdown__label").click()
    offered = selector.get_by_role("option").all_inner_texts()
    selector.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(
        "name => document.querySelector('[data-test=\"kedro-pipeline-selector\"] .dropdown__label')"
        ".textContent.trim() === name", arg=name)
    return [text.strip() for text in offered]


def _dismiss_update_banner(page: Any) -> None:
    """Close kedro-viz's "Kedro-Viz <version> is here!" banner (offline it cannot even name the
    version), so a screenshot shows the flowchart only."""
    dismiss = page.get_by_role("button", name="Dismiss")
    if dismiss.count():
        dismiss.first.click()
        dismiss.first.wait_for(state="hidden")  # removed, or hidden


def test_chromium_selects_train_cnn21_and_shows_its_nodes(viz, page, tmp_path):
    from playwright.sync_api import expect

    offered = _select_pipeline(page, "train_cnn21")
    assert set(offered) == set(viz["registered"])

    tasks = page.locator(".pipeline-flowchart .pipeline-node--task .pipeline-node__text")
    expected = viz["registered"]["train_cnn21"]
    expect(tasks).to_have_count(len(expected))  # waits while the previous pipeline's nodes leave
    assert set(tasks.all_text_contents()) == expected

    _dismiss_update_banner(page)
    screenshot(page, tmp_path, "kedro-viz-train_cnn21.png")


def test_chromium_previews_an_evaluate_figure(viz, page):
    _select_pipeline(page, "evaluate")
    page.locator(".pipeline-flowchart .pipeline-node--data", has_text=FIGURE).first.click()
    image = page.locator("img.pipeline-metadata__plot-image")
    image.wait_for()
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == viz["figure_files"][0].read_bytes()


# ---------------------------------------------------------------- kedro viz build (a static site)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`kedro run --pipelines=ingest` (the CLI: kedro-viz's run hook records node timings in
    .viz/), then `kedro viz build`, its build/ folder served by a plain static file server."""
    from osteo_pipeline.cohort import generate_cohort

    project = make_project(tmp_path_factory.mktemp("viz_build") / "project")
    generate_cohort(project / "data" / "01_raw", **TEST_COHORT)
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    for command in (["run", "--env", "test", "--pipelines", "ingest"], ["viz", "build"]):
        done = subprocess.run([str(kedro), *command], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"kedro {' '.join(command)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    # `kedro viz build` exits 0 on a timeout or a failed export too: its message says which
    assert "Kedro-Viz build files have been added to the `build` directory" in done.stdout + done.stderr
    site = project / "build"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site),
                         str(port)], f"{url}/api/main", project / "http.log", cwd=project):
        yield {"url": url, "site": site, "project": project,
               "main": json.loads((site / "api" / "main").read_text()),
               "run_status": json.loads((site / "api" / "run-status").read_text())}


def test_viz_build_writes_the_pipelines_and_the_last_runs_timings(built):
    site = built["site"]
    assert (site / "index.html").is_file()
    assert {p["id"] for p in built["main"]["pipelines"]} >= STAGES | {"__default__"}
    ingest = json.loads((site / "api" / "pipelines" / "ingest").read_text())
    tasks = {n["id"]: n["name"] for n in ingest["nodes"] if n["type"] == "task"}
    assert set(tasks.values()) == INGEST_NODES
    status = built["run_status"]
    assert status["pipeline"]["status"] == "success" and status["pipeline"]["duration"] > 0
    for node_id in tasks:
        assert status["nodes"][node_id]["status"] == "success" and status["nodes"][node_id]["duration"] > 0
    # no dataset previews without --include-previews: a shared site carries no scan or table
    manifest = next(n["id"] for n in built["main"]["nodes"] if n["name"] == "scan_manifest")
    assert json.loads((site / "api" / "nodes" / manifest).read_text())["preview"] is None


def test_chromium_draws_the_built_site_and_its_workflow_view_timings(built, tmp_path):
    from playwright.sync_api import expect

    with _viz_page(built["url"]) as page:
        # __default__, each baseline's namespace collapsed to one box: the other tasks, and the boxes
        nodes = built["main"]["nodes"]
        outside = {n["name"] for n in nodes if n["type"] == "task" and not n["modular_pipelines"]}
        tasks = page.locator(".pipeline-flowchart .pipeline-node--task .pipeline-node__text")
        expect(tasks).to_have_count(len(outside))
        assert set(tasks.all_text_contents()) == outside
        boxes = page.locator('.pipeline-flowchart [data-node-type="modularPipeline"] .pipeline-node__text')
        assert BASELINES <= set(boxes.all_text_contents())
        # The workflow view: the last `kedro run`, each node with its status and duration
        page.locator('[data-test="global-toolbar-workflow-btn"]').click()
        expect(page.locator(".run-status-notification__text")).to_contain_text("completed successfully")
        # (the workflow view draws __default__ only: its pipeline drop-down is disabled)
        for name in INGEST_NODES:
            node = page.locator(f'g.pipeline-node--task[data-node-fullname="{name}"]')
            expect(node).to_have_class(re.compile(r"pipeline-node--status-success"))
            values = node.locator(".pipeline-node__details-value").all_text_contents()
            assert values[0] == "success" and re.fullmatch(r"[\d.]+(ms|s)", values[1]), values
        # The picture: the run's nodes close up (all of __default__ fits at about 14%, too small
        # to read a duration), the minimap off so it hides no part of the run's notification.
        _dismiss_update_banner(page)
        page.get_by_label("Turn minimap off").click()
        ran = [page.locator(f'g.pipeline-node--task[data-node-fullname="{name}"]') for name in sorted(INGEST_NODES)]
        centres = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in (n.bounding_box() for n in ran)]
        page.mouse.move(sum(x for x, _ in centres) / len(centres), sum(y for _, y in centres) / len(centres))
        for _ in range(3):  # d3-zoom about the pointer: x1.8 a step
            page.mouse.wheel(0, -300)
            page.wait_for_timeout(300)
        for node in ran:
            expect(node.locator(".pipeline-node__details-value").last).to_be_in_viewport()
        screenshot(page, tmp_path, "kedro-viz-workflow.png")
