"""The ``osteo`` command line: ``osteo predict SCAN... [--model URI] [--gradcam] [--json]``,
``osteo champion`` (the project champion's model URI) and ``osteo locate``.

``osteo predict`` loads a registered model, by default the project's champion that evaluate
chose (``serving.model.ScanClassifier``: the pipeline's own decoding, ROI crop and resize in
front of the network), and prints the label and class probabilities per scan.
A scan that cannot be read gets its own error line; the others are still classified, and the
exit code is 1 when any scan failed.

Start-up stays light: this module imports click and the standard library only; MLflow comes in
to find the model, TensorFlow (most of the wait) only to load it. ``--timings`` says where a run's
time went (bench/bench_serving.py records it).
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

# The project's champion (``serving.registry``): the registered model evaluate chose by the rule of
# ``evaluate.registry``, as ``models:/<name>@champion``; never "latest", which is merely the newest.
DEFAULT_MODEL = "champion"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # conf/base/mlflow.yml's default: the project's store
GRADCAM_SUFFIX = ".gradcam.png"
_MIN_OVERLAY_SIDE = 300  # model inputs are 150 px: enlarge the overlay so it can be read


@dataclass
class ScanResult:
    """One scan's answer (or its error), as printed and as ``--json`` writes it."""

    scan: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    roi_source: str | None = None
    roi: list[int] | None = None
    gradcam: str | None = None
    error: str | None = None


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc, 10 ms resolution), so start-up counts the
    interpreter's own start and imports too; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = int(stat[stat.rindex(")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


def _check_store(tracking_uri: str, model_uri: str) -> None:
    """Stop before MLflow creates an empty SQLite store where the project's is not."""
    if not model_uri.startswith(("models:/", "runs:/")) or not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))  # sqlite:///rel.db, sqlite:////abs/path.db
    if not path.exists():
        raise click.ClickException(
            f"no MLflow store at {path.resolve()} (tracking URI {tracking_uri}): run from the project folder, "
            "or set --tracking-uri / MLFLOW_TRACKING_URI"
        )


def _file_behind(error: BaseException) -> Path | None:
    """The innermost existing file a failed load was reading, found in its traceback's frames
    (zipfile, h5py, keras and pickle readers each hold the path or an open file there)."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    found = None
    for link in reversed(chain):  # the outermost exception's frames first, the innermost last
        tb = link.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                for candidate in (value, getattr(value, "filename", None), getattr(value, "name", None)):
                    if isinstance(candidate, (str, os.PathLike)) and 0 < len(str(candidate)) < 4096:
                        try:
                            if Path(candidate).is_file() and Path(candidate).suffix not in (".py", ".pyc"):
                                found = Path(candidate)
                        except (OSError, ValueError):
                            continue
            tb = tb.tb_next
    return found


def unreadable_model_message(model_uri: str, error: BaseException) -> str:
    """What ``osteo predict`` says when a model's files cannot be read: the file, relative to the
    project (the working folder), and the reader's own complaint."""
    from osteo_pipeline.datasets.model_files import describe_problem

    file = _file_behind(error)
    where = f"its file {os.path.relpath(file)}" if file is not None else "one of its files"
    return (f"cannot load {model_uri}: {where} is truncated or corrupt ({describe_problem(file, error)}). "
            "Re-register the model (e.g. `kedro run --pipelines=train_cnn21`) or pick another version with --model.")


def resolve_model_uri(model_uri: str, tracking_uri: str) -> str:
    """``model_uri`` itself, or for ``champion`` the project champion's ``models:/<name>@champion``."""
    if model_uri != DEFAULT_MODEL:
        return model_uri
    _check_store(tracking_uri, "models:/")
    import mlflow

    from osteo_pipeline.serving.registry import NoChampionError, project_champion

    try:
        return project_champion(mlflow.MlflowClient(tracking_uri=tracking_uri))
    except NoChampionError as error:
        raise click.ClickException(str(error)) from None


