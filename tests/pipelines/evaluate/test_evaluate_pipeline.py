"""`kedro run --env test --pipelines=train_cnn21,evaluate` (the one end-to-end run, no baseline trained),
the notebook executed on that project, and the pipeline's ordering after training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from osteo_testkit import REPO, run_kedro

pytestmark = pytest.mark.slow

# CNN21 only has to exist: one epoch, op determinism (process-wide) left off in the pytest process
CNN21_PARAMS = {"train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}}}
FIGURES = ["roc_curves", "confusion_matrices", "training_curves", "calibration", "gradcam"]


def latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@pytest.fixture(scope="module")
def project(prepared_project: Path, tmp_path_factory) -> dict:
    from osteo_pipeline.hooks import MissingInputsError

    root = tmp_path_factory.mktemp("evaluate") / "project"
    shutil.copytree(prepared_project, root)  # the shared prepared project stays as other tests expect it
    with pytest.raises(MissingInputsError) as before_training:
        run_kedro(root, ["evaluate"])
    # one partial run, as `kedro run --pipelines=train_cnn21,evaluate`: no baseline trained
    run_kedro(root, ["train_cnn21", "evaluate"], params=CNN21_PARAMS)
    return {"root": root, "before_training": str(before_training.value)}


def test_evaluate_before_any_training_names_train_cnn21(project):
    message = project["before_training"]
    assert "cnn21_final_fit: made by `train_cnn21`" in message
    assert "kedro run --pipelines=" in message and "train_cnn21" in message.splitlines()[-1]


def test_cnn21_alone_is_reported_and_the_baselines_are_said_to_be_missing(project):
    reporting = project["root"] / "data" / "08_reporting"
    md = (reporting / "report.md").read_text()
    summary = json.loads(latest(reporting / "evaluation_summary.json").read_text())
    assert summary["models"]["evaluated"] == ["cnn21"]
    assert set(summary["models"]["missing"]) == {"vgg16", "vgg19", "resnet50", "inceptionv3", "svm", "random_forest", "fusion"}
    assert "Baselines missing from this report: vgg16, vgg19, resnet50, inceptionv3, svm, random_forest, fusion" in md
    assert "No baseline was evaluated" in md
    for name in FIGURES:
        assert (reporting / "evaluate" / f"{name}.png").stat().st_size > 1000
        assert f"](evaluate/{name}.png)" in md
    html = (reporting / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))


def test_predictions_are_the_test_partition_never_training_scans(project):
    root = project["root"]
    predictions = pd.read_csv(latest(root / "data" / "08_reporting" / "test_predictions.csv"))
    split = pd.read_csv(latest(root / "data" / "05_model_input" / "split_table.csv"))
    test = split[(split.partition == "test") & split.label.isin(["normal", "osteoporosis"])]
    assert sorted(predictions.scan_id) == sorted(test.scan_id)
    assert list(predictions.columns) == ["model", "scan_id", "patient_id", "label", "p_normal", "p_osteoporosis",
                                         "prediction", "correct"]
    assert (predictions.model == "cnn21").all()
    assert (predictions.p_normal + predictions.p_osteoporosis).round(6).eq(1).all()


def test_metrics_and_figures_reach_the_mlflow_parent_run(project):
    from mlflow import MlflowClient

    root = project["root"]
    summary = json.loads(latest(root / "data" / "08_reporting" / "evaluation_summary.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("osteo_pipeline")
    child = client.search_runs([experiment.experiment_id], "attributes.run_name = 'evaluate-cnn21'")
    assert len(child) == 1
    parent = client.get_run(child[0].data.tags["mlflow.parentRunId"])  # the run of `train_cnn21,evaluate`
    auc = summary["test_metrics"]["cnn21"]["auc"]
    assert child[0].data.metrics["test_accuracy"] == pytest.approx(summary["test_metrics"]["cnn21"]["accuracy"])
    if auc is not None:
        assert child[0].data.metrics["test_auc"] == pytest.approx(auc)
    assert parent.data.metrics["cnn21.test_accuracy"] == pytest.approx(summary["test_metrics"]["cnn21"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "evaluate")}
    assert {f"evaluate/{n}.png" for n in FIGURES} | {"evaluate/report.html"} <= artifacts


def test_the_notebook_runs_on_the_test_scale_project(project, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    root = project["root"]
    monkeypatch.setenv("OSTEO_PROJECT", str(root))
    monkeypatch.setenv("OSTEO_ENV", "test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    notebooks = REPO / "notebooks"
    nb = nbformat.read(notebooks / "evaluate_walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "evaluated: ['cnn21']" in text and "accepted by class" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == 2  # the ROI crops and the Grad-CAM
    assert not (notebooks / "mlflow.db").exists()  # ran from the project root, not the notebooks folder


# ---------------------------------------------------------------- ordering (no run)


def test_evaluate_reads_every_declared_model_through_the_catalog():
    """The graph orders evaluate after training: check_models reads each declared model's own
    entries (no collection dataset), and a partial run leaves the baselines' entries as free inputs."""
    from kedro.framework.project import configure_project

    from osteo_pipeline.pipelines import evaluate, train_cnn21

    configure_project("osteo_pipeline")
    alone = evaluate.create_pipeline()
    assert {"cnn21_model", "cnn21_final_fit", "vgg16.model", "svm.sklearn_model", "fusion.final_fit"} <= alone.inputs()
    assert "trained_models" not in alone.inputs()
    assert evaluate.pipeline.optional_model_inputs() >= {"vgg16.model", "svm.sklearn_model", "fusion.baseline_info"}
    assert not {"cnn21_model", "cnn21_final_fit"} & evaluate.pipeline.optional_model_inputs()
    partial = train_cnn21.create_pipeline() + alone
    order = [n.name for n in partial.nodes]
    assert order.index("fit_final_cnn21") < order.index("check_models")
    assert "vgg16.model" in partial.inputs()  # not made here: the before-run hook stands in for it


