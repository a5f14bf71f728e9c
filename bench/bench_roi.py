"""Benchmark the automatic spine ROI against the synthetic cohort's ground-truth boxes (run by hand).

Generates a synthetic cohort (``osteo_pipeline.cohort.generate_cohort``: seed, scale, counts and,
where the generator has them, ``lateral_fraction`` and ``difficulty``) into a temporary folder, or
reads an existing raw folder (``--raw``: its ``roi.csv`` holds the reference boxes and its
``clinical.csv`` the optional ``view`` column). For every scan it runs ``detect_spine_roi_scored``
exactly as ``roi_resize`` does (same margin) and reports, overall and per view: median / min /
quartile IoU against the reference box, the share of scans with IoU < 0.5, the fallbacks (no spine
found: whole image), the crops that are "mostly background" (under half of the crop lies inside the
reference L1-L4 box), the confidence of the good and bad detections, and the
detection time. The CPU flags and model are recorded with the figures.

Usage (from the repository root):
  .venv/bin/python bench/bench_roi.py                                   # AP cohort, scale 0.5
  .venv/bin/python bench/bench_roi.py --scale 1.0 --json bench/roi.json
  .venv/bin/python bench/bench_roi.py --lateral-fraction 0.3 --difficulty hard
  .venv/bin/python bench/bench_roi.py --raw data/01_raw                 # an existing folder
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from osteo_pipeline.imaging.decode import decode_scan  # noqa: E402
from osteo_pipeline.imaging.preprocess import box_iou  # noqa: E402
from osteo_pipeline.imaging.roi import detect_spine_roi_scored  # noqa: E402
from benchkit import add_cohort_options, cpu_info, scan_folder  # noqa: E402  (this folder)

GOAL_MEDIAN_IOU = 0.85


def coverage(box: tuple[int, int, int, int], truth: tuple[int, int, int, int]) -> float:
    """Share of the crop that lies inside the reference box (under 0.5: mostly background)."""
    ix = max(0, min(box[2], truth[2]) - max(box[0], truth[0]))
    iy = max(0, min(box[3], truth[3]) - max(box[1], truth[1]))
    return ix * iy / max(1, (box[2] - box[0]) * (box[3] - box[1]))


def measure(raw: Path, margin: float) -> pd.DataFrame:
    """One row per scan of ``roi.csv``: view, IoU, fallback, confidence, body fraction, seconds."""
    roi = pd.read_csv(raw / "roi.csv")
    clinical = pd.read_csv(raw / "clinical.csv") if (raw / "clinical.csv").exists() else pd.DataFrame()
    views = clinical.set_index("file")["view"].to_dict() if "view" in clinical.columns else {}
    rows = []
    for r in roi.itertuples(index=False):
        pixels = decode_scan((raw / r.file).read_bytes(), name=r.file).pixels
        truth = (int(r.x0), int(r.y0), int(r.x1), int(r.y1))
        start = time.perf_counter()
        found = detect_spine_roi_scored(pixels, margin=margin)
        seconds = time.perf_counter() - start
        box = found.box if found.box is not None else (0, 0, pixels.shape[1], pixels.shape[0])
        rows.append({"file": r.file, "view": str(views.get(r.file, "AP")), "iou": box_iou(box, truth),
                     "fallback": found.box is None, "confidence": found.confidence, "reason": found.reason,
                     "coverage": coverage(box, truth), "seconds": seconds})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> dict:
    iou = df["iou"].to_numpy()
    good = df["iou"] >= 0.5
    return {
        "n": int(len(df)),
        "median_iou": round(float(np.median(iou)), 4),
        "min_iou": round(float(iou.min()), 4),
        "p10_iou": round(float(np.percentile(iou, 10)), 4),
        "p25_iou": round(float(np.percentile(iou, 25)), 4),
        "share_iou_below_0.5": round(float((~good).mean()), 4),
        "fallbacks": int(df["fallback"].sum()),
        "mostly_background": int((df["coverage"] < 0.5).sum()),
        "min_coverage": round(float(df["coverage"].min()), 4),
        "confidence_median_iou_ge_0.5": round(float(df.loc[good, "confidence"].median()), 3) if good.any() else None,
        "confidence_max_iou_lt_0.5": round(float(df.loc[~good, "confidence"].max()), 3) if (~good).any() else None,
        "ms_per_scan_median": round(1000 * statistics.median(df["seconds"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_options(parser, "an existing raw folder with roi.csv (default: generate a cohort)")
    parser.add_argument("--margin", type=float, default=0.05, help="as params:roi_resize.margin")
    parser.add_argument("--worst", type=int, default=5, help="list this many worst scans")
    args = parser.parse_args()

    with scan_folder(args) as (raw, cohort):
        df = measure(raw, args.margin)
    result = {"cohort": cohort, "margin": args.margin, "cpu": cpu_info(),
              "goal_median_iou": GOAL_MEDIAN_IOU, "all": summarise(df),
              "per_view": {view: summarise(g) for view, g in df.groupby("view")}}
    for name, s in [("all", result["all"]), *result["per_view"].items()]:
        print(f"{name:>8}: n={s['n']} median IoU {s['median_iou']:.3f}, min {s['min_iou']:.3f}, "
              f"IoU<0.5 {100 * s['share_iou_below_0.5']:.1f} %, fallbacks {s['fallbacks']}, "
              f"mostly background {s['mostly_background']}, {s['ms_per_scan_median']:.0f} ms/scan")
    worst = df.nsmallest(args.worst, "iou")[["file", "view", "iou", "confidence", "reason", "coverage"]]
    print(worst.to_string(index=False))
    print("cpu:", result["cpu"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
