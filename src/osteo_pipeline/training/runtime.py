"""Where and how training computes: precision policy, distribution strategy, determinism, device name."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

# Our parameter values -> Keras dtype policies. "Mixed" keeps variables in float32 and
# computes in the low precision; layers pinned to float32 (softmax output) stay float32.
_KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PRECISIONS = (*_KERAS_POLICIES, "auto")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
# Jobs MultiWorkerMirroredStrategy trains with: "chief" (optional, worker 0 by another name) and "worker".
_MULTI_WORKER_JOBS = ("chief", "worker")
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


class ClusterConfigError(ValueError):
    """TF_CONFIG is missing or does not describe a cluster this worker belongs to."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True if the CPU has native bfloat16 matmul (AVX512-BF16 or AMX), which oneDNN uses."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """Map ``auto`` to float16 on a GPU, bfloat16 on a bf16-capable CPU, else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float16"
    return "bfloat16" if cpu_supports_bf16() else "float32"


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Build models inside under the dtype policy of ``precision`` (yields the resolved name).

    The previous global policy comes back on exit: built layers keep theirs, and nothing else
    in the process (another model family, a test) inherits mixed precision by accident.
    """
    previous = keras.mixed_precision.global_policy()
    resolved = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(_KERAS_POLICIES[resolved])
    try:
        yield resolved
    finally:
        keras.mixed_precision.set_global_policy(previous)


@functools.cache
def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """Return the distribution strategy (created once per process: TF devices are global).

    ``default``: the single visible device TF picks. ``mirrored``: data-parallel over all GPUs,
    or over all logical CPU devices when there is no GPU (used to test the path on a CPU).
    ``multi_worker_mirrored``: data-parallel over every worker listed in ``TF_CONFIG`` (all GPUs,
    else the CPU, of each); must be created before TensorFlow runs its first op in the process.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker_mirrored":
        return _multi_worker_strategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def cluster_from_tf_config(raw: str | None) -> dict:
    """Check a ``TF_CONFIG`` value and return it parsed; ``ClusterConfigError`` says what is wrong.

    Without TF_CONFIG TensorFlow quietly trains on this machine alone, and a malformed one fails
    deep inside its runtime or leaves workers waiting for each other: stop at once, saying why.
    """
    where = f"TF_CONFIG (strategy multi_worker_mirrored; expected e.g. {_TF_CONFIG_EXAMPLE})"
    if not raw or not raw.strip():
        raise ClusterConfigError(f"{where}: the environment variable is not set")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ClusterConfigError(f"{where}: not valid JSON ({err}): {raw!r}") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{where}: a JSON object is needed, got {raw!r}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterConfigError(f"{where}: no \"cluster\" object listing the workers")
    for job, addresses in cluster.items():
        if job not in _MULTI_WORKER_JOBS:
            raise ClusterConfigError(f"{where}: cluster job {job!r} is not one of {_MULTI_WORKER_JOBS}")
        if not isinstance(addresses, list) or not addresses:
            raise ClusterConfigError(f"{where}: cluster job {job!r} needs a non-empty list of \"host:port\"")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ClusterConfigError(f"{where}: {job!r} address {address!r} is not \"host:port\"")
    if not isinstance(task, dict):
        raise ClusterConfigError(f"{where}: no \"task\" object saying which worker this process is")
    job, index = task.get("type"), task.get("index")
    if job not in cluster:
        raise ClusterConfigError(f"{where}: task type {job!r} is not a job of the cluster {sorted(cluster)}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise ClusterConfigError(
            f"{where}: task index {index!r} is not in 0..{len(cluster[job]) - 1} for job {job!r}"
        )
    return config


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy taking the two ``reduce`` calls Keras 3's ``fit`` makes on it,
    which the plain strategy refuses (keras-team/keras#20585):

    - the first (x, y, weights) batch as one nested structure, only to build the model's metrics
      from its shapes: this worker's first replica's values are returned as they are (averaging
      them over workers would fail whenever replicas hold batches of different sizes);
    - per step, ``axis=0`` on per-replica scalars (loss and metrics), which have no batch axis:
      their mean over replicas is what Keras means.
    """

    def reduce(self, reduce_op, value, axis):  # noqa: D102 (tf.distribute.Strategy.reduce)
        if isinstance(value, (tuple, list, dict)):  # TF's reduce takes no nested structures at all
            return tf.nest.map_structure(lambda v: self.experimental_local_results(v)[0], value)
        scalars = all(getattr(t, "shape", tf.TensorShape([])).rank == 0 for t in self.experimental_local_results(value))
        return super().reduce(reduce_op, value, None if scalars else axis)


def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    config = cluster_from_tf_config(os.environ.get("TF_CONFIG"))
    try:
        strategy = _MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        # TF configures collective ops on its runtime, which exists once any op has run.
        raise RuntimeError(
            "strategy multi_worker_mirrored must be created before TensorFlow runs any op in the "
            "process, but something ran TensorFlow first. Run the training pipeline on its own on "
            "every worker (kedro run --pipelines=train_cnn21), after the data pipelines; in a script, "
            "call osteo_pipeline.training.runtime.get_strategy('multi_worker_mirrored') first. "
            f"TensorFlow said: {err}"
        ) from err
    task = config["task"]
    logger.info("multi_worker_mirrored: %s %d of %s, %d replicas in sync", task["type"], task["index"],
                config["cluster"], strategy.num_replicas_in_sync)
    return strategy


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy, TF and Keras; with ``deterministic`` also force deterministic TF kernels.

    Op determinism is process-wide and cannot be switched off again, hence a switch.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def device_name() -> str:
    """Human-readable accelerator: GPU model(s), else the CPU model and core count."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return ", ".join(names)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} x{os.cpu_count()}"


def resident_memory_mb() -> float:
    """This process's current resident memory (MB), to show it stays flat across folds."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
