"""MLflow bookkeeping for the training loop: nested child runs, environment, curves, models.

kedro-mlflow opens one parent run per ``kedro run``; every training here is a child of
whatever run is active (or a top-level run when there is none, e.g. in a notebook).
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")  # headless: figures only go to files
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import mlflow.sklearn  # noqa: E402
import mlflow.tensorflow  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types import Schema, TensorSpec  # noqa: E402

from osteo_pipeline.serving.card import ModelCard, fingerprint_fields, write_card  # noqa: E402
from osteo_pipeline.serving.packaging import CLASSICAL_CODE, FUSION_CODE, package_code, pinned  # noqa: E402
from osteo_pipeline.training import runtime  # noqa: E402
from osteo_pipeline.training.metrics import EPOCH_METRICS  # noqa: E402

logger = logging.getLogger(__name__)

_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "mlflow", "kedro", "kedro-mlflow", "scikit-learn", "numpy", "pandas")


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages a training result depends on."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def git_commit() -> str:
    """Commit of the code that trains (``<sha>-dirty`` with local changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def environment_tags(precision: str, strategy: str) -> dict[str, str]:
    """Tags that say what produced a run: code commit, packages, device, numerics."""
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    commit = git_commit()
    tags.update(
        {
            "mlflow.source.git.commit": commit.removesuffix("-dirty"),
            "git_commit": commit,
            "device": runtime.device_name(),
            "precision": precision,
            "strategy": strategy,
        }
    )
    return tags


def fingerprint_tags(data_fingerprint: dict[str, Any]) -> dict[str, str]:
    """Which data a run saw: each fingerprint entry as ``data.<key>`` (``data.manifest_sha256``,
    ``data.split_seed``, ``data.n_scans``, ``data.n_patients``) and ``data.fingerprint``, the first
    12 characters of the manifest hash (as report.md prints it): a short column for ``mlflow ui``
    to compare runs before and after new scans (search ``tags.`data.fingerprint` != '...'``)."""
    fingerprint = data_fingerprint or {}
    tags = {f"data.{k}": str(v) for k, v in fingerprint.items()}
    if fingerprint.get("manifest_sha256"):
        tags["data.fingerprint"] = str(fingerprint["manifest_sha256"])[:12]
    return tags


@contextmanager
def child_run(name: str, params: dict[str, Any], tags: dict[str, str], enabled: bool = True) -> Iterator[str | None]:
    """Run the body inside a (nested) MLflow run carrying ``params`` and ``tags``; yield its id."""
    if not enabled:
        yield None
        return
    with mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None, tags=tags) as run:
        mlflow.log_params(params)
        yield run.info.run_id


