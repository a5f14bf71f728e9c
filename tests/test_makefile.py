"""`make run RAW_DIR=...` trains on the folder it checked and filled, not on data/01_raw."""

from __future__ import annotations

import subprocess

from osteo_testkit import REPO


def _dry_run(*args: str) -> str:
    # -n prints the commands without running them; the kedro line is the last one of `run`.
    out = subprocess.run(["make", "-n", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if "/kedro run" in line)


def test_make_run_passes_raw_dir_to_kedro():
    assert _dry_run("RAW_DIR=/scans/site a").endswith("kedro run --params='raw_dir=/scans/site a'")
    assert _dry_run().endswith("kedro run ")
