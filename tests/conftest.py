"""Shared fixtures: a test-scale copy of the project, with the synthetic cohort, run through Kedro.

Tests that run pipelines use the ``test`` Kedro environment (conf/test: tiny cohort, 3 folds,
few epochs) on the real code paths, in a temporary project folder so the work tree's data/
and mlflow.db are never touched. The helpers live in ``osteo_testkit``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

import pytest

from osteo_testkit import TEST_COHORT, latest, make_project, run_kedro


@pytest.fixture(autouse=True)
def _sys_path_restored() -> Iterator[None]:
    """Each test leaves ``sys.path`` as it found it. Loading a registered model in-process puts its
    ``code/`` folder (a partial ``osteo_pipeline``) first on ``sys.path`` (MLflow's code_paths);
    a process pool spawned later in the same worker would import that partial copy and fail."""
    import sys

    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(scope="session")
def cohort_project(tmp_path_factory) -> Path:
    """A test-scale project whose data/01_raw holds the synthetic cohort (not yet ingested)."""
    from osteo_pipeline.cohort import generate_cohort

    root = make_project(tmp_path_factory.mktemp("project"))
    generate_cohort(root / "data" / "01_raw", **TEST_COHORT)
    return root


@pytest.fixture(scope="session")
def prepared_project(cohort_project: Path) -> Path:
    """The test-scale project after ingest, roi_resize and split_augment."""
    run_kedro(cohort_project, ["ingest", "roi_resize", "split_augment"])
    return cohort_project


# A project with a trained, registered CNN21 and the pipeline's own predictions for two of its
# raw scans, shared by the serving, CLI and external-validation tests (trained once per session).
# ``roi_resize`` reruns with ``use_roi_csv: false``: a served model never has the expert boxes of
# ``roi.csv``, so the pipeline must take the detected ROI too for its prediction to be comparable.
PARAMS = {
    "roi_resize": {"use_roi_csv": False, "measure_auto_roi": False},
    # the model only has to exist; op determinism (process-wide) stays off in the pytest process
    "train_cnn21": {"training": {"deterministic": False, "max_epochs": 1}},
}


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
    # evaluate would make it champion (tests/pipelines/evaluate/test_model_registry.py); serving and
    # `osteo predict` default to the champion
    import mlflow

    from osteo_pipeline.serving.registry import CHAMPION, PROJECT_TAG, PROJECT_TAG_VALUE

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    client.set_registered_model_tag("osteo-cnn21", PROJECT_TAG, PROJECT_TAG_VALUE)
    client.set_registered_model_alias("osteo-cnn21", CHAMPION, "1")

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