def parent_run_metrics(chosen: dict[str, float | None]) -> dict[str, dict[str, float]]:
    """The chosen setting's CV means as ``cv_<name>`` entries for kedro-mlflow's metrics-history
    dataset on the parent run (undefined means, e.g. AUC of one-class folds, are left out)."""
    return {f"cv_{k}": {"value": v, "step": 0} for k, v in chosen.items() if v is not None}


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite metrics to the active run (NaN, e.g. an undefined AUC, is skipped)."""
    if mlflow.active_run() is None:
        return
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, step=step)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch Keras metrics (loss, accuracy, auc and val_*) as MLflow metric histories."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        log_metrics({k: v for k, v in (logs or {}).items() if k != "learning_rate"}, step=epoch)


def training_curves_figure(history: dict[str, Sequence[float]], title: str) -> plt.Figure:
    """Loss / accuracy / (micro) AUC per epoch, training vs validation (paper Figure 5 style)."""
    names = [n for n in EPOCH_METRICS if n in history]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="training")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def log_training_curves(history: dict[str, Sequence[float]], title: str) -> None:
    """Attach the training-curve plot to the active run as ``training_curves.png``."""
    if mlflow.active_run() is None:
        return
    fig = training_curves_figure(history, title)
    mlflow.log_figure(fig, "training_curves.png")
    plt.close(fig)


# What each kind of registered model imports, pinned from the running environment (MLflow's own
# inference reloads the model in a subprocess, which costs tens of seconds per logged model).
# ``tensorflow`` is the canonical distribution whichever one is installed (packaging.pinned).
KERAS_REQUIREMENTS = ("tensorflow", "keras", "numpy")
FUSION_REQUIREMENTS = (*KERAS_REQUIREMENTS, "pandas", "scikit-learn", "scipy")  # models/fusion.py's imports
# serving + imaging: decoding (the pylibjpeg plugins: compressed DICOM), ROI detection (scipy),
# the pyfunc and its scoring server (mlflow)
SERVING_REQUIREMENTS = (*KERAS_REQUIREMENTS, "pandas", "scipy", "opencv-python-headless", "pillow", "pydicom",
                        "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "mlflow")
# models/classical.py's imports, and skops, the format MLflow saves the pipeline in
CLASSICAL_REQUIREMENTS = ("scikit-learn", "numpy", "pandas", "scipy", "scikit-image", "skops")


def _requirements() -> list[str]:
    return pinned(KERAS_REQUIREMENTS)


def _project_layers(model: keras.Model) -> dict[str, type]:
    """The project's own layer classes inside ``model`` (fusion's preprocessing), which MLflow must
    be given to reload it (their module travels in the model's ``code/``); none for CNN21 and the
    transfer models."""
    found: dict[str, type] = {}
    todo = list(model.layers)
    while todo:
        layer = todo.pop()
        todo.extend(getattr(layer, "layers", []))  # nested models (fusion's CNN21 branch and head)
        name = keras.saving.get_registered_name(type(layer))
        if name.startswith("osteo_pipeline>"):
            found[name] = type(layer)
    return found


def _serving_requirements() -> list[str]:
    """What the scan classifier's code (``serving``, ``imaging``) imports, pinned."""
    return pinned(SERVING_REQUIREMENTS)


def training_card(registered_model_name: str, class_names: Sequence[str], model_input: str) -> ModelCard:
    """The card training can write: what the active (final-fit) run says of its data, label scheme
    and backbone; evaluate completes it with the test metrics."""
    card = ModelCard(model=registered_model_name.removeprefix("osteo-"), input=model_input, classes=list(class_names))
    run = mlflow.active_run()
    if run is None:
        return card
    data = mlflow.get_run(run.info.run_id).data
    card.label_scheme = data.params.get("label_scheme")
    card.data = fingerprint_fields({k.removeprefix("data."): v for k, v in data.tags.items() if k.startswith("data.")})
    if data.tags.get("pretrained") in ("true", "false"):
        card.pretrained = data.tags["pretrained"] == "true"
    return card


def register_card(info: Any, registered_model_name: str | None, card: ModelCard) -> None:
    """Write ``card`` on the version ``info`` registered (a failure is logged, not raised: the
    model is registered already, and evaluate rewrites the card)."""
    version = getattr(info, "registered_model_version", None)
    if not registered_model_name or version is None:
        return
    try:
        write_card(mlflow.MlflowClient(), registered_model_name, version, card)
    except MlflowException as error:
        logger.warning("model card of %s version %s not written: %s", registered_model_name, version, error)


def log_keras_model(
    model: keras.Model,
    class_names: Sequence[str],
    registered_model_name: str | None,
    preprocessing: dict[str, Any] | None = None,
) -> str:
    """Log ``model`` as an MLflow model (signature, input example) and register a new version.

    With ``preprocessing`` (``serving.preprocessing_settings``: the roi_resize settings the model's
    inputs were made with) an image model is logged as a pyfunc that takes raw scan bytes and
    preprocesses them with the pipeline's own code (``serving.model``): the one ``mlflow models
    serve`` and ``osteo predict`` use. Otherwise, and for multi-input models (fusion), the plain
    Keras model is logged: input float32 images scaled to [0, 1], output one probability per
    class, in ``class_names`` order. Every registered version carries the project code it runs,
    its pinned requirements and a model card (``serving.card``).
    """
    if preprocessing is not None and not isinstance(model.input_shape, list):
        from osteo_pipeline.serving.model import log_scan_classifier
        from osteo_pipeline.serving.preprocessing import ScanPreprocessing

        settings = ScanPreprocessing.from_params(preprocessing, size=int(model.input_shape[1]))
        card = training_card(registered_model_name or "", class_names, "raw scan bytes (PNG, JPEG, TIFF or DICOM)")
        info = log_scan_classifier(model, class_names, settings, registered_model_name, _serving_requirements(),
                                   metadata={"preprocessing_code_commit": git_commit()})
        register_card(info, registered_model_name, card)
        return info.model_uri
    if isinstance(model.input_shape, list):  # several named inputs (fusion: image, covariates)
        shapes = {t.name: tuple(int(d) for d in t.shape[1:]) for t in model.inputs}
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), name) for name, shape in shapes.items()])
        example: np.ndarray | dict[str, np.ndarray] = {n: np.zeros((1, *s), dtype=np.float32) for n, s in shapes.items()}
    else:
        input_shape = tuple(int(d) for d in model.input_shape[1:])
        described = f"image {input_shape}"
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))])
        # A blank image, not a scan: patient pixels must not leave the data folders via the registry.
        example = np.zeros((1, *input_shape), dtype=np.float32)
    signature = ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(class_names)))]))
    custom_objects = _project_layers(model)
    card = training_card(registered_model_name or "", class_names, f"float32 arrays, images scaled to [0, 1]: {described}")
    # The tensorflow flavour (it saves Keras 3 models as .keras): mlflow.keras 3.17 writes the
    # input example before creating the model folder and fails.
    with package_code(FUSION_CODE if custom_objects else ()) as code_paths:
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=pinned(FUSION_REQUIREMENTS if custom_objects else KERAS_REQUIREMENTS),
            code_paths=code_paths if custom_objects else None,
            metadata={"class_names": list(class_names), "input_scaling": "uint8 / 255"},
            custom_objects=custom_objects or None,
        )
    register_card(info, registered_model_name, card)
    return info.model_uri


def log_sklearn_model(
    model: Any,
    class_names: Sequence[str],
    registered_model_name: str | None,
    input_example: np.ndarray,
    trusted_types: Sequence[str] = (),
) -> str:
    """``log_keras_model``'s sibling for scikit-learn pipelines (sklearn flavour, pyfunc = ``predict_proba``).

    ``input_example`` fixes the input's dtype and shape (its values are not logged: a blank
    array stands in, so no patient data reaches the registry); output: one probability per class.
    ``trusted_types``: what the skops format must trust to reload the model (project functions,
    sklearn internals), named one by one; the project module they live in travels in ``code/``.
    """
    example = np.zeros((1, *input_example.shape[1:]), dtype=input_example.dtype)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, len(class_names)))]),
    )
    shape = f"{example.dtype} {tuple(example.shape[1:])}"
    card = training_card(registered_model_name or "", class_names, f"{shape} arrays (the model input images)")
    with package_code(CLASSICAL_CODE) as code_paths:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=pinned(CLASSICAL_REQUIREMENTS),
            code_paths=code_paths,
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=list(trusted_types) or None,
            metadata={"class_names": list(class_names), "input": shape},
        )
    register_card(info, registered_model_name, card)
    return info.model_uri
