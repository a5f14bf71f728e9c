"""Strategy ``multi_worker_mirrored``: TF_CONFIG checks, and two real worker processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from osteo_pipeline.training import runtime

# One worker of the cluster: the real CNN21 builder through the real loop (final_fit: the
# strategy is created before the input streams' first TF op, as in `kedro run`), float32 so the
# two workers' all-reduced weights can be compared exactly. 9 training and 9 validation scans
# in batches of 4: each stream ends in a batch of one scan, which two replicas cannot share.
WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from functools import partial
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import POLICY, synthetic_inputs
    from osteo_pipeline.models.cnn21 import build_cnn21
    from osteo_pipeline.training.data import select_training_set
    from osteo_pipeline.training.loop import TrainingConfig, final_fit
    from osteo_pipeline.training.metrics import classification_metrics
    from osteo_pipeline.training.loop import final_split
    from osteo_pipeline.training.metrics import prefixed
    from osteo_pipeline.training.runtime import get_strategy

    out = Path(sys.argv[2])
    ts = select_training_set(*synthetic_inputs(n_patients=12, scans_per_patient=3), "binary")
    config = TrainingConfig.from_params(
        {"max_epochs": 2, "early_stopping_patience": 2, "batch_size": 4, "final_val_fraction": 0.5,
         "precision": "float32", "strategy": "multi_worker_mirrored", "track": False, "seed": 7},
        model_name="cnn21")
    builder = partial(build_cnn21, l2=0.0)
    model, report = final_fit(builder, ts, learning_rate=1e-3, config=config, augmentation_policy=POLICY)
    # The same validation scans through the exported (strategy-free) model on this worker alone:
    # the loop's distributed predictions must come back in scan order to give the same metrics.
    _, val_idx = final_split(ts, config.final_val_fraction, config.seed)
    local = prefixed(classification_metrics(ts.labels[val_idx], model.predict(ts.images[val_idx] / 255.0, verbose=0),
                                            ts.class_names), "val")
    np.savez(out / "weights.npz", *model.get_weights())
    (out / "result.json").write_text(json.dumps({
        "replicas": get_strategy("multi_worker_mirrored").num_replicas_in_sync,
        "n_train": report["n_train"], "epochs_run": report["epochs_run"],
        "val_metrics": {k: report[k] for k in local}, "local_val_metrics": local,
    }))
    """
)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "not set"),
        ("{cluster: [", "not valid JSON"),
        ('["localhost:1"]', "JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
        ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "job 'ps'"),
        ('{"cluster": {"worker": ["h1"]}, "task": {"type": "worker", "index": 0}}', "'h1' is not \"host:port\""),
        ('{"cluster": {"worker": ["h:1", "h:2"]}}', 'no "task"'),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief'"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is not in 0..1"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": "0"}}', "index '0'"),
    ],
)
def test_bad_tf_config_is_refused_naming_the_problem(monkeypatch, value, problem):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    # Refused before TensorFlow is touched, so this is safe in the test process.
    with pytest.raises(runtime.ClusterConfigError, match="TF_CONFIG") as caught:
        runtime.get_strategy("multi_worker_mirrored")
    assert problem in str(caught.value)


def test_good_tf_config_is_accepted():
    value = '{"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}}'
    assert runtime.cluster_from_tf_config(value)["task"] == {"type": "worker", "index": 1}


@pytest.mark.slow
def test_created_after_tensorflow_ran_says_what_to_do(tmp_path):
    late = "import tensorflow as tf; tf.constant(1.0) + 1\n" \
           "from osteo_pipeline.training.runtime import get_strategy; get_strategy('multi_worker_mirrored')\n"
    env = {**os.environ, "TF_CONFIG": _tf_config([f"127.0.0.1:{_free_ports(1)[0]}"], 0), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "must be created before TensorFlow runs any op" in done.stderr, done.stderr[-3000:]


def test_no_replica_gets_an_empty_batch():
    from osteo_pipeline.training.loop import _no_empty_replicas

    def sizes(ds: tf.data.Dataset) -> list[int]:
        return [int(b.shape[0]) for b in ds]

    nine = tf.data.Dataset.range(9).batch(4)
    train, val = _no_empty_replicas(nine, nine, n_train=9, n_val=9, batch_size=4, replicas=2)
    assert sizes(train) == [4, 4]  # the last single scan is skipped this epoch
    assert sizes(val) == [5, 4]  # every validation scan kept, no batch below 2
    ten = tf.data.Dataset.range(10).batch(4)
    assert [sizes(ds) for ds in _no_empty_replicas(ten, ten, 10, 10, 4, 2)] == [[4, 4, 2], [4, 4, 2]]
    three = tf.data.Dataset.range(3).batch(4)  # a validation set smaller than one batch
    assert sizes(_no_empty_replicas(nine, three, 9, 3, 4, 2)[1]) == [3]
    with pytest.raises(ValueError, match="number of replicas in sync"):
        _no_empty_replicas(nine, nine, 9, 9, batch_size=4, replicas=8)


@pytest.mark.slow
def test_two_local_workers_train_in_sync(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    procs, outs, logs = [], [], []
    for index in range(2):
        out = tmp_path / f"worker{index}"
        out.mkdir()
        env = {**os.environ, "TF_CONFIG": _tf_config(workers, index), "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": ""}
        logs.append((out / "log.txt").open("w"))
        procs.append(subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent), str(out)],
                                      stdout=logs[-1], stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        outs.append(out)
    try:
        for proc in procs:
            proc.wait(timeout=150)
    finally:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is None:  # a worker whose peer died waits for it forever
                proc.kill()
                proc.wait()
            log.close()
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, (out / "log.txt").read_text()[-4000:]
    results = [json.loads((out / "result.json").read_text()) for out in outs]
    weights = [np.load(out / "weights.npz") for out in outs]
    for result in results:
        assert result["replicas"] == 2
        assert result["epochs_run"] == 2 and result["n_train"] == 9  # 2 steps an epoch (the last scan skipped)
        assert result["val_metrics"] == pytest.approx(result["local_val_metrics"], abs=1e-5, nan_ok=True)
    first, second = weights
    assert len(first.files) == len(second.files) > 0
    for key in first.files:  # all-reduced updates from one broadcast start: identical, bit for bit
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
