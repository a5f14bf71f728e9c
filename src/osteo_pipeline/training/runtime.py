"""Where and how training computes: precision policy, distribution strategy, determinism, device name."""

from __future__ import annotations

import contextlib
import functools
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
STRATEGIES = ("default", "mirrored")


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
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


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
