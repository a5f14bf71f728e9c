"""The code's shape, checked: layers import one way, and loading the pipelines stays light."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `kedro registry list`, `kedro viz` and the rerun check must not pay for: the nodes import
# these when they run.
HEAVY = ("tensorflow", "keras", "sklearn", "scipy", "skimage", "matplotlib", "mlflow")


def test_import_linter_contracts_hold():
    """pyproject.toml's contracts: imaging <- models <- serving <- training <- evaluation <- pipelines,
    core below all, and the pipelines independent of one another."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The contract can fail: an upward import (imaging importing training) breaks it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "osteo_pipeline", src / "osteo_pipeline")
    bad = src / "osteo_pipeline" / "imaging" / "quality.py"
    bad.write_text(bad.read_text() + "\nfrom osteo_pipeline.training import loop  # noqa: E402,F401\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "osteo_pipeline.imaging is not allowed to import osteo_pipeline.training" in done.stdout


def test_loading_the_pipelines_imports_no_heavy_library():
    """Kedro's pipeline registry (what every `kedro` command, kedro-viz and the rerun check load)
    leaves TensorFlow, scikit-learn, scipy, matplotlib and MLflow to the nodes that use them."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from kedro.framework.startup import bootstrap_project\n"
        f"bootstrap_project(Path({str(ROOT)!r}))\n"
        "from kedro.framework.project import pipelines\n"
        "names = sorted(pipelines)\n"
        "assert len(pipelines['__default__'].nodes) > 20\n"
        f"print(json.dumps({{'pipelines': names, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"ingest", "train_cnn21", "evaluate", "external_validation"} <= set(result["pipelines"])
    assert result["heavy"] == [], f"loading the pipelines imported {result['heavy']}"
