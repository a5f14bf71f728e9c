"""`make run` says how long it expects to take here (osteo_pipeline.estimate, issue 14)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from osteo_testkit import REPO

from osteo_pipeline.estimate import count_scans, estimate, training_budget

REFERENCE_RUN = {
    "machine": {"precision": "bfloat16 (precision: auto)", "cpu": "test CPU"},
    "commit": "abc1234",
    "data_fingerprint": {"n_scans": 100},
    "settings": {"learning_rates": 1, "n_folds": 5, "max_epochs": 50},
    "kedro_run": {"run_wall_s": 1000.0, "stages_s": {"train_cnn21": 600.0, "train_baselines": 200.0, "evaluate": 200.0}},
}
THROUGHPUT = {"bfloat16": {"in_memory_img_s_median": 20.0}, "float32": {"in_memory_img_s_median": 10.0}}


def _params(learning_rates, n_folds, max_epochs):
    return {"split": {"n_folds": n_folds},
            "train_cnn21": {"training": {"learning_rates": learning_rates, "max_epochs": max_epochs}}}


def test_count_scans_follows_ingests_skip_rule(tmp_path):
    for name in ("normal/a.png", "osteoporosis/b.dcm", "osteoporosis/IMG0001", "labels.csv", "README.md",
                 ".DS_Store", ".cache/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert count_scans(tmp_path, ["README*", "*.md", "*.csv"]) == 3  # a DICOM without a suffix counts


def test_training_budget_is_rates_by_fits_by_epochs():
    assert training_budget(_params([1e-4, 1e-3], 5, 50)) == 2 * 6 * 50


def test_estimate_scales_training_by_speed_budget_and_scans_and_the_rest_by_scans():
    same = estimate(_params([1e-4], 5, 50), 100, 20.0, "bfloat16", REFERENCE_RUN, THROUGHPUT)
    assert same.expected_s == pytest.approx(1000.0)
    # half the speed, twice the scans, a tenth of the epochs: training 800 x 2 x 0.1 x 2, the rest 200 x 2
    other = estimate(_params([1e-4], 5, 5), 200, 10.0, "float32", REFERENCE_RUN, THROUGHPUT)
    assert other.expected_s == pytest.approx(800 * 2 * 0.1 * 2 + 200 * 2)
    assert "about 12 min" in other.line() and "200 scans" in other.line() and "commit abc1234" in other.line()


def test_make_runs_estimate_measures_this_machine(tmp_path):
    (tmp_path / "normal").mkdir()
    for i in range(4):
        (tmp_path / "normal" / f"{i}.png").write_bytes(b"x")
    out = subprocess.run([sys.executable, "-m", "osteo_pipeline.estimate", "--raw-dir", str(tmp_path), "--env", "test"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    found = re.match(r"make run: 4 scans; CNN21 trains at ([\d.]+) images/s here \((bfloat16|float32)\); expect about ", line)
    assert found and float(found[1]) > 0, line
    assert json.loads((REPO / "bench/make_run_realistic.json").read_text())["commit"] in line
