"""Benchmark the served CNN21 (issue 15): one full-size scan from bytes to probabilities, in a warm
process, over HTTP, and through `osteo predict` from a cold start (run by hand).

(a) In-process, the issue's figure: the registered pyfunc's ``predict`` on a one-row frame of raw
    scan bytes (decode, ROI detection, window, resize, CNN21, the response table), warm: p50/p95
    over many requests cycling through full-size scans, and a per-step profile (median ms) that
    says where the time goes, with the network called three ways (the traced graph the model
    uses, eager ``model(x)``, ``Model.predict``).
(b) HTTP: `mlflow models serve -m <model> --env-manager local` on 127.0.0.1 (a free port), the
    scans base64 in the pyfunc's JSON request, 1, 4 and 8 concurrent clients for a bounded number
    of requests each, then 1 client again; p50/p95/p99, throughput, errors, the server's RSS
    (whole process tree) before and after each level.
(c) The CLI: `osteo predict --help`, and `osteo predict --timings <scan>` with its default model
    (the champion: MLflow's registry is read) from the project folder: wall time, time to the
    first byte of output, and the CLI's own figures (start-up from process start to the model's
    URI resolved, model load, the scan). Twice: as this install runs (see ``bytecode``: a venv
    without compiled bytecode under PYTHONDONTWRITEBYTECODE=1 compiles every module on every
    start), and with Python's bytecode caches (PYTHONPYCACHEPREFIX, warmed by one unrecorded run),
    as any install where Python may write them, or `uv sync --compile-bytecode`, runs.

The goal: (a) p50 <= 100 ms on 2 cores, and (c) start-up <= 3 s (judged with bytecode caches; the
figure without them is recorded beside it). HTTP figures are reported, not judged. The CPU flags
(benchkit), TensorFlow's version, oneDNN and thread settings and the load average are recorded
with the figures, since the host may be shared.

The model: without ``--project``, a production-size CNN21 (conf/base's ``size_cnn21``, 150 px, and
its roi_resize and ingest settings) with untrained weights, logged and registered by the same
``log_scan_classifier`` training uses into a temporary store, made the project's champion: the
latency is the architecture's, not the weights'. A test-scale project (conf/test) would have a
smaller network and understate it.

Usage (from the repository root):
  .venv/bin/python bench/bench_serving.py                                   # ~6 min on 2 cores
  .venv/bin/python bench/bench_serving.py --requests 50 50 50 --inprocess-requests 100 --cli-runs 3
  .venv/bin/python bench/bench_serving.py --project . --model-uri models:/osteo-cnn21@champion
  .venv/bin/python bench/bench_serving.py --skip-http --skip-cli            # (a) only
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # osteo_testkit: free_port

from osteo_testkit import free_port  # noqa: E402
from benchkit import cpu_info  # noqa: E402  (this folder)

GOAL_P50_MS = 100.0
GOAL_CLI_STARTUP_S = 3.0
MODEL_NAME = "osteo-cnn21"
BIN = Path(sys.executable).parent


def tensorflow_info() -> dict:
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    return {"version": tf.__version__, "mkl_build": bool(_pywrap_util_port.IsMklEnabled()),
            # unset: oneDNN is on by default for x86 Linux builds since TF 2.9
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (on by default)"),
            "onednn_env": {k: v for k, v in os.environ.items() if k.startswith(("ONEDNN_", "DNNL_", "OMP_"))},
            # 0: TensorFlow's default, a pool as large as the CPUs this process may run on
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "schedulable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def bytecode_info() -> dict:
    """Whether this install runs from compiled bytecode: without it (and with PYTHONDONTWRITEBYTECODE
    set) every start compiles TensorFlow's, MLflow's... thousands of modules from source again."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    probes = {name: any((purelib / name / "__pycache__").glob("__init__.*.pyc"))
              for name in ("tensorflow", "mlflow", "keras")}
    return {"PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "unset"),
            "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX", "unset"), "site_packages_pyc": probes}


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


def percentiles(ms: list[float]) -> dict:
    ordered = sorted(ms)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "mean_ms": round(statistics.mean(ordered), 1),
            "min_ms": round(ordered[0], 1)}


