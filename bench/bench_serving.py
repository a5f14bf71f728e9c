"""Benchmark the served CNN21: `mlflow models serve` under load, with full-size scans (run by hand).

Starts `mlflow models serve -m <model> --env-manager local` on 127.0.0.1 (a free port), sends real
full-size scans of the synthetic cohort (`osteo_pipeline.cohort` at its default scale) base64 in the
pyfunc's JSON request, with 1, 4 and 8 concurrent clients for a bounded number of requests each,
and reports per level: p50/p95/p99 latency, throughput, errors, and the server's RSS (its whole
process tree) before and after. An in-process profile says where one request's time goes (JSON,
base64, decode, ROI detection, window/resize, the network). The CPU flags, TensorFlow version and
oneDNN settings are recorded with the figures, and the load average, since the host may be shared.

Usage (from the repository root):
  .venv/bin/python bench/bench_serving.py                          # builds a test-scale project (~2 min)
  .venv/bin/python bench/bench_serving.py --project . --json bench/serving.json   # this project's model
  .venv/bin/python bench/bench_serving.py --requests 20 20 20      # a quick look

The first client level runs once more at the end (the last table row): its RSS against the first
run's says whether memory stays flat under the same load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # osteo_testkit: the project the serving tests build

from osteo_testkit import TEST_COHORT, free_port, make_project, run_kedro  # noqa: E402
from benchkit import cpu_info  # noqa: E402  (this folder)

GOAL_P50_MS = 100.0


def tensorflow_info() -> dict:
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    return {"version": tf.__version__, "mkl_build": bool(_pywrap_util_port.IsMklEnabled()),
            # unset: oneDNN is on by default for x86 Linux builds since TF 2.9
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (on by default)"),
            "onednn_env": {k: v for k, v in os.environ.items() if k.startswith(("ONEDNN_", "DNNL_", "OMP_"))},
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # gone meanwhile, or a kernel thread without RSS
    return total / 1024


def serving_params() -> dict:
    """The serving tests' run parameters (tests/serving/conftest.py: detected ROIs, one epoch)."""
    spec = importlib.util.spec_from_file_location("serving_conftest", REPO / "tests" / "serving" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PARAMS


def build_project(root: Path) -> Path:
    """A test-scale project with a registered CNN21, built as the serving test fixtures build it."""
    from osteo_pipeline.cohort import generate_cohort

    make_project(root)
    generate_cohort(root / "data" / "01_raw", **TEST_COHORT)
    run_kedro(root, ["ingest", "roi_resize", "split_augment"])
    run_kedro(root, ["roi_resize", "train_cnn21"], params=serving_params())
    return root


def full_size_scans(folder: Path, per_class: int) -> list[bytes]:
    """Scans of the synthetic cohort at its default (full) scale, both classes."""
    from osteo_pipeline.cohort import generate_cohort

    generate_cohort(folder, seed=7, n_normal=per_class, n_osteoporosis=per_class, workers=1)
    return [p.read_bytes() for p in sorted(folder.glob("*/*.png"))]


def body(scan: bytes) -> bytes:
    from osteo_pipeline.serving.model import request_body

    return json.dumps(request_body([scan])).encode()


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile(model_uri: str, scans: list[bytes], repeats: int) -> dict:
    """Median ms per full-size scan of each step of one request, in this process."""
    import mlflow
    import pandas as pd

    from osteo_pipeline.imaging.decode import decode_scan
    from osteo_pipeline.imaging.preprocess import choose_roi, crop_resize
    from osteo_pipeline.imaging.preprocess import scale_images

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    model = pyfunc.unwrap_python_model()
    settings = model.preprocessing
    steps: dict[str, list[float]] = {}
    for scan in scans:
        text = body(scan)
        pixels = decode_scan(scan, max_pixels=settings.max_pixels).pixels
        roi = choose_roi(pixels, None, settings.margin)
        image = crop_resize(pixels, roi.box, settings.size, settings.low_percentile, settings.high_percentile)
        model.probabilities(image[None])  # traced once, at the first call
        frame = pd.DataFrame({"image": [scan]})
        for step, fn in {
            "json_encode": lambda: body(scan),
            "json_parse": lambda: json.loads(text),
            "base64_decode": lambda: base64.b64decode(json.loads(text)["dataframe_split"]["data"][0][0]),
            "decode": lambda: decode_scan(scan, max_pixels=settings.max_pixels),
            "roi_detection": lambda: choose_roi(pixels, None, settings.margin),
            "window_resize": lambda: crop_resize(pixels, roi.box, settings.size, settings.low_percentile,
                                                 settings.high_percentile),
            "network_traced": lambda: model.probabilities(image[None]),
            "network_model_predict": lambda: model.network.predict(scale_images(image[None]), verbose=0),
            "pyfunc_predict_total": lambda: pyfunc.predict(frame),
        }.items():
            steps.setdefault(step, []).append(median_ms(fn, repeats))
    return {step: round(statistics.median(values), 1) for step, values in steps.items()}


def post(connection: http.client.HTTPConnection, data: bytes) -> tuple[int, bytes]:
    connection.request("POST", "/invocations", body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def load_level(port: int, bodies: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` requests over ``clients`` keep-alive connections; latency per request."""
    counter, lock = iter(range(requests)), threading.Lock()
    latencies, errors = [], []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            start = time.perf_counter()
            try:
                status, answer = post(connection, bodies[index % len(bodies)])
            except (OSError, http.client.HTTPException) as error:
                status, answer = -1, repr(error).encode()
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append(f"{status}: {answer[:200]!r}")
        connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    ms = sorted(1000 * v for v in latencies)

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))], 1)

    return {"clients": clients, "requests": requests, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "throughput_rps": round(requests / wall, 2), "errors": len(errors), "error_samples": errors[:3],
            "wall_s": round(wall, 1)}


def serve(project: Path, tracking_uri: str, model_uri: str, log: Path) -> tuple[subprocess.Popen, int]:
    """`mlflow models serve` as a user starts it, once it answers /ping."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow models serve exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        time.sleep(0.5)
    stop(server)
    raise SystemExit(f"mlflow models serve did not answer within 300 s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, help="project folder (default: build a test-scale one)")
    parser.add_argument("--tracking-uri", help="default: sqlite:///<project>/mlflow.db")
    parser.add_argument("--model-uri", default="models:/osteo-cnn21@champion")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 200, 200], help="per client level")
    parser.add_argument("--scans-per-class", type=int, default=4, help="full-size scans generated per class")
    parser.add_argument("--profile-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "serving.json")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests count per --clients level")

    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        work = Path(tmp)
        project = args.project.resolve() if args.project else build_project(work / "project")
        tracking_uri = args.tracking_uri or f"sqlite:///{project / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        scans = full_size_scans(work / "full", args.scans_per_class)
        from osteo_pipeline.imaging.decode import decode_scan

        shapes = sorted({f"{s.width}x{s.height} {s.bit_depth}-bit" for s in map(decode_scan, scans)})
        result = {"model_uri": args.model_uri, "project": "test-scale (built)" if not args.project else str(project),
                  "scans": {"count": len(scans), "sizes": shapes,
                            "png_mb_mean": round(statistics.mean(map(len, scans)) / 2**20, 2)},
                  "cpu": cpu_info(), "tensorflow": tensorflow_info(), "load_average_start": load_average()}
        result["profile_ms"] = profile(args.model_uri, scans, args.profile_repeats)
        print("profile, median ms per full-size scan:", json.dumps(result["profile_ms"]), flush=True)

        bodies = [body(s) for s in scans]
        server, port = serve(project, tracking_uri, args.model_uri, work / "serve.log")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            for data in bodies:  # warm-up: first-call tracing, allocator growth
                status, answer = post(connection, data)
                if status != 200:
                    raise SystemExit(f"warm-up request failed: {status} {answer[:500]!r}")
            connection.close()
            result["rss_mb_start"] = round(tree_rss_mb(server.pid), 1)
            levels = []
            # the first level again at the end: RSS that keeps growing at equal load is a leak;
            # growth with more clients is per-thread buffers (allocator arenas, TF scratch)
            plan = [*zip(args.clients, args.requests, strict=True), (args.clients[0], args.requests[0])]
            for clients, requests in plan:
                level = load_level(port, bodies, clients, requests)
                level["rss_mb_after"] = round(tree_rss_mb(server.pid), 1)
                level["load_average"] = load_average()
                levels.append(level)
                print(json.dumps(level), flush=True)
            result["levels"] = levels
        finally:
            stop(server)
    single = next((lv for lv in result["levels"] if lv["clients"] == 1), None)
    result["goal"] = {"single_client_p50_ms_max": GOAL_P50_MS,
                      "met": bool(single and single["p50_ms"] <= GOAL_P50_MS
                                  and not any(lv["errors"] for lv in result["levels"]))}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{len(scans)} full-size scans {', '.join(shapes)}; {result['cpu']['model']}, "
          f"{result['cpu']['cores']} cores, TF {result['tensorflow']['version']}")
    print(f"{'clients':>7} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7} {'errors':>6} "
          f"{'RSS MB':>15} {'load avg':>16}")
    before = result["rss_mb_start"]
    for lv in result["levels"]:
        rss, load = f"{before}->{lv['rss_mb_after']}", " ".join(map(str, lv["load_average"]))
        print(f"{lv['clients']:>7} {lv['requests']:>8} {lv['p50_ms']:>8} {lv['p95_ms']:>8} {lv['p99_ms']:>8} "
              f"{lv['throughput_rps']:>7} {lv['errors']:>6} {rss:>15} {load:>16}")
        before = lv["rss_mb_after"]
    print(f"goal (single-client p50 <= {GOAL_P50_MS:.0f} ms, no error): {'met' if result['goal']['met'] else 'NOT met'}"
          f"; written to {args.json}")


if __name__ == "__main__":
    main()
