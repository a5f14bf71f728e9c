"""kedro-viz started the way a user starts it (`kedro viz run`) on a test-scale project copy,
checked through its REST API (pipelines, catalog layers, namespaces, figure previews) and in
headless Chromium driven by Playwright (select a pipeline, find its nodes, preview a figure)."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from osteo_testkit import free_port, make_project, project_catalog, server_process

pytestmark = pytest.mark.slow

LAYERS = ["raw", "intermediate", "model_input", "models", "reporting"]
BASELINES = {"vgg16", "vgg19", "resnet50", "inceptionv3", "svm", "random_forest", "fusion"}
STAGES = {"ingest", "roi_resize", "split_augment", "train_cnn21", "train_baselines", "evaluate"}
FIGURE = "evaluate_roc_curves"
CHROMIUM = Path("/usr/bin/chromium")
# Headless in a container as root, offline: no sandbox, no GPU, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
START_TIMEOUT_S = 120


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


@pytest.fixture
def page(viz) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)
            # The first-visit tour would cover part of the flowchart: start with it switched off,
            # as its "New feature hints" setting does (kedro-viz keeps settings in localStorage).
            page.add_init_script("localStorage.setItem('KedroViz', JSON.stringify({showFeatureHints: false}))")
            page.goto(viz["url"])
            page.locator('[data-test="kedro-pipeline-selector"]').wait_for()
            yield page
        finally:
            browser.close()


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


def test_chromium_selects_train_cnn21_and_shows_its_nodes(viz, page, tmp_path):
    from playwright.sync_api import expect

    offered = _select_pipeline(page, "train_cnn21")
    assert set(offered) == set(viz["registered"])

    tasks = page.locator(".pipeline-flowchart .pipeline-node--task .pipeline-node__text")
    expected = viz["registered"]["train_cnn21"]
    expect(tasks).to_have_count(len(expected))  # waits while the previous pipeline's nodes leave
    assert set(tasks.all_text_contents()) == expected

    shot = tmp_path / "kedro-viz-train_cnn21.png"
    page.screenshot(path=str(shot), animations="disabled")  # transitions finished, not caught halfway
    assert shot.stat().st_size > 20_000


def test_chromium_previews_an_evaluate_figure(viz, page):
    _select_pipeline(page, "evaluate")
    page.locator(".pipeline-flowchart .pipeline-node--data", has_text=FIGURE).first.click()
    image = page.locator("img.pipeline-metadata__plot-image")
    image.wait_for()
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == viz["figure_files"][0].read_bytes()
