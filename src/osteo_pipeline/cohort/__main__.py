"""CLI: python -m osteo_pipeline.cohort --out data/01_raw --seed 42 [--difficulty realistic] [...]"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from osteo_pipeline.cohort.specs import DIFFICULTIES
from osteo_pipeline.cohort.writer import FORMATS, generate_cohort


def _parser() -> argparse.ArgumentParser:
    """Command-line options (defaults reproduce the paper's 174-scan cohort)."""
    p = argparse.ArgumentParser(
        prog="python -m osteo_pipeline.cohort",
        description="Write a synthetic spine DXA cohort (PNG or DICOM scans, clinical.csv, roi.csv).",
    )
    p.add_argument("--out", default="data/01_raw", help="output folder (default: data/01_raw)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-normal", type=int, default=60, help="normal scans")
    p.add_argument("--n-osteoporosis", type=int, default=114, help="osteoporosis scans")
    p.add_argument("--n-osteopenia", type=int, default=0, help="osteopenia scans (third WHO class)")
    p.add_argument(
        "--scale", type=float, default=1.0, help="image size factor (anatomy stays proportional)"
    )
    p.add_argument(
        "--repeat-patient-fraction", type=float, default=0.1, help="share of patients with a second scan"
    )
    p.add_argument(
        "--difficulty", choices=sorted(DIFFICULTIES), default="realistic",
        help="how strongly the label shows through the biological variation (default: realistic)",
    )
    p.add_argument(
        "--lateral-fraction", type=float, default=0.0, help="share of scans rendered as lateral views"
    )
    p.add_argument("--format", choices=sorted(FORMATS), default="png", help="scan file format")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the cohort and print one summary line; exit code 2 if --out is not empty."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        table = generate_cohort(
            args.out,
            seed=args.seed,
            n_normal=args.n_normal,
            n_osteoporosis=args.n_osteoporosis,
            n_osteopenia=args.n_osteopenia,
            scale=args.scale,
            repeat_patient_fraction=args.repeat_patient_fraction,
            workers=args.workers,
            overwrite=args.overwrite,
            difficulty=args.difficulty,
            lateral_fraction=args.lateral_fraction,
            file_format=args.format,
        )
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}={v}" for k, v in table["label"].value_counts().sort_index().items())
    print(
        f"wrote {len(table)} scans ({counts}) of {table['patient_id'].nunique()} patients "
        f"to {args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