def log_untrained_cnn21(project: Path) -> tuple[str, str]:
    """A production-size CNN21 (conf/base settings, untrained), logged and registered as training
    logs it, and made the project's champion; its (tracking URI, model URI)."""
    import mlflow
    import yaml

    from osteo_pipeline.models.cnn21 import build_cnn21
    from osteo_pipeline.serving.model import log_scan_classifier
    from osteo_pipeline.serving.packaging import pinned
    from osteo_pipeline.serving.preprocessing import ScanPreprocessing, preprocessing_settings
    from osteo_pipeline.serving.registry import CHAMPION, PROJECT_TAG, PROJECT_TAG_VALUE
    from osteo_pipeline.training.tracking import SERVING_REQUIREMENTS  # what training pins

    roi = yaml.safe_load((REPO / "conf/base/parameters_roi_resize.yml").read_text())["roi_resize"]
    ingest = yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())["ingest"]
    size = int(roi["size_cnn21"])
    project.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench_serving")
    settings = ScanPreprocessing.from_params(preprocessing_settings(roi, ingest), size=size)
    with mlflow.start_run():
        info = log_scan_classifier(build_cnn21((size, size, 3), 2), ["normal", "osteoporosis"], settings, MODEL_NAME,
                                   pinned(SERVING_REQUIREMENTS))
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_tag(MODEL_NAME, PROJECT_TAG, PROJECT_TAG_VALUE)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(info.registered_model_version))
    return tracking_uri, f"models:/{MODEL_NAME}@{CHAMPION}"


def full_size_scans(folder: Path, per_class: int) -> list[Path]:
    """Scans of the synthetic cohort at its default (full) scale, both classes."""
    from osteo_pipeline.cohort import generate_cohort

    generate_cohort(folder, seed=7, n_normal=per_class, n_osteoporosis=per_class, workers=1)
    return sorted(folder.glob("*/*.png"))


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


def in_process(model_uri: str, scans: list[bytes], requests: int, repeats: int) -> dict:
    """(a): the pyfunc's predict on one full-size scan, warm; and where one request's time goes."""
    import mlflow
    import pandas as pd

    import osteo_pipeline.serving.model as serving  # this working tree's code, not the model's code/ copy
    from osteo_pipeline.imaging.decode import decode_scan
    from osteo_pipeline.imaging.preprocess import choose_roi, crop_resize, scale_images
    from osteo_pipeline.imaging.quality import degenerate_reason

    start = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    load_s = time.perf_counter() - start
    model = pyfunc.unwrap_python_model()
    frames = [pd.DataFrame({"image": [scan]}) for scan in scans]
    for frame in frames:  # warm-up: allocator growth, oneDNN's primitive caches
        pyfunc.predict(frame)
    latencies = []
    for i in range(requests):
        begin = time.perf_counter()
        pyfunc.predict(frames[i % len(frames)])
        latencies.append(1000 * (time.perf_counter() - begin))

    settings, steps = model.preprocessing, {}
    for scan, frame in zip(scans, frames, strict=True):
        text = body(scan)
        pixels = decode_scan(scan, max_pixels=settings.max_pixels).pixels
        roi = choose_roi(pixels, None, settings.margin)
        image = crop_resize(pixels, roi.box, settings.size, settings.low_percentile, settings.high_percentile,
                            settings.fit)
        probabilities = model.probabilities(image[None])
        degenerate = settings.degenerate or {}
        for step, fn in {
            "json_encode": lambda: body(scan),
            "json_parse": lambda: json.loads(text),
            "base64_decode": lambda: base64.b64decode(json.loads(text)["dataframe_split"]["data"][0][0]),
            "decode": lambda: decode_scan(scan, max_pixels=settings.max_pixels),
            "degenerate_check": lambda: degenerate and degenerate_reason(
                pixels, int(degenerate["min_side"]), degenerate["max_aspect"], degenerate["min_dynamic_range"]),
            "roi_detection": lambda: choose_roi(pixels, None, settings.margin),
            "window_resize": lambda: crop_resize(pixels, roi.box, settings.size, settings.low_percentile,
                                                 settings.high_percentile, settings.fit),
            "network_traced": lambda: model.probabilities(image[None]),  # what predict uses
            "network_eager_call": lambda: model.network(scale_images(image[None]), training=False).numpy(),
            "network_model_predict": lambda: model.network.predict(scale_images(image[None]), verbose=0),
            "response_table": lambda: model.table(probabilities, [roi]),
            "pyfunc_predict_total": lambda: pyfunc.predict(frame),
        }.items():
            steps.setdefault(step, []).append(median_ms(fn, repeats))
    return {"requests": requests, **percentiles(latencies), "model_load_s": round(load_s, 2),
            "code": str(Path(serving.__file__).relative_to(REPO)) if REPO in Path(serving.__file__).parents
            else serving.__file__,
            "profile_ms": {step: round(statistics.median(values), 1) for step, values in steps.items()}}


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


