"""Benchmark CNN21 training on this machine (run by hand; figures go into the issue notes).

Measures, in one run:
  1. matmul peak (GFLOP/s) in float32 and bfloat16 (the ceiling a conv net can approach);
  2. CNN21 training throughput (images/s) through the real input pipeline (uint8 gather,
     augmentation, scaling, prefetch), and with pre-made in-memory tensors: the gap is the
     input-pipeline overhead;
  3. the fraction of the matmul peak reached (forward FLOPs counted from the layers, x3 for a
     training step);
  4. wall time of the whole `kedro run --pipelines=train_cnn21` protocol, per precision, with
     the CV validation AUC of each (does bf16 cost AUC?) and the process memory per fit.

Usage (from the repository root; the project must hold model inputs, e.g. after
`kedro run --pipelines=ingest,roi_resize,split_augment` on the embedded cohort):
  .venv/bin/python bench/bench_cnn21.py --json bench/cnn21.json     # this project (make bench)
  .venv/bin/python bench/bench_cnn21.py --protocol-epochs 15        # shorter protocol runs
  .venv/bin/python bench/bench_cnn21.py --synthetic                 # random images, no kedro run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from osteo_pipeline.models.cnn21 import build_cnn21  # noqa: E402
from osteo_pipeline.training import runtime  # noqa: E402
from osteo_pipeline.training.data import TrainingSet, select_training_set  # noqa: E402
from osteo_pipeline.training.streams import InputStreams  # noqa: E402
from osteo_pipeline.training.loop import compile_model  # noqa: E402

# Plain one-line log records (kedro's rich console wraps lines), to read epochs and memory back.
LOGGING_YML = """
version: 1
disable_existing_loggers: false
formatters: {plain: {format: "%(asctime)s %(name)s: %(message)s"}}
handlers: {console: {class: logging.StreamHandler, formatter: plain, stream: ext://sys.stdout}}
loggers: {osteo_pipeline: {level: INFO}, kedro: {level: INFO}}
root: {level: WARNING, handlers: [console]}
"""
POLICY = {"rotation_deg": 40, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2, "zoom": 0.2,
          "horizontal_flip": True, "vertical_flip": False, "fill_mode": "constant", "seed": 42}
BATCH = 16
TF_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def matmul_peak(precision: str, n: int = 2048, reps: int = 8) -> float:
    """Best GFLOP/s of an n x n matmul (oneDNN; bf16 uses AVX512-BF16/AMX where present)."""
    a = tf.random.uniform((n, n), dtype=tf.float32)
    a = tf.cast(a, TF_DTYPES[precision])
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds x2 of the Conv2D and Dense layers for one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return float(total)


def load_training_set(project: Path | None) -> TrainingSet:
    """The binary training set of the project's model inputs, or 174 synthetic scans."""
    if project is None:
        rng = np.random.default_rng(0)
        n = 174
        table = pd.DataFrame({"scan_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                              "label": np.where(np.arange(n) < 60, "normal", "osteoporosis"),
                              "partition": "train", "fold": np.arange(n) % 5})
        model_input = {"scan_id": table.scan_id.to_numpy(), "images": rng.integers(0, 255, (n, 150, 150, 3), dtype=np.uint8)}
        return select_training_set(model_input, table, "binary")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        return select_training_set(catalog.load("model_input_150"), catalog.load("split_table"), "binary")


def throughput(ts: TrainingSet, precision: str, steps: int, rounds: int) -> dict[str, float]:
    """images/s of training steps: real input pipeline vs pre-made tensors, interleaved rounds."""
    keras.backend.clear_session()
    runtime.seed_everything(42)
    with runtime.precision_policy(precision):
        model = compile_model(partial(build_cnn21, l2=1e-4), ts.images.shape[1:], len(ts.class_names), 1e-3)
    idx = np.arange(len(ts.labels))
    real = InputStreams(ts, BATCH).train(idx, POLICY, seed=42).repeat()
    x, y = next(iter(real))
    in_memory = tf.data.Dataset.from_tensors((x, y)).repeat()
    for ds in (real, in_memory):  # trace and warm up
        model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
    rates: dict[str, list[float]] = {"pipeline": [], "in_memory": []}
    for _ in range(rounds):
        for name, ds in (("pipeline", real), ("in_memory", in_memory)):
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            rates[name].append(steps * BATCH / (time.perf_counter() - start))
    ratios = [p / m for p, m in zip(rates["pipeline"], rates["in_memory"], strict=True)]
    result = {
        "pipeline_img_s_median": statistics.median(rates["pipeline"]),
        "pipeline_img_s_best": max(rates["pipeline"]),
        "in_memory_img_s_median": statistics.median(rates["in_memory"]),
        "in_memory_img_s_best": max(rates["in_memory"]),
        # paired by round, so a noisy neighbour slows both halves of a pair alike
        "pipeline_overhead_median": 1 - statistics.median(ratios),
        "rounds_pipeline": rates["pipeline"],
        "rounds_in_memory": rates["in_memory"],
        "forward_gflop_per_image": forward_flops(model) / 1e9,
    }
    return result


def _latest(path: Path) -> Path:
    return sorted(path.glob(f"*/{path.name}"))[-1]


def _seconds_per_epoch(log: str) -> float | None:
    """Median of the per-fit mean seconds per epoch that the loop logs."""
    values = [float(v) for v in re.findall(r"\| ([\d.]+) s/epoch", log)]
    return round(statistics.median(values), 2) if values else None


def protocol(project: Path, precision: str, max_epochs: int | None, extra_params: list[str]) -> dict[str, object]:
    """Wall time of `kedro run --pipelines=train_cnn21` and its CV summary, for one precision."""
    params = [f"train_cnn21.training.precision={precision}", *extra_params]
    if max_epochs:
        params.append(f"train_cnn21.training.max_epochs={max_epochs}")
    cmd = [str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=train_cnn21", f"--params={','.join(params)}"]
    logging_yml = project / "data" / "bench_logging.yml"
    logging_yml.write_text(LOGGING_YML)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "KEDRO_LOGGING_CONFIG": str(logging_yml)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"kedro run failed:\n{log[-4000:]}")
    summary = json.loads(_latest(project / "data/08_reporting/cnn21_cv_summary.json").read_text())
    folds = pd.read_csv(_latest(project / "data/08_reporting/cnn21_fold_metrics.csv"))
    final = json.loads(_latest(project / "data/08_reporting/cnn21_final_fit.json").read_text())
    chosen = summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]
    return {
        "precision": precision,
        "max_epochs": max_epochs or "conf (50)",
        "extra_params": extra_params,
        "learning_rate": summary["best_learning_rate"],
        "wall_seconds": round(wall, 1),
        "cv_val_auc_mean": chosen["val_auc_mean"],
        "cv_val_auc_sd": chosen["val_auc_sd"],
        "fold_val_auc": folds["auc"].round(4).tolist(),
        "fold_epochs_run": folds["epochs_run"].tolist(),
        "final_epochs_run": final["epochs_run"],
        "seconds_per_epoch": _seconds_per_epoch(log),
        "rss_mb_after_each_fit": [int(m) for m in re.findall(r"RSS (\d+) MB", log)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="Kedro project holding model inputs (default: the current folder)")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of the project's (no protocol)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=6, help="training steps (of 16 images) per timed round")
    parser.add_argument("--rounds", type=int, default=8, help="pipeline / in-memory round pairs")
    parser.add_argument("--protocol-epochs", type=int, default=None, help="cap max_epochs of the protocol runs")
    parser.add_argument("--protocol-params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more kedro --params for the protocol runs, e.g. train_cnn21.training.learning_rates=[0.0001]")
    parser.add_argument("--skip-protocol", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    project = None if args.synthetic else args.project.resolve()
    if project is not None and not (project / "data/05_model_input/model_input_150.joblib").exists():
        print(f"{project} holds no model inputs: run `kedro run --pipelines=ingest,roi_resize,split_augment` "
              "there first. Measuring on synthetic images, without the protocol.", flush=True)
        project = None

    results: dict[str, object] = {"device": runtime.device_name(), "bf16_native": runtime.cpu_supports_bf16(),
                                  "tensorflow": tf.__version__, "keras": keras.__version__}
    ts = load_training_set(project)
    results["n_training_scans"] = len(ts.labels)
    for precision in [] if args.skip_throughput else args.precisions:
        # the host's speed drifts (shared cores, clocks): peak is the best of before and after
        peak_before = matmul_peak(precision)
        tp = throughput(ts, precision, args.steps, args.rounds)
        peak = max(peak_before, matmul_peak(precision))
        train_gflop = 3 * tp["forward_gflop_per_image"]
        results[precision] = {
            "matmul_peak_gflop_s": round(peak, 1),
            **{k: (round(v, 3) if isinstance(v, float) else [round(r, 2) for r in v]) for k, v in tp.items()},
            "peak_fraction_pipeline_median": round(tp["pipeline_img_s_median"] * train_gflop / peak, 3),
            "peak_fraction_pipeline_best": round(tp["pipeline_img_s_best"] * train_gflop / peak, 3),
            "peak_fraction_in_memory_best": round(tp["in_memory_img_s_best"] * train_gflop / peak, 3),
        }
        print(json.dumps({precision: results[precision]}), flush=True)
    if project is not None and not args.skip_protocol:
        results["protocol"] = []
        for precision in args.precisions:
            run = protocol(project, precision, args.protocol_epochs, args.protocol_params)
            results["protocol"].append(run)
            print(json.dumps({"protocol": run}), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
