"""Wall time per pipeline stage of one `kedro run`, read from the project's info.log.

Usage (after `make run`, in the project folder):
    .venv/bin/python bench/stage_times.py [info.log] [--json FILE]

Each node's time is from its "Running node" to its "Completed node" log line; a stage is the
registered pipeline (ingest, roi_resize, ...) that owns the node, so the stages' sum plus
Kedro's start-up and the hooks' work is the run's wall time. Only the last run in the log counts.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(\S+ \S+),(\d+) \S+\s+(\S+): (.*)$")
STAGES = ("ingest", "roi_resize", "split_augment", "train_cnn21", "train_baselines", "evaluate")


def node_stage() -> dict[str, str]:
    """Node name -> the stage pipeline holding it (the project's own registry)."""
    from kedro.framework.project import configure_project

    configure_project("osteo_pipeline")
    from osteo_pipeline.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    return {node.name: stage for stage in STAGES for node in pipelines[stage].nodes}


def last_run(lines: list[str]) -> list[tuple[datetime, str, str]]:
    events = []
    for line in lines:
        m = LINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(microsecond=int(m.group(2)) * 1000)
            if "Kedro project" in m.group(4) and m.group(3).endswith("session"):
                events = []  # a new session: only the last run counts
            events.append((when, m.group(3), m.group(4)))
    return events


def stage_times(log: Path) -> dict:
    events = last_run(log.read_text(errors="replace").splitlines())
    if not events:
        raise SystemExit(f"{log}: no Kedro run found")
    stages, nodes = node_stage(), defaultdict(float)
    started: datetime | None = None
    for when, _, message in events:
        if message.startswith("Running node:"):
            started = when
        elif message.startswith("Completed node:") and started is not None:
            nodes[message.split(":", 1)[1].strip()] += (when - started).total_seconds()
            started = None
    per_stage = defaultdict(float)
    for name, seconds in nodes.items():
        per_stage[stages.get(name, "other")] += seconds
    wall = (events[-1][0] - events[0][0]).total_seconds()
    return {
        "log": str(log),
        "run_wall_s": round(wall, 1),
        "stages_s": {s: round(per_stage[s], 1) for s in (*STAGES, "other") if s in per_stage},
        "outside_nodes_s": round(wall - sum(per_stage.values()), 1),
        "slowest_nodes_s": dict(sorted(((n, round(s, 1)) for n, s in nodes.items()), key=lambda x: -x[1])[:10]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", nargs="?", default="info.log", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = stage_times(args.log)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
