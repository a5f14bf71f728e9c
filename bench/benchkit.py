"""What every benchmark records about the machine it ran on (bench scripts import it from this folder)."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The features that decide TensorFlow's speed and precision on a CPU (bf16 needs AVX512-BF16 or AMX).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_info() -> dict:
    """CPU model, core count, the SIMD/matrix flags of /proc/cpuinfo and the load average now."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {"model": model or platform.processor(), "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in CPU_FLAGS}, "load_average": list(os.getloadavg())}


def add_cohort_options(parser: argparse.ArgumentParser, raw_help: str) -> None:
    """The options of a bench that measures a generated cohort (or a real folder with ``--raw``)."""
    parser.add_argument("--raw", type=Path, help=raw_help)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=0.5, help="cohort image scale (1.0: full size)")
    parser.add_argument("--n", type=int, default=120, help="number of scans generated")
    parser.add_argument("--lateral-fraction", type=float, default=0.0)
    parser.add_argument("--difficulty", default="realistic", choices=["easy", "realistic", "hard"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")


@contextmanager
def scan_folder(args: argparse.Namespace) -> Iterator[tuple[Path, dict]]:
    """``--raw`` as given, or a cohort generated into a temporary folder; with the cohort's settings."""
    if args.raw is not None:
        yield args.raw, {"raw": str(args.raw)}
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        settings = make_cohort(Path(tmp) / "raw", args)
        print(f"cohort: {settings} in {time.perf_counter() - start:.0f} s")
        yield Path(tmp) / "raw", settings


def make_cohort(out: Path, args: argparse.Namespace) -> dict:
    """Generate the cohort the options describe (half normal, half osteoporosis); return its settings."""
    from osteo_pipeline.cohort import generate_cohort

    settings = {"seed": args.seed, "scale": args.scale, "n_normal": args.n // 2, "n_osteoporosis": args.n - args.n // 2,
                "workers": args.workers, "lateral_fraction": args.lateral_fraction, "difficulty": args.difficulty}
    generate_cohort(out, **settings)
    return settings


REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path, raw: Path) -> None:
    """A bench project at ``root``: the repository's conf and pyproject with empty data folders
    (as tests/osteo_testkit.make_project), data/01_raw a link to the cohort ``raw``."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    for layer in ("02_intermediate", "05_model_input", "06_models", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    (root / "data" / "01_raw").symlink_to(raw.resolve(), target_is_directory=True)
