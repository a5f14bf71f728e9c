"""`mlflow models serve` on the session's trained project (``served_project``, tests/conftest.py),
started once per session and shared by test_serve and test_fuzz."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from osteo_testkit import free_port, server_process

START_TIMEOUT_S = 180
@pytest.fixture(scope="session")
def server(served_project: dict, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve -m models:/osteo-cnn21@champion --env-manager local` on a free port."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the virtualenv, as after `source .venv/bin/activate`
    env = {**os.environ, "MLFLOW_TRACKING_URI": served_project["tracking_uri"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/osteo-cnn21@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/ping", tmp_path_factory.mktemp("serve") / "serve.log",
                        cwd=served_project["root"], env=env, timeout_s=START_TIMEOUT_S):
        yield url
