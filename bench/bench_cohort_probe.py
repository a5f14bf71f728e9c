"""Calibration bench of the synthetic cohort: the fixed probe's AUC per difficulty and seed.

For each difficulty and seed, writes the default 174-scan cohort (60 normal, 114
osteoporosis) at `--scale` and runs `osteo_pipeline.cohort.probe.run_probe`: a logistic
regression on the ground-truth ROI's intensity histogram and GLCM texture, patient-grouped
stratified 5-fold CV, normal vs osteoporosis. Also times the CLI on the default cohort
(`python -m osteo_pipeline.cohort --workers 2`) and records the CPU flags. Bands checked:
realistic probe AUC 0.70-0.85 and mean ROI intensity AUC 0.60-0.80; easy probe AUC >= 0.95.

Usage (from the repository root):
  .venv/bin/python bench/bench_cohort_probe.py --json bench/cohort_probe.json
  .venv/bin/python bench/bench_cohort_probe.py --seeds 42 --scale 0.5 --difficulties realistic   # quick
  .venv/bin/python bench/bench_cohort_probe.py --difficulties --json bench/cohort_generation.json  # timing only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from osteo_pipeline.cohort import generate_cohort
from osteo_pipeline.cohort.probe import run_probe
from benchkit import cpu_info  # noqa: E402  (this folder)

BANDS = {
    "realistic": {"probe_auc": (0.70, 0.85), "intensity_auc": (0.60, 0.80)},
    "easy": {"probe_auc": (0.95, 1.0)},
}


def in_bands(difficulty: str, figures: dict) -> bool | None:
    """Whether the figures sit in the difficulty's bands (None: no band for it)."""
    bands = BANDS.get(difficulty)
    if bands is None:
        return None
    return all(lo <= figures[key] <= hi for key, (lo, hi) in bands.items())


def probe_one(difficulty: str, seed: int, scale: float, workers: int, root: Path) -> dict:
    """Generate one cohort and probe it; figures and timings."""
    out = root / f"{difficulty}_{seed}"
    start = time.perf_counter()
    generate_cohort(out, seed=seed, scale=scale, difficulty=difficulty, workers=workers, overwrite=True)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    result = run_probe(out)
    figures = {"probe_auc": round(result.probe_auc, 4), "intensity_auc": round(result.intensity_auc, 4)}
    return {
        "difficulty": difficulty, "seed": seed, **figures, "in_bands": in_bands(difficulty, figures),
        "n_scans": result.n_scans, "n_patients": result.n_patients,
        "generate_s": round(generated, 1), "probe_s": round(time.perf_counter() - start, 1),
    }


def time_cli(root: Path, workers: int) -> dict:
    """Wall and CPU time of the CLI writing the default cohort at scale 1.0.

    On a shared machine the wall time includes waiting for other jobs; CPU seconds / cores
    is what the same run takes on an idle machine with that many cores.
    """
    cmd = [sys.executable, "-m", "osteo_pipeline.cohort", "--out", str(root / "cli"), "--overwrite",
           "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(["python", *cmd[1:]]), "workers": workers, "scans": 174,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_avg_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--difficulties", nargs="*", default=["realistic", "easy", "hard"],
                   help="none: only time the CLI")
    p.add_argument("--workers", type=int, default=2, help="render processes for the probed cohorts")
    p.add_argument("--skip-cli-timing", action="store_true")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cohort_probe_") as tmp:
        root = Path(tmp)
        report: dict = {"cpu": cpu_info(), "scale": args.scale, "seeds": args.seeds, "bands": BANDS, "runs": []}
        if not args.skip_cli_timing:
            report["generation"] = time_cli(root, 2)
            print(json.dumps(report["generation"]), flush=True)
        for difficulty in args.difficulties:
            for seed in args.seeds:
                run = probe_one(difficulty, seed, args.scale, args.workers, root)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
                if args.json:  # after every run: a long bench leaves its figures so far
                    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
