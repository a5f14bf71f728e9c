"""The registered scan classifier deploys outside this project: `mlflow models serve --env-manager
uv` (or virtualenv) builds a fresh environment from the model's own requirements, without
``osteo_pipeline`` installed, and answers a raw spine scan over HTTP as the model does in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from osteo_testkit import free_port, server_process

pytestmark = pytest.mark.slow

CLASSES = ["normal", "osteoporosis"]
MODEL_URI = "models:/osteo-cnn21@champion"
START_TIMEOUT_S = 300  # building the environment: ~2.5 min with TensorFlow in uv's cache, 2 busy cores


def env_manager() -> tuple[str, str] | None:
    """(env manager, folder to put on PATH): uv where found, else virtualenv where pyenv is (MLflow
    installs the model's Python with it); None when neither is available."""
    for uv in (shutil.which("uv"), Path(sys.prefix) / "uv" / "bin" / "uv"):  # the latter: `make install`'s uv
        if uv and Path(uv).is_file():
            return "uv", str(Path(uv).parent)
    pyenv = shutil.which("pyenv")
    return ("virtualenv", str(Path(pyenv).parent)) if pyenv else None


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Iterator[dict]:
    """A tiny scan classifier registered as training does it, made champion in a fresh SQLite
    store, and one synthetic spine scan to send it."""
    import keras
    import mlflow

    from osteo_pipeline.cohort import generate_cohort
    from osteo_pipeline.serving.preprocessing import preprocessing_settings
    from osteo_pipeline.serving.registry import CHAMPION, PROJECT_TAG, PROJECT_TAG_VALUE
    from osteo_pipeline.training import tracking

    root = tmp_path_factory.mktemp("self_contained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the store's artifacts land here
        mlflow.set_tracking_uri(uri)
        inputs = keras.Input((32, 32, 3))
        network = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)))
        settings = preprocessing_settings({"margin": 0.05, "low_percentile": 1.0, "high_percentile": 99.0},
                                          {"max_pixels": 50_000_000,
                                           "degenerate": {"min_side": 16, "max_aspect": 8, "min_dynamic_range": 0.05}})
        with mlflow.start_run(run_name="cnn21-final"):
            tracking.log_keras_model(network, CLASSES, "osteo-cnn21", settings)
        client = mlflow.MlflowClient()
        client.set_registered_model_tag("osteo-cnn21", PROJECT_TAG, PROJECT_TAG_VALUE)  # as evaluate does
        client.set_registered_model_alias("osteo-cnn21", CHAMPION, "1")
        local = Path(mlflow.artifacts.download_artifacts(MODEL_URI, dst_path=str(root / "downloaded")))
    generate_cohort(root / "raw", seed=3, n_normal=1, n_osteoporosis=1, scale=0.25, workers=1)
    scan = sorted((root / "raw" / "osteoporosis").glob("*.png"))[0].read_bytes()
    yield {"root": root, "tracking_uri": uri, "local": local, "scan": scan}


@pytest.fixture(scope="module")
def server(registered: dict, tmp_path_factory) -> Iterator[dict]:
    """`mlflow models serve -m models:/osteo-cnn21@champion` in a fresh environment (its own env
    root, removed afterwards), started from a folder outside the project, without PYTHONPATH."""
    manager = env_manager()
    if manager is None:
        pytest.skip("neither uv nor pyenv is installed: MLflow cannot build the model's environment")
    name, tool_dir = manager
    envs = tmp_path_factory.mktemp("model_envs")
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"MLFLOW_TRACKING_URI": registered["tracking_uri"], "MLFLOW_ENV_ROOT": str(envs),
            "PATH": os.pathsep.join([tool_dir, str(bin_dir), os.environ.get("PATH", "")])}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", name,
               "-h", "127.0.0.1", "-p", str(port)]
    try:
        with server_process(command, f"{url}/ping", registered["root"] / "serve.log", cwd=registered["root"],
                            env=env, timeout_s=START_TIMEOUT_S):
            (python,) = envs.glob("*/bin/python")
            yield {"url": url, "python": python}
    finally:
        shutil.rmtree(envs, ignore_errors=True)  # gigabytes: TensorFlow


def test_the_model_names_its_code_and_exact_requirements(registered: dict):
    local = registered["local"]
    requirements = (local / "requirements.txt").read_text().split()
    tensorflow = [r for r in requirements if r.startswith("tensorflow")]
    assert tensorflow == [f"tensorflow=={metadata.version('tensorflow')}"]  # the canonical one, not tensorflow-cpu
    assert all("==" in r for r in requirements), requirements
    assert {r.split("==")[0] for r in requirements} >= {"keras", "numpy", "pandas", "pillow", "mlflow"}
    code = local / "code" / "osteo_pipeline"
    assert sorted(p.name for p in code.iterdir()) == ["__init__.py", "imaging", "serving"]  # nothing of Kedro's side


def test_served_from_a_fresh_environment_it_predicts_over_http(server: dict, registered: dict):
    import mlflow
    import pandas as pd

    from osteo_pipeline.serving.model import request_body

    found = subprocess.run([str(server["python"]), "-c", "import importlib.util as u; print(u.find_spec('osteo_pipeline'))"],
                           cwd=registered["root"], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "None"  # the project is not installed there: the model's code/ serves

    scan = registered["scan"]
    body = request_body([scan])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server['url']}/invocations", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        (row,) = json.loads(response.read())["predictions"]

    expected = mlflow.pyfunc.load_model(str(registered["local"])).predict(pd.DataFrame({"image": [scan]})).iloc[0]
    assert row["label"] == expected["label"] and row["roi_source"] == expected["roi_source"]
    for c in CLASSES:
        assert row[f"p_{c}"] == pytest.approx(float(expected[f"p_{c}"]), abs=1e-5)