def test_default_pipeline_runs_evaluate_after_every_training():
    from kedro.framework.project import configure_project

    from osteo_pipeline.pipeline_registry import register_pipelines

    configure_project("osteo_pipeline")
    default = register_pipelines()["__default__"]
    order = [n.name for n in default.nodes]
    finals = [n.name for n in default.nodes if any(o.endswith("final_fit") for o in n.outputs)]
    assert max(order.index(f) for f in finals) < order.index("check_models")


# ---------------------------------------------------------------- one declaration per model


def test_a_fifth_backbone_is_one_yaml_block(project, tmp_path):
    """Issue 13's acceptance: a transfer backbone keras.applications has (DenseNet121, in the
    backbones table but not in the study) joins the study by one block in the project's
    declaration, nothing else: trained by the transfer template under its own namespace, its files
    from the dataset factories, read by evaluate, in the report's tables and comparisons."""
    root = tmp_path / "project"
    shutil.copytree(project["root"], root)
    declaration = root / "conf" / "base" / "parameters_train_baselines.yml"
    declaration.write_text(declaration.read_text() + (
        "  densenet121:\n"
        "    name: densenet121\n"
        "    family: transfer\n"
        "    backbone: densenet121\n"
        "    unfreeze_blocks: 1\n"
        "    registered_model_name: osteo-densenet121\n"
    ))
    run_kedro(root, ["train_baselines"], namespaces=["densenet121"])
    run_kedro(root, ["evaluate"])
    reporting = root / "data" / "08_reporting"
    summary = json.loads(latest(reporting / "evaluation_summary.json").read_text())
    assert summary["models"]["evaluated"] == ["cnn21", "densenet121"]
    assert summary["models"]["families"]["densenet121"] == "transfer"
    assert "densenet121" not in summary["models"]["missing"] and "vgg16" in summary["models"]["missing"]
    assert summary["models"]["expected"][-1] == "densenet121"  # the declaration's order
    assert list(summary["comparison"]["test"]["mcnemar"]) == ["densenet121"]
    assert (root / "data" / "06_models" / "densenet121.keras").is_dir()
    md = (reporting / "report.md").read_text()
    assert "| densenet121 | transfer | evaluated |" in md
    assert md.count("densenet121") >= 4  # models, Table 5, comparisons, CV summary


def test_report_html_renders_in_chromium(project, tmp_path):
    """report.html is self-contained: opened from disk with nothing else reachable, every figure draws."""
    from browser_kit import chromium_page, screenshot

    report = project["root"] / "data" / "08_reporting" / "report.html"
    with chromium_page() as page:
        page.goto(report.as_uri())
        images = page.locator("img")
        assert images.count() == len(FIGURES)
        widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert all(w > 0 for w in widths), widths  # decoded, not broken-image icons
        screenshot(page, tmp_path, "report.png")