def run_cli(arguments: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """One `osteo ...` process: wall time, time to the first byte of its stdout, its exit status and
    the figures of its ``--timings`` line (stderr goes to ``log``: a pipe could fill and stall it)."""
    with log.open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen([str(BIN / "osteo"), *arguments], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=err, stdin=subprocess.DEVNULL)
        first = process.stdout.read(1)
        first_byte = time.perf_counter() - start
        out = first + process.stdout.read()
        code = process.wait()
        wall = time.perf_counter() - start
    prefix = "osteo predict: timings "
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(prefix)]
    figures = json.loads(lines[-1].removeprefix(prefix)) if lines else {}
    if code != 0:
        raise SystemExit(f"osteo {' '.join(arguments)} exited {code}:\n{log.read_text(errors='replace')[-3000:]}")
    return {"wall_s": round(wall, 3), "first_byte_s": round(first_byte, 3), "stdout_bytes": len(out), **figures}


def cli(project: Path, tracking_uri: str, model_uri: str, scan: Path, runs: int, work: Path) -> dict:
    """(c): `osteo predict --help` and `osteo predict --timings <scan>`, as installed and with bytecode caches."""
    model = [] if model_uri.endswith("@champion") else ["--model", model_uri]  # the default: the champion
    base = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cached = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    found = {}
    for condition, env in (("as_installed", base), ("bytecode_cached", cached)):
        if condition == "bytecode_cached":  # one unrecorded run writes the caches
            run_cli(["predict", *model, str(scan)], project, env, work / "cli.log")
        helps = [run_cli(["predict", "--help"], project, env, work / "cli.log")["wall_s"] for _ in range(runs)]
        predicts = []
        for _ in range(runs):
            predicts.append(run_cli(["predict", "--timings", *model, str(scan)], project, env, work / "cli.log"))
            predicts[-1]["load_average"] = load_average()
            print(condition, json.dumps(predicts[-1]), flush=True)

        def median(key: str) -> float:
            return round(statistics.median(r[key] for r in predicts), 3)

        found[condition] = {
            "help_wall_s": helps, "help_wall_s_median": round(statistics.median(helps), 3),
            "predict_runs": predicts,
            "median": {key: median(key) for key in ("startup_s", "resolve_model_s", "model_load_s", "total_s",
                                                    "first_byte_s", "wall_s")}
            | {"scan_ms": round(statistics.median(r["scan_ms"][0] for r in predicts), 1)},
        }
    command = " ".join(["osteo predict --timings", *model, "<scan>"])
    return {"command": f"{command} (from the project folder)",
            "scan": scan.name, "runs": runs, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, help="project folder (default: a temporary one with an untrained, "
                                                     "production-size CNN21 as its champion)")
    parser.add_argument("--tracking-uri", help="default: sqlite:///<project>/mlflow.db")
    parser.add_argument("--model-uri", default="models:/osteo-cnn21@champion")
    parser.add_argument("--inprocess-requests", type=int, default=200, help="(a) warm pyfunc predict calls")
    parser.add_argument("--profile-repeats", type=int, default=5, help="(a) repeats of each profiled step per scan")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="(b) concurrent clients per level")
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 200, 200], help="(b) requests per level")
    parser.add_argument("--cli-runs", type=int, default=3, help="(c) runs per command and condition")
    parser.add_argument("--scans-per-class", type=int, default=4, help="full-size scans generated per class")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "serving.json")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("give one --requests count per --clients level")

    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        work = Path(tmp)
        if args.project:
            project = args.project.resolve()
            tracking_uri, model_uri = args.tracking_uri or f"sqlite:///{project / 'mlflow.db'}", args.model_uri
        else:
            project = work / "project"
            tracking_uri, model_uri = log_untrained_cnn21(project)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        paths = full_size_scans(work / "full", args.scans_per_class)
        scans = [p.read_bytes() for p in paths]
        from osteo_pipeline.imaging.decode import decode_scan

        shapes = sorted({f"{s.width}x{s.height} {s.bit_depth}-bit" for s in map(decode_scan, scans)})
        result = {"model_uri": model_uri,
                  "model": str(project) if args.project else "CNN21 at conf/base's size_cnn21, untrained weights, "
                                                             "logged by log_scan_classifier (a temporary store)",
                  "scans": {"count": len(scans), "sizes": shapes,
                            "png_mb_mean": round(statistics.mean(map(len, scans)) / 2**20, 2)},
                  "cpu": cpu_info(), "tensorflow": tensorflow_info(), "bytecode": bytecode_info(),
                  "load_average_start": load_average()}

        result["in_process"] = in_process(model_uri, scans, args.inprocess_requests, args.profile_repeats)
        result["in_process"]["load_average"] = load_average()
        print("(a) in-process:", json.dumps(result["in_process"]), flush=True)

        if not args.skip_http:
            result["http"] = http_levels(project, tracking_uri, model_uri, [body(s) for s in scans], args, work)
        if not args.skip_cli:
            median_scan = sorted(paths, key=lambda p: p.stat().st_size)[len(paths) // 2]
            result["cli"] = cli(project, tracking_uri, model_uri, median_scan, args.cli_runs, work)

    a = result["in_process"]
    cached = result.get("cli", {}).get("bytecode_cached", {}).get("median", {})
    installed = result.get("cli", {}).get("as_installed", {}).get("median", {})
    goal = {"in_process_p50_ms_max": GOAL_P50_MS, "in_process_p50_ms": a["p50_ms"],
            "in_process_met": a["p50_ms"] <= GOAL_P50_MS,
            "cli_startup_s_max": GOAL_CLI_STARTUP_S,
            "cli_startup_s": {"bytecode_cached": cached.get("startup_s"), "as_installed": installed.get("startup_s")},
            "cli_met": cached.get("startup_s") is not None and cached["startup_s"] <= GOAL_CLI_STARTUP_S,
            "cli_met_as_installed": (installed.get("startup_s") is not None
                                     and installed["startup_s"] <= GOAL_CLI_STARTUP_S),
            "judged": "(a) in-process p50, and (c) the CLI's start-up (median, process start to the model's URI "
                      "resolved) with bytecode caches; HTTP is reported, not judged"}
    goal["met"] = goal["in_process_met"] and goal["cli_met"]
    result["goal"] = goal
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    report(result, args.json)


def http_levels(project: Path, tracking_uri: str, model_uri: str, bodies: list[bytes], args: argparse.Namespace,
                work: Path) -> dict:
    """(b): `mlflow models serve` under 1, 4 and 8 clients, then 1 again."""
    server, port = serve(project, tracking_uri, model_uri, work / "serve.log")
    found: dict = {}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for data in bodies:  # warm-up: allocator growth, oneDNN's primitive caches
            status, answer = post(connection, data)
            if status != 200:
                raise SystemExit(f"warm-up request failed: {status} {answer[:500]!r}")
        connection.close()
        found["rss_mb_start"] = round(tree_rss_mb(server.pid), 1)
        levels = []
        # the first level again at the end: RSS that keeps growing at equal load is a leak;
        # growth with more clients is per-thread buffers (allocator arenas, TF scratch)
        plan = [*zip(args.clients, args.requests, strict=True), (args.clients[0], args.requests[0])]
        for clients, requests in plan:
            level = load_level(port, bodies, clients, requests)
            level["rss_mb_after"] = round(tree_rss_mb(server.pid), 1)
            level["load_average"] = load_average()
            levels.append(level)
            print("(b) http:", json.dumps(level), flush=True)
        found["levels"] = levels
    finally:
        stop(server)
    return found


def report(result: dict, written: Path) -> None:
    cpu, a = result["cpu"], result["in_process"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on)
    print(f"\n{result['scans']['count']} full-size scans {', '.join(result['scans']['sizes'])}; {cpu['model']}, "
          f"{cpu['cores']} cores ({flags}), TF {result['tensorflow']['version']}; load at start "
          f"{' '.join(map(str, result['load_average_start']))}")
    print(f"(a) in-process pyfunc predict, one scan, warm: p50 {a['p50_ms']} ms, p95 {a['p95_ms']} ms "
          f"({a['requests']} requests); median ms per step: {json.dumps(a['profile_ms'])}")
    if "http" in result:
        print(f"(b) HTTP {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7} "
              f"{'errors':>6} {'RSS MB':>15} {'load avg':>16}")
        before = result["http"]["rss_mb_start"]
        for lv in result["http"]["levels"]:
            rss, load = f"{before}->{lv['rss_mb_after']}", " ".join(map(str, lv["load_average"]))
            print(f"         {lv['clients']:>7} {lv['requests']:>8} {lv['p50_ms']:>8} {lv['p95_ms']:>8} "
                  f"{lv['p99_ms']:>8} "
                  f"{lv['throughput_rps']:>7} {lv['errors']:>6} {rss:>15} {load:>16}")
            before = lv["rss_mb_after"]
    if "cli" in result:
        for condition in ("as_installed", "bytecode_cached"):
            c = result["cli"][condition]
            m = c["median"]
            print(f"(c) CLI, {condition}: --help {c['help_wall_s_median']} s; predict: start-up {m['startup_s']} s, "
                  f"model load {m['model_load_s']} s, scan {m['scan_ms']} ms, first byte {m['first_byte_s']} s, "
                  f"wall {m['wall_s']} s (medians of {result['cli']['runs']})")
    goal = result["goal"]
    print(f"goal: (a) p50 <= {GOAL_P50_MS:.0f} ms: {'met' if goal['in_process_met'] else 'NOT met'}; "
          f"(c) CLI start-up <= {GOAL_CLI_STARTUP_S:.0f} s with bytecode caches: "
          f"{'met' if goal['cli_met'] else 'NOT met'}"
          f" (as installed: {'met' if goal['cli_met_as_installed'] else 'NOT met'}); written to {written}")


if __name__ == "__main__":
    main()
