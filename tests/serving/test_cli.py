"""`osteo predict` as a user runs it (the installed console script, a subprocess): label and
probabilities per scan, the pipeline's own numbers, Grad-CAM overlays, per-file errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

OSTEO = Path(sys.executable).parent / "osteo"  # console script of `pip install -e .`


def osteo(*args: str, cwd: Path, tracking_uri: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.run([str(OSTEO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def scans(served_project: dict, tmp_path: Path) -> dict[str, Path]:
    """Copies of the two raw scans (overlays must not land in the shared raw folder) and a non-scan."""
    found = {}
    for scan in served_project["scans"]:
        found[scan["path"].parent.name] = Path(shutil.copy(scan["path"], tmp_path / f"{scan['path'].parent.name}.png"))
    found["text"] = tmp_path / "notes.txt"
    found["text"].write_text("not a scan")
    return found


def test_table_gradcam_and_per_file_errors(served_project: dict, scans: dict[str, Path], tmp_path: Path):
    missing = tmp_path / "missing.png"
    done = osteo("predict", str(scans["normal"]), str(scans["text"]), str(missing), str(scans["osteoporosis"]),
                 "--gradcam", cwd=tmp_path, tracking_uri=served_project["tracking_uri"])
    assert done.returncode == 1, done.stdout + done.stderr  # two scans failed, the others were still classified
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["scan", "label", *(f"p_{c}" for c in served_project["class_names"]), "roi"]
    for key, expected in zip(("normal", "osteoporosis"), served_project["scans"], strict=True):
        (row,) = [line.split() for line in lines if line.startswith(str(scans[key]) + " ")]
        label = served_project["class_names"][int(np.argmax(expected["probabilities"]))]
        assert row[1:] == [label, *(f"{p:.4f}" for p in expected["probabilities"]), expected["roi_source"]]
        overlay = scans[key].with_name(scans[key].name + ".gradcam.png")
        assert f"Grad-CAM: {overlay}" in lines
        with Image.open(overlay) as picture:
            assert picture.mode == "RGB" and min(picture.size) >= 300
            assert np.asarray(picture).std() > 1  # a picture, not a blank
    assert f"osteo predict: {scans['text']}: Cannot decode {scans['text']}: not an image" in done.stderr
    assert f"osteo predict: {missing}: " in done.stderr and "No such file" in done.stderr
    assert not (tmp_path / "notes.txt.gradcam.png").exists()


def test_json_gives_the_pipelines_own_probabilities(served_project: dict, scans: dict[str, Path], tmp_path: Path):
    done = osteo("predict", str(scans["normal"]), str(scans["osteoporosis"]), "--json",
                 "--model", "models:/osteo-cnn21/1", cwd=tmp_path, tracking_uri=served_project["tracking_uri"])
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["scan"] for r in results] == [str(scans["normal"]), str(scans["osteoporosis"])]
    for result, expected in zip(results, served_project["scans"], strict=True):
        assert result["error"] is None and result["gradcam"] is None
        got = [result["probabilities"][c] for c in served_project["class_names"]]
        np.testing.assert_allclose(got, expected["probabilities"], atol=1e-5, rtol=0)
        assert result["label"] == served_project["class_names"][int(np.argmax(expected["probabilities"]))]
        assert result["roi_source"] == expected["roi_source"] and result["roi"] == expected["roi"]


def test_without_a_store_it_says_where_it_looked_and_creates_none(tmp_path: Path):
    done = osteo("predict", "scan.png", cwd=tmp_path, tracking_uri=None)
    assert done.returncode != 0
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in done.stderr and "MLFLOW_TRACKING_URI" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_ingest_skips_the_overlays_written_beside_scans():
    """`--gradcam` may write into a raw folder: the next ingest must not take overlays for scans."""
    import yaml

    from osteo_pipeline.pipelines.ingest.nodes import index_scans
    from osteo_testkit import REPO

    params = yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())["ingest"]
    never_read = {"normal/a.png.gradcam.png": lambda: pytest.fail("an overlay was read as a scan")}
    index = index_scans(never_read, params)
    assert index.set_index("source").loc["normal/a.png.gradcam.png", "status"] == "skipped"


def test_a_model_that_takes_arrays_is_refused_with_what_to_do(tmp_path: Path):
    """A model registered before serving support (plain Keras flavour) cannot take raw scans."""
    import click
    import mlflow.tensorflow

    from evaluate_kit import tiny_image_model
    from osteo_pipeline.predict_cli import load_classifier

    # pip_requirements given: inferring them would reload the model in a subprocess (~20 s)
    mlflow.tensorflow.save_model(tiny_image_model(), str(tmp_path / "model"), pip_requirements=["tensorflow"])
    with pytest.raises(click.ClickException, match="does not take raw scans.*kedro run --pipelines=train_cnn21"):
        load_classifier(str(tmp_path / "model"), f"sqlite:///{tmp_path / 'unused.db'}")


def test_a_truncated_model_artifact_is_named(served_project: dict, scans: dict[str, Path], tmp_path: Path):
    """A copy of the registered model whose Keras file was cut short (a full disk, a killed copy)."""
    logged = sorted(p.parent for p in served_project["root"].rglob("MLmodel") if (p.parent / "artifacts").is_dir())
    assert logged, "no logged raw-scan model in the served project"
    model = Path(shutil.copytree(logged[0], tmp_path / "model"))
    (keras_file,) = model.rglob("*.keras")
    keras_file.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size // 2])
    done = osteo("predict", str(scans["normal"]), "--model", str(model), cwd=tmp_path, tracking_uri=None)
    assert done.returncode != 0
    said = " ".join(done.stderr.split())
    assert f"its file {keras_file.relative_to(tmp_path)} is truncated or corrupt" in said, said[-2000:]
    assert "Traceback" not in done.stderr


def test_champion_prints_the_model_evaluate_chose(served_project: dict, tmp_path: Path):
    done = osteo("champion", cwd=tmp_path, tracking_uri=served_project["tracking_uri"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "models:/osteo-cnn21@champion"  # what `mlflow models serve -m` takes
