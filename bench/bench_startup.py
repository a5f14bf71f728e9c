"""How much the project adds to Kedro's own start-up (issue 13 section 4; run by hand).

Times, alternately and ``--rounds`` times each, in the same environment:
- ``kedro --version``: Kedro and its plugins (kedro-mlflow imports MLflow) without the project;
- ``kedro registry list``: the same plus the project's settings, hooks and every pipeline;
- ``kedro registry describe __default__``: every node of the study.
Goal: ``registry list`` within 1.5x ``--version`` (the median of each). Also records which heavy
libraries loading the pipelines imports (none is the goal: the nodes import them when they run).

Usage (from the repository root):
  .venv/bin/python bench/bench_startup.py --rounds 7 --json bench/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchkit import cpu_info  # this folder

REPO = Path(__file__).resolve().parents[1]
KEDRO = [sys.executable, "-m", "kedro"]
COMMANDS = {
    "kedro --version": ["--version"],
    "kedro registry list": ["registry", "list"],
    "kedro registry describe __default__": ["registry", "describe", "__default__"],
}
HEAVY = ("tensorflow", "keras", "sklearn", "scipy", "skimage", "matplotlib", "mlflow", "cv2", "pydicom", "PIL")
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([*KEDRO, *args], cwd=REPO, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def heavy_imports() -> list[str]:
    """Heavy libraries in sys.modules after Kedro loads the project's pipelines."""
    code = ("import sys; from pathlib import Path\n"
            "from kedro.framework.startup import bootstrap_project\n"
            f"bootstrap_project(Path({str(REPO)!r}))\n"
            "from kedro.framework.project import pipelines; dict(pipelines)\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, check=True, capture_output=True, text=True)
    return [m for m in done.stdout.strip().splitlines()[-1].split(",") if m]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    for argv in COMMANDS.values():  # warm the file cache and __pycache__ once
        wall(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(round(wall(argv), 3))
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    ratio = medians["kedro registry list"] / medians["kedro --version"]
    out = {
        "cpu": cpu_info(),
        "rounds": args.rounds,
        "seconds": times,
        "median_seconds": medians,
        "registry_list_over_version": round(ratio, 2),
        "goal": "registry list <= 1.5 x --version",
        "goal_met": ratio <= 1.5,
        "heavy_libraries_loaded_with_the_pipelines": heavy_imports(),
    }
    print(json.dumps({k: out[k] for k in ("median_seconds", "registry_list_over_version", "goal_met",
                                          "heavy_libraries_loaded_with_the_pipelines")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
