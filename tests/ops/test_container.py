"""The two images, built with podman and run as their users run them (README, "Containers"):

- the project image (`make image`): `kedro run` as a non-root user on a mounted data/ folder, with
  no data and no conf/local baked in;
- the serving image of the registered CNN21 (docker/serve-image.sh, `make serve-image`'s script:
  MLflow's generated Dockerfile): a raw scan POSTed to it gets the pipeline's own prediction.

Builds reuse podman's layer cache and a pip cache on this machine: the first build here downloads
and installs TensorFlow & co. (minutes per image); later ones rebuild only what changed. So these
tests run only when asked, and `make test` skips them:

    OSTEO_CONTAINER_TESTS=1 .venv/bin/python -m pytest -p no:xdist tests/ops/test_container.py

They skip, saying why, where podman is missing or cannot run a container, or where the Debian base
image is missing and cannot be built (debootstrap, as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from osteo_testkit import REPO, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OSTEO_CONTAINER_TESTS") != "1",
                       reason="container images take minutes to build: set OSTEO_CONTAINER_TESTS=1 to build and run them"),
]

PODMAN = shutil.which("podman")
IMAGE = "localhost/osteo-pipeline:test"
SERVE_IMAGE = "localhost/osteo-serve:test"
BASE_IMAGE = "localhost/osteo-base:bookworm"
BUILD_TIMEOUT_S = 1500
TOLERANCE = 1e-5


def podman_env() -> dict[str, str]:
    """The environment the Makefile gives podman: docker/containers.conf on hybrid cgroups."""
    env = dict(os.environ)
    if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists():
        env["CONTAINERS_CONF"] = str(REPO / "docker" / "containers.conf")
    return env


def run(command: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; a failure fails the test with the tail of its output."""
    env = kwargs.pop("env", podman_env())
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` exited with {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


@pytest.fixture(scope="module", autouse=True)
def needs_podman():
    """Skip, with the reason, where no image can be built or run here."""
    if PODMAN is None:
        pytest.skip("NO PODMAN: the images were not built nor run (apt-get install podman buildah runc "
                    "debootstrap uidmap)")
    if subprocess.run([PODMAN, "image", "exists", BASE_IMAGE], check=False, env=podman_env()).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"NO BASE IMAGE: {BASE_IMAGE} is missing and building it (docker/base-image.sh) needs "
                        "root and debootstrap")
        run(["make", "--no-print-directory", "base-image", f"BASE_IMAGE={BASE_IMAGE}"], cwd=REPO,
            timeout=BUILD_TIMEOUT_S)
    # podman may be installed yet unable to run a container (no user namespaces, cgroups, runtime)
    probe = subprocess.run([PODMAN, "run", "--rm", "--network=none", BASE_IMAGE, "true"], check=False,
                           capture_output=True, text=True, timeout=120, env=podman_env())
    if probe.returncode != 0:
        pytest.skip(f"PODMAN CANNOT RUN A CONTAINER here: `podman run {BASE_IMAGE} true` exited with "
                    f"{probe.returncode}: {(probe.stdout + probe.stderr).strip()[-1000:]}")


@pytest.fixture(scope="module")
def project_image() -> str:
    started = time.monotonic()
    run(["make", "--no-print-directory", "image", f"IMAGE={IMAGE}", f"BASE_IMAGE={BASE_IMAGE}"], cwd=REPO,
        timeout=BUILD_TIMEOUT_S)
    print(f"project image built in {time.monotonic() - started:.0f} s")
    return IMAGE


def test_project_image_runs_as_non_root_and_holds_no_data(project_image: str):
    script = "id -u; find data conf/local -type f; ls /opt/venv/bin/kedro; python -c 'import osteo_pipeline'"
    out = run([PODMAN, "run", "--rm", project_image, "sh", "-c", script]).stdout.split()
    assert out[0] != "0", "the image's user is root"
    # data/ and conf/local hold no file: patient data and the pseudonym key are mounted, never baked in
    assert out[1:] == ["/opt/venv/bin/kedro"], out


def test_project_image_kedro_run_ingests_the_mounted_raw_scans(project_image: str, cohort_project: Path,
                                                                tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(cohort_project / "data" / "01_raw", data / "01_raw")
    # :U gives the mounted folder to the image's user (uid 999 when the host user is root)
    # COLUMNS: Kedro's rich log lines unwrapped, so that the closing line reads whole
    done = run([PODMAN, "run", "--rm", "-e", "COLUMNS=200", "-v", f"{data}:/home/kedro_docker/data:U",
                project_image, "kedro", "run", "--pipelines=ingest"])
    assert "Pipeline execution completed successfully" in done.stdout + done.stderr
    manifests = list((data / "02_intermediate" / "scan_manifest.parquet").glob("*/scan_manifest.parquet"))
    assert len(manifests) == 1, sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    import pandas as pd

    manifest = pd.read_parquet(manifests[0])
    scans = [p for p in (data / "01_raw").rglob("*.png")]
    assert len(manifest) == len(scans) > 0


@pytest.fixture(scope="module")
def serving_container(served_project: dict) -> str:
    started = time.monotonic()
    env = {**podman_env(), "MLFLOW_TRACKING_URI": served_project["tracking_uri"],
           "MLFLOW": str(Path(sys.executable).parent / "mlflow")}
    run([str(REPO / "docker" / "serve-image.sh"), "models:/osteo-cnn21/latest", SERVE_IMAGE, BASE_IMAGE],
        cwd=served_project["root"], env=env, timeout=BUILD_TIMEOUT_S)
    print(f"serving image built in {time.monotonic() - started:.0f} s")
    port = free_port()
    name = f"osteo-serve-test-{port}"
    run([PODMAN, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", SERVE_IMAGE])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            state = run([PODMAN, "inspect", "-f", "{{.State.Running}}", name]).stdout.strip()
            if state != "true" or time.monotonic() > deadline:
                logs = subprocess.run([PODMAN, "logs", name], check=False, capture_output=True, text=True, env=podman_env())
                pytest.fail(f"the serving container did not answer /ping (running: {state}); its log:\n"
                            f"{(logs.stdout + logs.stderr)[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        subprocess.run([PODMAN, "rm", "-f", name], check=False, capture_output=True, env=podman_env())


def test_serving_image_answers_a_raw_scan_with_the_pipelines_own_prediction(serving_container: str,
                                                                            served_project: dict):
    from osteo_pipeline.serving.model import request_body

    scans = served_project["scans"]
    body = json.dumps(request_body([s["path"].read_bytes() for s in scans], [s["path"].name for s in scans]))
    request = urllib.request.Request(f"{serving_container}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        pytest.fail(f"/invocations answered {error.code}: {error.read()[:2000]!r}")
    rows = answer["predictions"]
    assert len(rows) == len(scans)
    names = served_project["class_names"]
    for row, scan in zip(rows, scans):
        np.testing.assert_allclose([row[f"p_{c}"] for c in names], scan["probabilities"], atol=TOLERANCE, rtol=0)
        assert row["label"] == names[int(np.argmax(scan["probabilities"]))]
