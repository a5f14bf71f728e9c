"""Precision policy, distribution strategy and device description."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from osteo_pipeline.training import runtime


def test_precision_resolution(monkeypatch):
    assert runtime.resolve_precision("float32") == "float32"
    assert runtime.resolve_precision("bfloat16") == "bfloat16"
    monkeypatch.setattr(runtime.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2"})
    assert runtime.resolve_precision("auto") == "float32"
    monkeypatch.setattr(runtime.tf.config, "list_physical_devices", lambda kind: ["gpu0"] if kind == "GPU" else [])
    assert runtime.resolve_precision("auto") == "float16"
    with pytest.raises(ValueError):
        runtime.resolve_precision("int8")


def test_device_name_is_readable():
    assert runtime.device_name()


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    # Logical devices must exist before TF initialises its runtime: hence a fresh process.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    from conftest import POLICY, synthetic_inputs
    from functools import partial
    from osteo_pipeline.models.cnn21 import build_cnn21
    from osteo_pipeline.training.data import select_training_set
    from osteo_pipeline.training.loop import TrainingConfig
    from osteo_pipeline.training.streams import InputStreams
    from osteo_pipeline.training.loop import FitJob, fit_model
    from osteo_pipeline.training.runtime import get_strategy

    ts = select_training_set(*synthetic_inputs(n_patients=8, scans_per_patient=1), "binary")
    config = TrainingConfig.from_params(
        {"max_epochs": 1, "batch_size": 4, "strategy": "mirrored", "track": False}, model_name="cnn21")
    idx = np.arange(len(ts.labels))
    result = fit_model(partial(build_cnn21), InputStreams(ts, 4),
                       FitJob(idx, idx, learning_rate=1e-3, config=config, augmentation_policy=POLICY, run_name="mirrored"))
    print(json.dumps({"replicas": get_strategy("mirrored").num_replicas_in_sync, "loss": result.history["loss"]}))
    """
)


@pytest.mark.slow
def test_mirrored_training_on_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert len(out["loss"]) == 1 and out["loss"][0] == out["loss"][0]  # ran, finite
