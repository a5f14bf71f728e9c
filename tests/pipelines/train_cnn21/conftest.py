"""A test-scale project whose model inputs are written directly (split_augment's outputs faked),
trained twice by `kedro run --env test --pipelines=train_cnn21` in a fresh process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_testkit import in_project

REPO = Path(__file__).resolve().parents[3]
SIZE = 100  # CNN21 needs >= 98 px; small keeps the test fast
N_FOLDS = 2
FINGERPRINT = {"manifest_sha256": "f" * 64, "split_seed": 42, "n_scans": 0}
POLICY = {
    "rotation_deg": 40, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2, "zoom": 0.2,
    "horizontal_flip": True, "vertical_flip": False, "fill_mode": "constant", "seed": 42,
}

# Two runs in one fresh process: op determinism is process-wide, so it must not leak into the
# pytest process, and the second run must reproduce the first.
RUN_TWICE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    project = Path(sys.argv[1])
    os.chdir(project)
    bootstrap_project(project)
    for _ in range(2):
        start = time.perf_counter()
        with KedroSession.create(project_path=project, env="test") as session:
            session.run(pipeline_names=["train_cnn21"])
        # kedro-mlflow 2.0.3 under kedro 1.7 re-enters the parent run per node and ends it
        # once; a CLI process exits here, so do what its exit does before the next run.
        while mlflow.active_run():
            mlflow.end_run()
        print(f"RUN_SECONDS {time.perf_counter() - start:.1f}", flush=True)
    """
)


def fake_model_inputs(seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """model_input_150 and split_table as split_augment writes them (osteopenia included)."""
    rng = np.random.default_rng(seed)
    labels = ["normal", "osteopenia", "osteoporosis"]
    rows, images = [], []
    for p in range(20):
        label = labels[p % 3]
        partition = "test" if p % 5 == 4 else "train"
        for s in range(2):
            img = rng.integers(0, 70, (SIZE, SIZE, 3), dtype=np.uint8)
            if label != "normal":
                img[25:75, 25:75] += 150 if label == "osteoporosis" else 80
            images.append(img)
            rows.append({"scan_id": f"p{p:02d}_s{s}", "patient_id": f"p{p:02d}", "label": label, "partition": partition})
    table = pd.DataFrame(rows)
    train_patients = table.loc[table.partition == "train", "patient_id"].unique()
    fold_of = {pid: i % N_FOLDS for i, pid in enumerate(train_patients)}
    table["fold"] = [fold_of.get(pid, -1) for pid in table.patient_id]
    return {"scan_id": table.scan_id.to_numpy(), "images": np.stack(images)}, table


def _make_project(root: Path) -> Path:
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    (root / "src").mkdir()  # bootstrap_project wants it; the package itself is the installed one
    for layer in ("05_model_input", "06_models", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    return root


@pytest.fixture(scope="session")
def trained_cnn21_project(tmp_path_factory) -> dict:
    """Project path, tracking URI and the fake inputs, after two identical training runs."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = _make_project(tmp_path_factory.mktemp("cnn21_project"))
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2",
           "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    model_input, split_table = fake_model_inputs()
    class_weights = {"binary": {"normal": 1.0, "osteoporosis": 1.0},
                     "three_class": {"normal": 1.0, "osteopenia": 1.0, "osteoporosis": 1.0}}
    with in_project(root, tracking_uri):
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="test") as session:
            catalog = session.load_context().catalog
            for name, data in {
                "model_input_150": model_input, "split_table": split_table, "augmentation_policy": POLICY,
                "class_weights": class_weights, "data_fingerprint": {**FINGERPRINT, "n_scans": len(split_table)},
            }.items():
                catalog.save(name, data)
    script = root / "run_twice.py"
    script.write_text(RUN_TWICE)
    done = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True,
                          timeout=420, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"root": root, "tracking_uri": tracking_uri, "model_input": model_input,
            "split_table": split_table, "log": done.stdout + done.stderr}
