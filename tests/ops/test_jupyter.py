"""`kedro jupyter lab` started as a user starts it (headless here) on a test-scale project copy:
JupyterLab answers, its default kernel is the project's (Kedro's IPython extension loaded), and a
kernel the server starts has the catalog and the pipelines, as the walkthrough notebook needs."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from osteo_testkit import free_port, make_project, server_process

pytestmark = pytest.mark.slow

KERNEL = "kedro_osteo_pipeline"
TOKEN = uuid.uuid4().hex


def _api(url: str, path: str, method: str = "GET", body: dict | None = None) -> Any:
    request = urllib.request.Request(f"{url}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("jupyterlab", reason="the notebook extra: pip install -e '.[notebook]'")
    base = tmp_path_factory.mktemp("jupyter")
    project = make_project(base / "project")
    # Jupyter's kernel specs, config and runtime files, and IPython's profile in the test's folder:
    # `kedro jupyter` installs its kernel "for the user", which would otherwise be ~/.local/share.
    jupyter_dirs = {"JUPYTER_DATA_DIR": "data", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_RUNTIME_DIR": "runtime",
                    "IPYTHONDIR": "ipython"}
    env = {**os.environ, **{k: str(base / v) for k, v in jupyter_dirs.items()},
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro), "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={TOKEN}"] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI containers
    with server_process(command, f"{url}/api/status?token={TOKEN}", base / "lab.log", cwd=project, env=env,
                        timeout_s=120):
        yield {"url": url, "project": project, "data_dir": base / "data"}


def test_jupyterlab_serves_the_project_kernel_by_default(lab):
    with urllib.request.urlopen(f"{lab['url']}/lab?token={TOKEN}", timeout=60) as response:
        assert "JupyterLab" in response.read().decode()
    specs = _api(lab["url"], "/api/kernelspecs")
    assert specs["default"] == KERNEL
    argv = specs["kernelspecs"][KERNEL]["spec"]["argv"]
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve() and argv[-2:] == ["--ext", "kedro.ipython"]
    assert (lab["data_dir"] / "kernels" / KERNEL / "kernel.json").is_file()  # not the user's home


def test_a_server_kernel_has_the_catalog_and_pipelines(lab):
    """Run one cell in a kernel the server starts, over its websocket (what JupyterLab does)."""
    import websocket

    kernel = _api(lab["url"], "/api/kernels", "POST", {"name": KERNEL})
    try:
        ws = websocket.create_connection(
            f"ws://{lab['url'].removeprefix('http://')}/api/kernels/{kernel['id']}/channels?token={TOKEN}", timeout=120)
        code = "print(sorted(pipelines)[:3], 'cnn21_model' in catalog, context.project_path.name)"
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                       "session": uuid.uuid4().hex, "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False}}))
        # The reply (shell channel) may arrive before the printed text (iopub): read until the
        # kernel reports idle for this request as well, as Jupyter's clients do.
        out, status, idle = [], None, False
        while status is None or not idle:
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                out.append(message["content"]["text"])
            elif kind == "error":
                pytest.fail("\n".join(message["content"]["traceback"]))
            elif kind == "execute_reply":
                status = message["content"]["status"]
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        ws.close()
    finally:
        urllib.request.urlopen(urllib.request.Request(  # shut the kernel down (204, no body)
            f"{lab['url']}/api/kernels/{kernel['id']}", method="DELETE",
            headers={"Authorization": f"token {TOKEN}"}), timeout=60).close()
    assert status == "ok"
    assert "".join(out).strip() == "['__default__', 'evaluate', 'external_validation'] True project"