def load_classifier(model_uri: str, tracking_uri: str) -> Any:
    """The ``ScanClassifier`` behind ``model_uri`` (``champion``: the project's champion); a
    ``ClickException`` saying what went wrong."""
    _check_store(tracking_uri, model_uri)  # before the slow imports (TensorFlow)
    model_uri = resolve_model_uri(model_uri, tracking_uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    from osteo_pipeline.serving.model import ScanClassifier

    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        raise click.ClickException(f"cannot load {model_uri} from {tracking_uri}: {error}") from None
    except (ImportError, MemoryError):
        raise  # a broken install or a full machine, not a bad file
    except Exception as error:  # noqa: BLE001 - zipfile, h5py, keras, pickle: each says it its own way
        raise click.ClickException(unreadable_model_message(model_uri, error)) from None
    try:
        classifier = model.unwrap_python_model()
    except MlflowException:
        classifier = None
    if not isinstance(classifier, ScanClassifier):
        raise click.ClickException(
            f"{model_uri} does not take raw scans (a model logged before serving support, or not an image "
            "model): retrain it, e.g. `kedro run --pipelines=train_cnn21`"
        )
    return classifier


def classify_file(classifier: Any, path: Path, gradcam: bool) -> ScanResult:
    """Read, preprocess and classify one scan (and write its Grad-CAM overlay)."""
    from osteo_pipeline.imaging.decode import ScanDecodeError

    result = ScanResult(scan=str(path))
    try:
        image, roi = classifier.prepare(path.read_bytes(), name=str(path))
    except (OSError, ScanDecodeError) as error:
        result.error = str(error)
        return result
    except Exception as error:  # noqa: BLE001 - one odd file must not stop the others
        result.error = f"preprocessing failed: {type(error).__name__}: {error}"
        return result
    probabilities = classifier.probabilities(image[None])[0]
    best = int(probabilities.argmax())
    result.label = classifier.class_names[best]
    result.probabilities = {c: float(p) for c, p in zip(classifier.class_names, probabilities, strict=True)}
    result.roi_source, result.roi = roi.source, [int(v) for v in roi.box]
    if gradcam:
        target = path.with_name(path.name + GRADCAM_SUFFIX)
        try:
            write_gradcam(classifier, image, best, target)
            result.gradcam = str(target)
        except OSError as error:
            result.error = f"cannot write the Grad-CAM overlay {target}: {error}"
    return result


def write_gradcam(classifier: Any, image: Any, class_index: int, target: Path) -> None:
    """The Grad-CAM of ``class_index`` over the model input crop, as a PNG."""
    import numpy as np
    from PIL import Image

    from osteo_pipeline.evaluation.gradcam import grad_cam, overlay

    heatmap = grad_cam(classifier.network, image[None].astype(np.float32) / 255.0, class_index)[0]
    picture = Image.fromarray(np.round(overlay(image, heatmap) * 255).astype(np.uint8))
    scale = max(1, -(-_MIN_OVERLAY_SIDE // min(picture.size)))
    picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.BILINEAR).save(target)


def format_table(results: list[ScanResult], class_names: list[str]) -> str:
    """One aligned line per classified scan: scan, label, a probability per class, ROI source."""
    header = ["scan", "label", *(f"p_{c}" for c in class_names), "roi"]
    rows = [[r.scan, r.label or "", *(f"{r.probabilities[c]:.4f}" for c in class_names), r.roi_source or ""]
            for r in results if r.error is None]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {i for i in range(2, 2 + len(class_names))}
    lines = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths, strict=True))).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


@click.group()
def main() -> None:
    """osteo_pipeline's command line (the pipelines themselves run with `kedro run`)."""


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_uri", default=DEFAULT_MODEL, show_default=True,
              help="`champion` (the registered model evaluate chose, see `osteo champion`), or an MLflow model URI: "
                   "models:/<name>@<alias>, models:/<name>/<version>, runs:/<run>/model or a local folder.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=DEFAULT_TRACKING_URI, show_default=True,
              help="MLflow store holding the model [env MLFLOW_TRACKING_URI].")
@click.option("--gradcam", is_flag=True, help="Also write a Grad-CAM overlay beside each scan (<scan>.gradcam.png).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--timings", is_flag=True,
              help="Also print where the time went on stderr, as JSON: start-up (from the process's start to the "
                   "model's URI resolved), model load (TensorFlow's import, the model's files, tracing), each scan.")
