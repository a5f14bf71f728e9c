"""How long the whole study will take on this machine, said before `make run` starts it.

A quick measured step (a few CNN21 training batches of 16 at 150 px, in the precision the
run will use) scales a real reference run, ``bench/make_run_realistic.json``, whose machine's
CNN21 throughput in the same setting is ``bench/cnn21_throughput.json``:

    expected = training stages x (reference images/s / images/s here) x (training budget / reference budget)
               x (scans / reference scans) + the other stages x (scans / reference scans)

The training budget is learning rates x (folds + final fit) x epoch limit. Early stopping
decides how much of it a run uses, as it did in the reference run, so this is an estimate, not
a bound: the training log then gives each fit's ETA. Usage:
  python -m osteo_pipeline.estimate [--raw-dir data/01_raw] [--env ENV]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_RUN = Path("bench/make_run_realistic.json")
REFERENCE_THROUGHPUT = Path("bench/cnn21_throughput.json")
TRAINING_STAGES = ("train_cnn21", "train_baselines")
BATCH = 16


@dataclass(frozen=True)
class Estimate:
    """The expected wall time of a whole `kedro run`, and what it rests on."""

    expected_s: float
    images_per_s: float
    precision: str
    n_scans: int
    basis: str

    def line(self) -> str:
        return (f"make run: {self.n_scans} scans; CNN21 trains at {self.images_per_s:.1f} images/s here "
                f"({self.precision}); expect about {_minutes(self.expected_s)}. Basis: {self.basis}.")


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def count_scans(raw_dir: Path, skip_files: list[str]) -> int:
    """Files under ``raw_dir`` that ingest will try as scans (by its own rule; nothing decoded)."""
    from osteo_pipeline.pipelines.ingest.nodes import is_expected_non_scan

    return sum(1 for p in raw_dir.rglob("*")
               if p.is_file() and not is_expected_non_scan(p.relative_to(raw_dir).as_posix(), skip_files))


def training_budget(params: dict[str, Any]) -> int:
    """Learning rates x (folds + the final fit) x epoch limit of CNN21's protocol."""
    training = params["train_cnn21"]["training"]
    return len(training["learning_rates"]) * (int(params["split"]["n_folds"]) + 1) * int(training["max_epochs"])


def measure_images_per_s(precision: str, seconds: float = 4.0) -> tuple[float, str]:
    """CNN21 training throughput here (batches of 16 at 150 px, in-memory), and the precision used."""
    import numpy as np

    from osteo_pipeline.models.cnn21 import build_cnn21
    from osteo_pipeline.training.loop import compile_model
    from osteo_pipeline.training.runtime import precision_policy

    with precision_policy(precision) as resolved:
        model = compile_model(build_cnn21, (150, 150, 3), 2, 1e-4)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 150, 150, 3), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, BATCH)]
    for _ in range(2):  # tracing and oneDNN's first-call set-up are not throughput
        model.train_on_batch(x, y)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or steps < 3:
        model.train_on_batch(x, y)
        steps += 1
    return steps * BATCH / elapsed, resolved


def estimate(params: dict[str, Any], n_scans: int, images_per_s: float, precision: str,
             reference_run: dict[str, Any], reference_throughput: dict[str, Any]) -> Estimate:
    """Scale the reference run to this machine, these settings and this many scans."""
    ref_precision = "bfloat16" if "bfloat16" in reference_run["machine"]["precision"] else "float32"
    ref_images_per_s = float(reference_throughput[ref_precision]["in_memory_img_s_median"])
    stages = reference_run["kedro_run"]["stages_s"]
    training_s = sum(stages[s] for s in TRAINING_STAGES)
    other_s = float(reference_run["kedro_run"]["run_wall_s"]) - training_s
    settings = reference_run["settings"]
    budget_ratio = training_budget(params) / (settings["learning_rates"] * (settings["n_folds"] + 1) * settings["max_epochs"])
    scans_ratio = n_scans / int(reference_run["data_fingerprint"]["n_scans"])
    speed_ratio = ref_images_per_s / images_per_s
    expected = training_s * speed_ratio * budget_ratio * scans_ratio + other_s * scans_ratio
    basis = (f"a {_minutes(reference_run['kedro_run']['run_wall_s'])} reference run of "
             f"{reference_run['data_fingerprint']['n_scans']} scans at {ref_images_per_s:.1f} images/s "
             f"({reference_run['machine']['cpu']}, {ref_precision}, commit {reference_run['commit']}, "
             f"{REFERENCE_RUN})")
    return Estimate(expected, images_per_s, precision, n_scans, basis)


def project_params(project: Path, env: str | None) -> dict[str, Any]:
    """The run's parameters (base + ``env``), read with the project's own config-loader settings."""
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / settings.CONF_SOURCE), env=env,
                                          **settings.CONFIG_LOADER_ARGS)
    return loader["parameters"]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the estimate (never fails a run: without a reference it says so and returns 0)."""
    parser = argparse.ArgumentParser(prog="python -m osteo_pipeline.estimate", description=__doc__.split("\n")[0])
    parser.add_argument("--raw-dir", type=Path, default=Path("data/01_raw"))
    parser.add_argument("--env", default=os.environ.get("KEDRO_ENV"))
    parser.add_argument("--project", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    project = args.project.resolve()
    try:
        reference_run = json.loads((project / REFERENCE_RUN).read_text())
        reference_throughput = json.loads((project / REFERENCE_THROUGHPUT).read_text())
    except (OSError, ValueError) as error:
        print(f"make run: no estimate ({error})", file=sys.stderr)
        return 0
    params = project_params(project, args.env)
    images_per_s, precision = measure_images_per_s(params["train_cnn21"]["training"].get("precision", "auto"))
    print(estimate(params, count_scans(args.raw_dir, params["ingest"]["skip_files"]), images_per_s, precision, reference_run,
                   reference_throughput).line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
