"""`make run RAW_DIR=...` trains on the folder it checked and filled; `make install` installs uv.lock."""

from __future__ import annotations

import subprocess
import tomllib

import pytest
from osteo_testkit import REPO


def _dry_run(*args: str) -> str:
    # -n prints the commands without running them; the kedro line is the last one of `run`.
    out = subprocess.run(["make", "-n", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if "/kedro run" in line)


def test_make_run_passes_raw_dir_to_kedro():
    assert _dry_run("RAW_DIR=/scans/site a").endswith("kedro run --params='raw_dir=/scans/site a'")
    assert _dry_run().endswith("kedro run ")


def test_make_install_syncs_the_lock_with_uv():
    # -B: print the install commands even where .venv is already installed.
    out = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "uv==" in out.stdout  # uv is bootstrapped from PyPI, not assumed installed
    assert "uv sync --locked" in out.stdout and "--extra test" in out.stdout


def test_lock_matches_pyproject():
    # `make install` (uv sync --locked) refuses a stale lock: edit pyproject.toml, then `make lock`.
    uv = REPO / ".venv/uv/bin/uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make install`")
    out = subprocess.run([str(uv), "lock", "--check", "--offline"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_lock_has_tensorflow_wheels_for_every_supported_platform():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    assert "tensorflow-cpu" not in packages  # one TensorFlow distribution, the same everywhere
    wheels = [w["url"].rsplit("/", 1)[1] for w in packages["tensorflow"]["wheels"]]
    for python in ("cp311", "cp312", "cp313"):  # requires-python >=3.11,<3.14
        for platform in ("manylinux_2_27_x86_64", "manylinux_2_27_aarch64", "macosx_12_0_arm64", "win_amd64"):
            assert any(f"-{python}-" in w and platform in w for w in wheels), (python, platform)


def test_constraints_txt_is_the_lock():
    # constraints.txt (pip-based installs: the Dockerfile) is uv.lock exported by `make lock`.
    uv = REPO / ".venv/uv/bin/uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make install`")
    args = ["export", "--frozen", "--quiet", "--all-extras", "--no-emit-project", "--no-hashes", "--no-header", "--no-annotate"]
    out = subprocess.run([str(uv), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins == out.stdout.splitlines()
