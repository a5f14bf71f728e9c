"""A test-scale project with a trained, registered CNN21 and the pipeline's own predictions for
two of its raw scans, shared by the serving and CLI tests (trained once per test session), and
`mlflow models serve` on it (started once per session, shared by test_serve and test_fuzz).

``roi_resize`` reruns with ``use_roi_csv: false``: a served model never has the expert boxes of
``roi.csv``, so the pipeline must take the detected ROI too for its prediction to be comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_testkit import free_port, run_kedro, server_process

START_TIMEOUT_S = 180
PARAMS = {
    "roi_resize": {"use_roi_csv": False, "measure_auto_roi": False},
    # the model only has to exist; op determinism (process-wide) stays off in the pytest process
    "train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}},
}


def latest(path: Path) -> Path:
    """The newest saved version of a versioned dataset."""
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


@pytest.fixture(scope="session")
def served_project(prepared_project: Path, tmp_path_factory) -> dict:
    """Project root, tracking URI, class names, and per scan (one per class): its raw file, the
    pipeline's probabilities (saved model on the saved model input) and the ROI box used."""
    import joblib
    from kedro.io import Version
    from kedro_datasets.tensorflow import TensorFlowModelDataset

    root = tmp_path_factory.mktemp("serving") / "project"
    shutil.copytree(prepared_project, root)  # the shared prepared project stays as other tests expect it
    # A store of its own: the copied one's experiment keeps its artifacts in the shared project.
    (root / "mlflow.db").unlink(missing_ok=True)
    run_kedro(root, ["roi_resize", "train_cnn21"], params=PARAMS)

    data = root / "data"
    network = TensorFlowModelDataset(filepath=str(data / "06_models/cnn21.keras"), version=Version(None, None)).load()
    model_input = joblib.load(latest(data / "05_model_input/model_input_150.joblib"))
    roi_table = pd.read_csv(data / "08_reporting/roi_table.csv").set_index("scan_id")
    scans = []
    for folder in ("normal", "osteoporosis"):
        path = sorted((data / "01_raw" / folder).glob("*.png"))[0]
        scan_id = hashlib.sha256(path.read_bytes()).hexdigest()  # ingest's scan id: the content hash
        (index,) = np.flatnonzero(model_input["scan_id"] == scan_id)
        image = model_input["images"][index : index + 1].astype(np.float32) / 255.0  # the loop's scaling
        probabilities = network.predict(image, verbose=0)[0]
        roi = roi_table.loc[scan_id]
        scans.append({"path": path, "probabilities": probabilities.astype(np.float64),
                      "roi_source": roi["roi_source"], "roi": [int(roi[c]) for c in ("x0", "y0", "x1", "y1")]})
    final_fit = json.loads(latest(data / "08_reporting/cnn21_final_fit.json").read_text())
    return {"root": root, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "class_names": final_fit["class_names"], "scans": scans}


@pytest.fixture(scope="session")
def server(served_project: dict, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve -m models:/osteo-cnn21/latest --env-manager local` on a free port."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the virtualenv, as after `source .venv/bin/activate`
    env = {**os.environ, "MLFLOW_TRACKING_URI": served_project["tracking_uri"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/osteo-cnn21/latest",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/ping", tmp_path_factory.mktemp("serve") / "serve.log",
                        cwd=served_project["root"], env=env, timeout_s=START_TIMEOUT_S):
        yield url
