"""Benchmark the transfer-learning baselines on this machine (run by hand; figures go into the issue notes).

Measures, in one run:
  1. the naive way, per backbone and phase: training steps of the WHOLE network on images
     (on-the-fly augmentation through ``InputStreams``, the same layers trainable as in the phase,
     batch normalisation frozen) and validation batches, a few of each, timed after a warm-up
     step and extrapolated to epochs: every epoch would pay the frozen backbone's forward pass;
  2. the cached path, as the project runs it: ``kedro run --pipelines=train_baselines
     --namespaces=vgg16,vgg19,resnet50,inceptionv3`` (a subprocess): wall time; per backbone the
     one-off activation cache (seconds, MB) and, per phase, epochs run and seconds per epoch
     (read back from the run's MLflow phase runs: ``train_seconds`` / ``epochs_run``);
  3. speed-ups: per epoch (naive / cached, per phase) and for the protocol: the epochs the
     protocol actually ran x the naive seconds per epoch of each run's own fold sizes, against
     the measured wall time of the whole cached run (cache, MLflow and model saving included).
     The naive protocol figure is an extrapolation from a few steps, not a measured run.

Usage (from the repository root; the project must hold model inputs, e.g. after
`kedro run --pipelines=ingest,roi_resize,split_augment` on the embedded cohort):
  .venv/bin/python bench/bench_baselines.py --json bench/baselines.json
  .venv/bin/python bench/bench_baselines.py --backbones vgg16 resnet50 --steps 2      # shorter
  .venv/bin/python bench/bench_baselines.py --skip-protocol                             # naive steps only
  .venv/bin/python bench/bench_baselines.py --protocol-params train_baselines.training.max_epochs=10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_cnn21 import LOGGING_YML, _latest  # noqa: E402  (this folder: plain log lines, newest version)

from osteo_pipeline.models.backbones import BACKBONES, build_transfer_model  # noqa: E402
from osteo_pipeline.training import runtime  # noqa: E402
from osteo_pipeline.training.data import TrainingSet, select_training_set  # noqa: E402
from osteo_pipeline.training.streams import InputStreams  # noqa: E402
from osteo_pipeline.training.loop import compile_model  # noqa: E402
from osteo_pipeline.training.transfer import transfer_phases  # noqa: E402


def load_project(project: Path) -> tuple[TrainingSet, dict, dict]:
    """The project's 300-px training set of its label scheme, its train_baselines parameters and
    the augmentation policy (conf/base plus conf/local, as `kedro run` sees them)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
        ts = select_training_set(catalog.load("model_input_300"), catalog.load("split_table"), params["label_scheme"])
        return ts, params["train_baselines"], catalog.load("augmentation_policy")


def naive_network(backbone: str, boundary: str, ts: TrainingSet, params: dict) -> keras.Model:
    """The whole network, trainable above ``boundary`` only (what the phase trains), BN frozen."""
    network = build_transfer_model(tuple(ts.images.shape[1:]), len(ts.class_names), backbone=backbone,
                                   input_size=params["transfer"]["input_size"], **params["transfer"]["head"])
    above = False
    for layer in network.layers:
        layer.trainable = above and not isinstance(layer, keras.layers.BatchNormalization)
        above = above or layer.name == boundary
    return network


def naive_phase(backbone: str, boundary: str, ts: TrainingSet, params: dict, policy: dict, precision: str,
                steps: int, batch: int) -> dict[str, float]:
    """Seconds per training step and per validation batch of the whole network on images."""
    keras.backend.clear_session(free_memory=True)
    runtime.seed_everything(42)
    with runtime.precision_policy(precision):
        model = compile_model(lambda **_: naive_network(backbone, boundary, ts, params), ts.images.shape[1:],
                              len(ts.class_names), 1e-3)
    streams = InputStreams(ts, batch)
    idx = np.arange(len(ts.labels))
    train = streams.train(idx, policy, seed=42).repeat()
    val = streams.evaluate(idx[: batch * steps])
    model.fit(train, steps_per_epoch=1, epochs=1, verbose=0)  # trace and warm up
    model.predict(val.take(1), verbose=0)
    start = time.perf_counter()
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    model.predict(val, verbose=0)
    val_batch = (time.perf_counter() - start) / math.ceil(len(idx[: batch * steps]) / batch)
    return {"train_step_s": round(step, 3), "val_batch_s": round(val_batch, 3), "steps_timed": steps,
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}


def naive_epoch_seconds(naive: dict[str, float], n_train: int, n_val: int, batch: int) -> float:
    return math.ceil(n_train / batch) * naive["train_step_s"] + math.ceil(n_val / batch) * naive["val_batch_s"]


