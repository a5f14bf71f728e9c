"""Decide two study settings by measurement (run by hand; figures go into the README and notes):
the ROI's fit into the square model input (``roi_resize.fit``: stretch | pad) and the learning
rate grid (``train_*.training.learning_rates``).

For each cohort seed, a fresh project gets a synthetic cohort (``--difficulty``, default the
project's own default, ``realistic``), or a copy of a folder of real scans (``--raw``; then the
seeds only change the split), and runs ``ingest, roi_resize, split_augment`` once per fit, then the
cross-validation of CNN21 and of one transfer baseline with every learning rate of the grid
(``--to-outputs`` stops before the final fit: the choice is made on CV, as the pipeline makes it).
It records, per seed x fit x model x learning rate, the CV AUC of every fold, the epochs run, and
whether a fold was cut off by the epoch limit while its validation loss still fell; and it draws
every fold's validation-loss curve (from the MLflow child runs) per learning rate.

Usage (from the repository root):
  .venv/bin/python bench/bench_study_choices.py --seeds 1 2 3 --json bench/study_choices.json \\
      --figure bench/study_choices_curves.png
  # shorter: fewer epochs, one fit, CNN21 only
  .venv/bin/python bench/bench_study_choices.py --seeds 1 --fits pad --baseline none --max-epochs 15
  # real scans (three classes): the knee set
  .venv/bin/python bench/bench_study_choices.py --raw ../shared/datasets/knee-xray-3class \\
      --label-scheme three_class --views AP lateral --fits stretch --seeds 42
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import cpu_info  # this folder

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path) -> Path:
    """A copy of the project's conf and pyproject with empty data folders (code from the venv)."""
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for layer in ("01_raw", "02_intermediate", "05_model_input", "06_models", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    return root


def kedro(project: Path, *args: str) -> float:
    """Run ``kedro run`` in ``project`` (its own MLflow store); wall seconds. Raises on failure."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"kedro run {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return time.perf_counter() - start


def newest(path: Path) -> Path:
    return sorted(path.glob(f"*/{path.name}"))[-1]


def fold_curves(project: Path, epochs: dict[str, int]) -> dict[str, list[float]]:
    """Validation loss per epoch of each fold run (MLflow metric history). Only the epochs' own
    points: the loop also logs the restored best weights' scikit-learn log loss one step after the
    last epoch, without Keras' L2 term, which is not a point of the curve."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    curves = {}
    for run_id, n in epochs.items():
        history = sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)
        curves[run_id] = [m.value for m in history if m.step < n]
    return curves


def run_case(project: Path, model: str, fit: str, grid: list[float], args: argparse.Namespace) -> dict:
    """CV of one model with every learning rate of ``grid``; per-rate fold figures and curves."""
    import pandas as pd

    # The grid goes through conf/local (soft-merged over conf/base): `--params` splits on commas.
    settings = {"learning_rates": grid, "max_epochs": args.max_epochs}
    (project / "conf/local/parameters_study.yml").write_text(json.dumps(
        {"train_cnn21": {"training": settings}, "train_baselines": {"training": settings}}))
    common = [f"--params=label_scheme={args.label_scheme},roi_resize.fit={fit}"]
    if model == "cnn21":
        seconds = kedro(project, "--pipelines=train_cnn21", "--to-outputs=cnn21_cv_summary", *common)
        folds = pd.read_csv(newest(project / "data/08_reporting/cnn21_fold_metrics.csv"))
    else:
        seconds = kedro(project, "--pipelines=train_baselines", f"--namespaces={model}",
                        f"--to-outputs={model}.cv_summary", *common)
        folds = pd.read_csv(newest(project / f"data/08_reporting/{model}_fold_metrics.csv"))
    runs = folds.dropna(subset=["mlflow_run_id"])
    curves = fold_curves(project, dict(zip(runs["mlflow_run_id"], runs["epochs_run"].astype(int))))
    by_lr = {}
    for lr, rows in folds.groupby("learning_rate"):
        aucs = [float(a) for a in rows["auc"].dropna()]
        by_lr[f"{lr:g}"] = {
            "fold_auc": aucs,
            "auc_mean": statistics.fmean(aucs) if aucs else None,
            "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None,
            "epochs_run": [int(e) for e in rows["epochs_run"]],
            "folds_still_improving": [int(f) for f in rows.loc[rows["still_improving"].astype(bool), "fold"]],
            "val_loss_curves": [curves.get(r, []) for r in rows["mlflow_run_id"]],
        }
    return {"model": model, "fit": fit, "seconds": round(seconds, 1), "by_learning_rate": by_lr}


