"""A hospital's archive on one machine: ingest, roi_resize and split_augment on large synthetic cohorts.

For each cohort size (``--sizes 1000 10000``) the cohort is generated once into ``--work``
(the generator's own ``--workers`` processes; kept for the next run), then each stage runs as its
own ``kedro run --pipelines=<stage>`` in a throw-away project whose ``data/01_raw`` links to it.
Per stage: wall time, node time (from the run's info.log), scans per second, and the peak RSS of
the whole process tree (the Kedro process plus its worker processes, sampled from /proc), against
the size on disk of the model inputs it wrote. Records the CPU flags and load averages.

    .venv/bin/python bench/bench_scale.py --sizes 1000 --json bench/scale_1000.json
    .venv/bin/python bench/bench_scale.py --sizes 10000 --scale 0.25 --json bench/scale_10000_scale0.25.json

Full-size scans take ~2.3 MB each as PNG (1,000: 2.3 GB; 10,000: ~23 GB); the model inputs ~340 KB per scan.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchkit import cpu_info, make_project  # this folder
from stage_times import stage_times  # this folder

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "roi_resize", "split_augment")


def make_cohort(folder: Path, n: int, scale: float, workers: int, seed: int) -> dict:
    """``n`` scans (40% normal, 60% osteoporosis, as Table 2) in ``folder``, unless already there."""
    found = sum(1 for _ in folder.rglob("*.png")) if folder.is_dir() else 0
    if found == n:
        return {"generated": False, "seconds": 0.0}
    normal = int(round(0.4 * n))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "osteo_pipeline.cohort", "--out", str(folder), "--seed", str(seed),
                    "--scale", str(scale), "--workers", str(workers), "--overwrite", "--n-normal", str(normal),
                    "--n-osteoporosis", str(n - normal)], check=True, capture_output=True)
    return {"generated": True, "seconds": round(time.perf_counter() - start, 1)}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants now (MB)."""
    tree, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack.extend(tree.get(pid, []))
    return total / 1024


def run_stage(root: Path, stage: str, params: list[str]) -> dict:
    """One ``kedro run --pipelines=<stage>``: wall, node time, peak RSS of its process tree."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    command = [str(Path(sys.executable).with_name("kedro")), "run", f"--pipelines={stage}"]
    if params:
        command.append("--params=" + ",".join(params))
    load = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"kedro run --pipelines={stage} failed ({proc.returncode}):\n{out[-4000:]}")
    nodes = stage_times(root / "info.log")
    return {"wall_s": round(wall, 1), "node_s": nodes["stages_s"].get(stage), "slowest_nodes_s": nodes["slowest_nodes_s"],
            "peak_rss_mb": round(peak[0], 1), "load_average_before": [round(v, 2) for v in load],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def bench_size(n: int, args: argparse.Namespace) -> dict:
    raw = args.work / f"raw_{n}_scale{args.scale:g}"
    cohort = make_cohort(raw, n, args.scale, args.cohort_workers, args.seed)
    root = args.work / f"project_{n}"
    make_project(root, raw)
    params = [f"workers={args.workers}"] if args.workers is not None else []
    result: dict = {"scans": n, "scale": args.scale, "cohort": {**cohort, "disk_mb": round(disk_mb(raw), 1)},
                    "workers": args.workers or "null (every CPU)", "stages": {}}
    for stage in STAGES:
        result["stages"][stage] = figures = run_stage(root, stage, params)
        figures["scans_per_s_wall"] = round(n / figures["wall_s"], 2)
        if figures["node_s"]:
            figures["scans_per_s_nodes"] = round(n / figures["node_s"], 2)
        print(f"{n} scans, {stage}: {json.dumps(figures)}", flush=True)
    inputs = root / "data" / "05_model_input"
    result["model_inputs_disk_mb"] = round(disk_mb(inputs), 1)
    stages = result["stages"]
    both = stages["ingest"]["node_s"] + stages["roi_resize"]["node_s"]
    result["ingest_plus_roi"] = {"node_s": round(both, 1), "scans_per_s": round(n / both, 2),
                                 "wall_s": round(stages["ingest"]["wall_s"] + stages["roi_resize"]["wall_s"], 1)}
    result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in stages.values())
    if not args.keep:
        shutil.rmtree(root)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
    parser.add_argument("--scale", type=float, default=1.0, help="cohort image scale (1.0: full size)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/osteo_scale"),
                        help="cohorts and projects (a 10,000-scan full-size cohort needs ~23 GB, its model inputs ~3.3 GB)")
    parser.add_argument("--workers", type=int, help="the pipelines' `workers` parameter (default: conf's, null)")
    parser.add_argument("--cohort-workers", type=int, default=2, help="the generator's --workers")
    parser.add_argument("--keep", action="store_true", help="keep the projects (data and logs) in --work")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu_info(), "python": sys.version.split()[0], "runs": []}
    for n in args.sizes:
        record["runs"].append(bench_size(n, args))
    record["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