def protocol(project: Path, backbones: list[str], extra_params: list[str]) -> dict[str, object]:
    """Wall time of the cached protocol (`kedro run`), and what its MLflow runs and reports say."""
    cmd = [str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=train_baselines",
           f"--namespaces={','.join(backbones)}"]
    if extra_params:
        cmd.append(f"--params={','.join(extra_params)}")
    logging_yml = project / "data" / "bench_logging.yml"
    logging_yml.write_text(LOGGING_YML)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "KEDRO_LOGGING_CONFIG": str(logging_yml)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    (project / "data" / "bench_baselines.log").write_text(log)
    if done.returncode:
        raise RuntimeError(f"kedro run failed:\n{log[-4000:]}")
    result: dict[str, object] = {"command": " ".join(cmd[1:]), "wall_seconds": round(wall, 1), "backbones": {}}
    runs = _phase_runs(project)
    for name in backbones:
        reporting = project / "data" / "08_reporting"
        info = json.loads(_latest(reporting / f"{name}_baseline_info.json").read_text())
        summary = json.loads(_latest(reporting / f"{name}_cv_summary.json").read_text())
        chosen = summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]
        final = json.loads(_latest(reporting / f"{name}_final_fit.json").read_text())
        phases = {}
        for phase in ("head", "fine_tune"):
            mine = [r for r in runs if r["model"] == name and r["phase"] == phase]
            if mine:
                phases[phase] = {
                    "runs": len(mine), "epochs": sum(r["epochs_run"] for r in mine),
                    "train_seconds": round(sum(r["train_seconds"] for r in mine), 1),
                    "epoch_s_median": round(statistics.median(r["train_seconds"] / r["epochs_run"] for r in mine), 3),
                }
        result["backbones"][name] = {
            "pretrained": info["pretrained"], "cache_seconds": info["cache_seconds"], "cache_mb": info["cache_mb"],
            "cache_dtype": info["cache_dtype"], "views_per_scan": info["views_per_scan"], "phases": phases,
            "cv_val_auc_mean": chosen["val_auc_mean"], "best_learning_rate": summary["best_learning_rate"],
            "cache_vs_network_max_abs_prob_diff": final["cache_vs_network_max_abs_prob_diff"],
        }
    result["runs"] = runs
    return result


def _phase_runs(project: Path) -> list[dict[str, object]]:
    """Every phase run of the latest `kedro run` in the project's MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}"))
    experiment = client.get_experiment_by_name("osteo_pipeline")
    parent = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'train_baselines'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    fits = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              max_results=500)
    runs = []
    for fit in fits:
        for run in client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{fit.info.run_id}'"):
            runs.append({"model": run.data.tags["model"], "phase": run.data.tags["phase"], "stage": run.data.tags["stage"],
                         "n_train": int(run.data.params["n_train"]), "n_val": int(run.data.params["n_val"]),
                         "epochs_run": int(run.data.metrics["epochs_run"]),
                         "train_seconds": float(run.data.metrics["train_seconds"])})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="Kedro project holding model inputs")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--steps", type=int, default=3, help="timed whole-network training steps per backbone and phase")
    parser.add_argument("--protocol-params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more kedro --params for the protocol run, e.g. train_baselines.training.max_epochs=10")
    parser.add_argument("--skip-protocol", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    project = args.project.resolve()
    if not (project / "data/05_model_input/model_input_300.joblib").exists():
        sys.exit(f"{project} holds no model inputs: run `kedro run --pipelines=ingest,roi_resize,split_augment` first")

    ts, params, policy = load_project(project)
    training = params["training"]
    precision = runtime.resolve_precision(training["precision"])
    batch = int(training["batch_size"])
    results: dict[str, object] = {
        "device": runtime.device_name(), "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "precision": precision, "batch_size": batch,
        "load_average_1_5_15_at_start": [round(v, 2) for v in os.getloadavg()],  # other work on the host
        "n_training_scans": len(ts.labels), "input_shape": list(ts.images.shape[1:]),
        "learning_rates": training["learning_rates"], "max_epochs": training["max_epochs"],
        "fine_tune": params["transfer"]["fine_tune"], "views_per_scan": params["transfer"]["views_per_scan"],
    }
    fold = ts.folds == ts.cv_folds[0]
    n_train, n_val = int((~fold).sum()), int(fold.sum())
    naive: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.backbones:
        model = params[name]
        phases = transfer_phases(model["backbone"], model["unfreeze_blocks"])
        naive[name] = {}
        for phase in phases:
            figures = naive_phase(model["backbone"], phase.boundary, ts, params, policy, precision, args.steps, batch)
            figures["epoch_s_fold"] = round(naive_epoch_seconds(figures, n_train, n_val, batch), 1)
            naive[name][phase.name] = figures
            print(json.dumps({"naive": {name: {phase.name: figures}}}), flush=True)
    results["naive_whole_network"] = {"fold_n_train": n_train, "fold_n_val": n_val, **naive}

    if not args.skip_protocol:
        run = protocol(project, args.backbones, args.protocol_params)
        runs = run.pop("runs")
        speedup: dict[str, object] = {}
        for name, figures in run["backbones"].items():
            speedup[name] = {
                f"{phase}_epoch": round(naive[name][phase]["epoch_s_fold"] / cached["epoch_s_median"], 1)
                for phase, cached in figures["phases"].items()
            }
        naive_total = sum(naive_epoch_seconds(naive[r["model"]][r["phase"]], r["n_train"], r["n_val"], batch) * r["epochs_run"]
                          for r in runs)
        cached_training = sum(r["train_seconds"] for r in runs)
        results["protocol"] = run
        results["speedup"] = {
            "per_epoch": speedup,
            "protocol_naive_extrapolated_seconds": round(naive_total, 0),
            "protocol_cached_wall_seconds": run["wall_seconds"],
            "protocol_cached_training_seconds": round(cached_training, 1),
            "protocol_wall": round(naive_total / run["wall_seconds"], 1),
            "note": "naive = the epochs the cached protocol ran x whole-network seconds per epoch extrapolated "
                    f"from {args.steps} timed steps; cached = measured wall time of the whole kedro run",
        }
        print(json.dumps({"protocol": run, "speedup": results["speedup"]}), flush=True)
    results["load_average_1_5_15_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