def draw(results: list[dict], path: Path) -> None:
    """One panel per model x learning rate: every fold's validation loss (colour = fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], lr) for r in results for lr in r["by_learning_rate"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    colours = {"stretch": "tab:blue", "pad": "tab:orange"}
    for ax, (model, lr) in zip(axes[0], panels):
        for r in results:
            if r["model"] != model or lr not in r["by_learning_rate"]:
                continue
            for curve in r["by_learning_rate"][lr]["val_loss_curves"]:
                ax.plot(range(1, len(curve) + 1), curve, color=colours.get(r["fit"], "grey"), alpha=0.5, lw=1)
        ax.set_title(f"{model}, lr {lr}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss")
    handles = [plt.Line2D([], [], color=c, label=f) for f, c in colours.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="cohort (and split) seeds")
    p.add_argument("--fits", nargs="+", default=["stretch", "pad"], choices=["stretch", "pad"])
    p.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4, 1e-3])
    p.add_argument("--baseline", default="vgg16", help="one transfer baseline, or 'none'")
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--difficulty", default=None, help="cohort difficulty (default: the generator's)")
    p.add_argument("--scale", type=float, default=1.0, help="cohort image scale")
    p.add_argument("--raw", type=Path, default=None, help="a folder of real scans instead of a cohort")
    p.add_argument("--label-scheme", default="binary")
    p.add_argument("--views", nargs="+", default=None,
                   help="split.views (e.g. AP lateral for a folder of mixed views; default: the project's)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()

    from osteo_pipeline.cohort import generate_cohort

    models = ["cnn21"] + ([] if args.baseline == "none" else [args.baseline])
    results, started = [], time.perf_counter()
    for seed in args.seeds:
        for fit in args.fits:
            with tempfile.TemporaryDirectory(prefix="study_choices_") as tmp:
                project = make_project(Path(tmp) / "project")
                raw = project / "data" / "01_raw"
                if args.raw is not None:
                    shutil.rmtree(raw)
                    shutil.copytree(args.raw, raw)
                else:
                    extra = {} if args.difficulty is None else {"difficulty": args.difficulty}
                    generate_cohort(raw, seed=seed, scale=args.scale, **extra)
                (project / "conf/local/parameters_seed.yml").write_text(f"seed: {seed}\n")
                if args.views:  # a list: through conf/local, as --params splits on commas
                    (project / "conf/local/parameters_views.yml").write_text(
                        json.dumps({"split": {"views": args.views}}))
                prep = kedro(project, "--pipelines=ingest,roi_resize,split_augment",
                             f"--params=label_scheme={args.label_scheme},roi_resize.fit={fit}")
                for model in models:
                    case = run_case(project, model, fit, args.learning_rates, args)
                    case.update(seed=seed, prep_seconds=round(prep, 1))
                    results.append(case)
                    summary = {lr: (v["auc_mean"], v["folds_still_improving"]) for lr, v in case["by_learning_rate"].items()}
                    print(f"seed {seed} fit {fit} {model}: {summary} ({case['seconds']:.0f} s)", flush=True)
    out = {
        "cpu": cpu_info(),
        "seeds": args.seeds, "fits": args.fits, "learning_rates": args.learning_rates,
        "max_epochs": args.max_epochs, "difficulty": args.difficulty, "scale": args.scale,
        "raw": None if args.raw is None else args.raw.name, "label_scheme": args.label_scheme, "views": args.views,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.figure:
        draw(results, args.figure)
    for model in models:
        for fit in args.fits:
            for lr in (f"{x:g}" for x in args.learning_rates):
                means = [r["by_learning_rate"][lr]["auc_mean"] for r in results
                         if r["model"] == model and r["fit"] == fit and lr in r["by_learning_rate"]]
                means = [m for m in means if m is not None]
                if means:
                    print(f"{model} fit={fit} lr={lr}: CV AUC over seeds {statistics.fmean(means):.3f} "
                          f"(per seed {', '.join(f'{m:.3f}' for m in means)})")


if __name__ == "__main__":
    main()