def predict(scans: tuple[Path, ...], model_uri: str, tracking_uri: str, gradcam: bool, as_json: bool,
            timings: bool) -> None:
    """Classify spine DXA scans (PNG, JPEG, TIFF or DICOM) with a registered model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    begun = time.perf_counter()
    resolved = resolve_model_uri(model_uri, tracking_uri)
    startup = process_age_s()
    loading = time.perf_counter()
    if sys.stderr.isatty():  # a person waits: say on what (nothing extra in pipes and logs)
        click.echo(f"osteo predict: loading {resolved} (TensorFlow takes a few seconds to start)...", err=True)
    classifier = load_classifier(resolved, tracking_uri)
    loaded = time.perf_counter()
    results, scan_s = [], []
    for path in scans:
        start = time.perf_counter()
        results.append(classify_file(classifier, path, gradcam))
        scan_s.append(time.perf_counter() - start)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        click.echo(format_table(results, classifier.class_names))
        for r in results:
            if r.gradcam:
                click.echo(f"Grad-CAM: {r.gradcam}")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        click.echo(f"osteo predict: {r.scan}: {r.error}", err=True)
    if timings:
        figures = {
            # process start -> the model's URI known: interpreter, imports, the champion's lookup (MLflow)
            "startup_s": round(startup if startup is not None else loading - begun, 3),
            "startup_from": "process start" if startup is not None else "command start",
            "resolve_model_s": round(loading - begun, 3),
            "model_load_s": round(loaded - loading, 3),  # TensorFlow, MLflow's load, Keras, tracing
            # each scan: read, decode, ROI, window, resize, network (and its Grad-CAM, if asked)
            "scan_ms": [round(1000 * t, 1) for t in scan_s],
            "scan_ms_median": round(1000 * statistics.median(scan_s), 1) if scan_s else None,
            "total_s": round(process_age_s() or time.perf_counter() - begun, 3),
        }
        click.echo(f"osteo predict: timings {json.dumps(figures)}", err=True)
    finish(1 if failed else 0)


def finish(code: int) -> None:
    """End ``osteo predict`` with exit status ``code``.

    As the ``osteo`` console script, once its output is out, the process exits at once: the
    interpreter's teardown of TensorFlow's and MLflow's modules takes ~2 s on 2 cores and does
    nothing a finished command needs. The ``atexit`` handlers still run first (MLflow removes its
    temporary copy of the model's files there; logging flushes). Called in-process (tests, a
    notebook), it returns, or raises ``SystemExit`` for a failure, as before.
    """
    if Path(sys.argv[0]).stem == "osteo":
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # a reader that left early (`| head`): nothing more to say to it
                pass
        atexit._run_exitfuncs()
        os._exit(code)
    if code:
        raise SystemExit(code)


@main.command()
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=DEFAULT_TRACKING_URI, show_default=True,
              help="MLflow store holding the models [env MLFLOW_TRACKING_URI].")
def champion(tracking_uri: str) -> None:
    """Print the project champion's model URI (models:/<name>@champion), e.g. for
    `mlflow models serve -m "$(osteo champion)"`."""
    click.echo(resolve_model_uri(DEFAULT_MODEL, tracking_uri))


@main.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="The project folder (its data/02_intermediate/file_index.parquet is read).")
def locate(refs: tuple[str, ...], project: Path) -> None:
    """Print the raw path of each file_ref (f-...) that reports and logs name, from the local-only file index.

    For your own terminal only: the raw paths may carry patient ids, which is why reports name files by file_ref.
    """
    from kedro.io.core import Version
    from kedro_datasets.pandas import ParquetDataset

    dataset = ParquetDataset(filepath=str(project / "data/02_intermediate/file_index.parquet"), version=Version(None, None))
    if not dataset.exists():
        raise click.ClickException(f"no file index under {project}/data/02_intermediate: run `kedro run --pipelines=ingest` first")
    index = dataset.load().set_index("file_ref")
    missing = False
    for ref in refs:
        if ref not in index.index:
            click.echo(f"{ref}: not in the latest file index (another project, or an older ingest run)", err=True)
            missing = True
            continue
        row = index.loc[[ref]].iloc[0]
        reason = row.get("reason")
        click.echo(f"{ref}\t{row['status']}{f' ({reason})' if isinstance(reason, str) and reason else ''}\t{row['source']}")
    if missing:
        raise SystemExit(1)
