"""Benchmark the AP / lateral view classifier against the synthetic cohort's views (run by hand).

Generates a synthetic cohort (``osteo_pipeline.cohort.generate_cohort``: seed, scale, counts and,
where the generator has it, ``lateral_fraction``) into a temporary folder, or reads an existing raw
folder (``--raw``: its ``clinical.csv`` ``view`` column is the reference; without one every scan
counts as AP). Every scan is decoded and classified exactly as ingest does (``decode_scan``, then
``classify_view`` with ``ingest.view.classifier`` from conf/base/parameters_ingest.yml). Reports,
overall and per true view: n, accuracy, the calls, the mirror correlation's spread and the
time per scan; the CPU model and flags are recorded with the figures.

Usage (from the repository root):
  .venv/bin/python bench/bench_view.py                                   # scale 0.5, 120 scans
  .venv/bin/python bench/bench_view.py --lateral-fraction 0.3 --json bench/view.json
  .venv/bin/python bench/bench_view.py --raw data/01_raw                 # an existing folder
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from osteo_pipeline.imaging.decode import decode_scan  # noqa: E402
from osteo_pipeline.imaging.view import VIEWS, classify_view  # noqa: E402
from osteo_pipeline.pipelines.ingest.privacy import normalise_header, spelling_map  # noqa: E402
from benchkit import add_cohort_options, cpu_info, scan_folder  # noqa: E402  (this folder)



def view_params() -> dict:
    """``ingest.view`` as conf/base/parameters_ingest.yml declares it (what ingest runs with)."""
    return yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())["ingest"]["view"]


def measure(raw: Path, params: dict) -> pd.DataFrame:
    """One row per scan of ``clinical.csv``: true view, called view, features, seconds."""
    clinical = pd.read_csv(raw / "clinical.csv", dtype=str)
    views = spelling_map(params["spellings"])
    settings = {k: float(v) for k, v in params["classifier"].items()}
    rows = []
    for r in clinical.itertuples(index=False):
        truth = views.get(normalise_header(r.view), "unknown") if "view" in clinical.columns else "AP"
        pixels = decode_scan((raw / r.file).read_bytes(), name=r.file).pixels
        start = time.perf_counter()
        guess = classify_view(pixels, **settings)
        rows.append({"file": r.file, "view": truth, "called": guess.view, "correlation": guess.mirror_correlation,
                     "tilt_deg": guess.tilt_deg, "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> dict:
    return {
        "n": int(len(df)),
        "accuracy": round(float((df["view"] == df["called"]).mean()), 4),
        "called": {v: int((df["called"] == v).sum()) for v in VIEWS},
        "correlation_min_p5_median_p95_max": [round(float(q), 3) for q in
                                              np.percentile(df["correlation"], (0, 5, 50, 95, 100))],
        "ms_per_scan_median": round(1000 * statistics.median(df["seconds"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_options(parser, "an existing raw folder with clinical.csv (default: generate a cohort)")
    args = parser.parse_args()

    params = view_params()
    with scan_folder(args) as (raw, cohort):
        df = measure(raw, params)
    result = {"command": " ".join([".venv/bin/python", "bench/bench_view.py", *sys.argv[1:]]),
              "cohort": cohort, "classifier": params["classifier"], "cpu": cpu_info(),
              "all": summarise(df), "per_view": {view: summarise(g) for view, g in df.groupby("view")}}
    for name, s in [("all", result["all"]), *result["per_view"].items()]:
        print(f"{name:>8}: n={s['n']} accuracy {100 * s['accuracy']:.1f} % (called {s['called']}), "
              f"correlation min/p5/median/p95/max {s['correlation_min_p5_median_p95_max']}, "
              f"{s['ms_per_scan_median']:.1f} ms/scan")
    print("cpu:", result["cpu"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
