"""Read-only collection of whatever models have been trained, for the evaluate stage.

Each training stage saves its model and reports as versioned catalog datasets
(``data/06_models/<model>.keras|.pkl/<version>/...``, ``data/08_reporting/<model>_final_fit.json/...``).
Declaring every model as a required input would stop ``kedro run --pipelines=evaluate`` after
``train_cnn21`` alone (the before-run hook refuses missing inputs), so this one dataset loads
the latest saved version of each expected model that exists and lists the others as missing.
It exists once the required models (CNN21) are there. File names follow the training catalogs
(conf/base/catalog_train_cnn21.yml, catalog_train_baselines.yml); loading goes through the same
kedro-datasets classes those catalogs use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError, Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.pickle import PickleDataset

from osteo_pipeline.evaluation.models import FAMILIES, ModelCollection, TrainedModel
from osteo_pipeline.training.metrics import EPOCH_METRICS

logger = logging.getLogger(__name__)

# Per-epoch metrics of a final-fit MLflow run (training.tracking.MlflowEpochLogger).
HISTORY_KEYS = (*EPOCH_METRICS, *(f"val_{m}" for m in EPOCH_METRICS))
MODEL_SUFFIXES = (".keras", ".pkl")


def _latest(dataset: AbstractDataset) -> tuple[Any, str] | None:
    """(data, version) of a versioned dataset's latest version, or None if none is saved."""
    if not dataset.exists():
        return None
    return dataset.load(), dataset.resolve_load_version()


def _root_cause(error: BaseException) -> BaseException:
    while (inner := error.__cause__ or error.__context__) is not None and inner is not error:
        error = inner
    return error


def describe_problem(path: str | os.PathLike | None, error: BaseException) -> str:
    """What is wrong with the file itself, when that can be told (Keras files are zip archives);
    else what its reader said. Shared with ``osteo predict``."""
    import zipfile

    if path is None:
        root = _root_cause(error)
        return f"{type(root).__name__}: {root}"
    try:
        size = os.path.getsize(path)
    except OSError as failed:
        return f"{type(failed).__name__}: {failed}"
    if size == 0:
        return "the file is empty (0 bytes)"
    if str(path).endswith(".keras"):
        if not zipfile.is_zipfile(path):
            return f"not a complete .keras zip archive ({size} bytes)"
        try:
            with zipfile.ZipFile(path) as archive:
                if (bad := archive.testzip()) is not None:
                    return f"member {bad} of the archive is damaged"
        except (zipfile.BadZipFile, OSError, EOFError) as failed:
            return f"damaged zip archive ({failed})"
    root = _root_cause(error)
    return f"{type(root).__name__}: {root}"


def unreadable_model_message(path: str | os.PathLike, error: BaseException) -> str:
    """``model file <path relative to the project> cannot be read: it is truncated or corrupt (...)``,
    with what to do; the reader's own traceback (zipfile, h5py, pickle) names neither."""
    shown = os.path.relpath(path) if os.path.isabs(path) else str(path)
    return (f"model file {shown} cannot be read: it is truncated or corrupt ({describe_problem(path, error)}). "
            f"Retrain the model, or delete {os.path.dirname(shown)}/ to use its previous version.")


def load_model_file(dataset: AbstractDataset) -> Any:
    """``dataset.load()``; a model file that cannot be read raises a ``DatasetError`` naming it."""
    try:
        return dataset.load()
    except Exception as error:
        if isinstance(_root_cause(error), (ImportError, MemoryError)):
            raise  # a broken install or a full machine, not a bad file
        raise DatasetError(unreadable_model_message(str(dataset._get_load_path()), error)) from error


def mlflow_history(run_id: str | None, keys: Sequence[str] = HISTORY_KEYS) -> dict[str, list[float]] | None:
    """Per-epoch metric histories of an MLflow run (tracking URI as configured); None if unavailable.

    The loop logs the restored best weights' sklearn ``val_*`` once more after the last epoch;
    that extra point is dropped so every curve has one value per epoch.
    """
    if not run_id:
        return None
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        history = {}
        for key in keys:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
            if points:
                history[key] = [float(m.value) for m in points]
    except Exception as error:  # noqa: BLE001 - a missing store or run only costs the curves
        logger.info("no training history for MLflow run %s (%s)", run_id, error)
        return None
    epochs = len(history.get("loss", []))
    return {k: v[:epochs] for k, v in history.items()} if epochs else None


class TrainedModelsDataset(AbstractDataset[None, ModelCollection]):
    """The latest trained version of every expected model that exists (read-only).

    Args:
        families: model name -> family (``cnn21``, ``transfer``, ``classical``, ``fusion``), in
            report order. Files: ``<models_dir>/<name>.keras`` or ``.pkl``,
            ``<reporting_dir>/<name>_final_fit.json``, ``_cv_summary.json``, ``_fold_metrics.csv``,
            ``_baseline_info.json`` (each a versioned folder).
        required: models without which the dataset does not exist (default: cnn21).
        history_from_mlflow: read each final fit's per-epoch curves from its MLflow run when its
            report does not hold them (``history``).
    """

    def __init__(
        self,
        families: Mapping[str, str],
        models_dir: str = "data/06_models",
        reporting_dir: str = "data/08_reporting",
        required: Sequence[str] = ("cnn21",),
        history_from_mlflow: bool = True,
        metadata: dict[str, Any] | None = None,
    ):
        unknown = {f for f in families.values() if f not in FAMILIES}
        if unknown:
            raise DatasetError(f"unknown model families {sorted(unknown)}: use {FAMILIES}")
        if missing := set(required) - set(families):
            raise DatasetError(f"required models {sorted(missing)} are not in families")
        self._families = dict(families)
        self._models_dir = Path(models_dir)
        self._reporting_dir = Path(reporting_dir)
        self._required = list(required)
        self._history_from_mlflow = history_from_mlflow
        self.metadata = metadata

    # ------------------------------------------------------------------ per-model files

    def _report(self, name: str, what: str, kind: type[AbstractDataset]) -> AbstractDataset:
        suffix = ".csv" if kind is CSVDataset else ".json"
        return kind(filepath=str(self._reporting_dir / f"{name}_{what}{suffix}"), version=Version(None, None))

    def _model_dataset(self, name: str) -> AbstractDataset | None:
        """The model's versioned dataset (Keras or pickle), whichever has a saved version."""
        from kedro_datasets.tensorflow import TensorFlowModelDataset

        for suffix in MODEL_SUFFIXES:
            path = str(self._models_dir / f"{name}{suffix}")
            ds = (TensorFlowModelDataset(filepath=path, version=Version(None, None)) if suffix == ".keras"
                  else PickleDataset(filepath=path, backend="pickle", version=Version(None, None)))
            if ds.exists():
                return ds
        return None

    def _is_trained(self, name: str) -> bool:
        return self._model_dataset(name) is not None and self._report(name, "final_fit", JSONDataset).exists()

    def _load_one(self, name: str) -> TrainedModel:
        family = self._families[name]
        if family == "fusion":
            import osteo_pipeline.models.fusion  # noqa: F401 - registers the fusion network's own layers

        model_ds = self._model_dataset(name)
        model, model_version = load_model_file(model_ds), model_ds.resolve_load_version()
        versions = {"model": model_version}
        loaded: dict[str, Any] = {}
        for what, kind in (("final_fit", JSONDataset), ("cv_summary", JSONDataset),
                           ("fold_metrics", CSVDataset), ("baseline_info", JSONDataset)):
            found = _latest(self._report(name, what, kind))
            if found is not None:
                loaded[what], versions[what] = found
        final_fit = loaded.get("final_fit") or {}
        history = final_fit.get("history")
        if history is None and self._history_from_mlflow and family != "classical":
            history = mlflow_history(final_fit.get("mlflow_run_id"))
        return TrainedModel(
            name=name, family=family, model=model, final_fit=final_fit,
            cv_summary=loaded.get("cv_summary") or {}, fold_metrics=loaded.get("fold_metrics"),
            baseline_info=loaded.get("baseline_info"), history=history, versions=versions,
        )

    # ------------------------------------------------------------------ AbstractDataset

    def load(self) -> ModelCollection:
        models: dict[str, TrainedModel] = {}
        missing: dict[str, str] = {}
        for name in self._families:
            if not self._is_trained(name):
                missing[name] = f"not trained yet (no saved model and final-fit report under {self._models_dir.parent})"
                continue
            try:
                models[name] = self._load_one(name)
            except Exception as error:
                if name in self._required:
                    raise DatasetError(f"cannot load the required model {name}: {error}") from error
                logger.warning("evaluate: %s could not be loaded and is left out (%s)", name, error)
                missing[name] = f"could not be loaded: {type(error).__name__}: {error}"
        if absent := [n for n in self._required if n not in models]:
            raise DatasetError(
                f"required model(s) {absent} not trained yet: run `kedro run --pipelines=train_cnn21` first"
            )
        return ModelCollection(models=models, missing=missing, families=dict(self._families))

    def save(self, data: Any) -> None:
        raise DatasetError("trained_models is read-only: models are saved by the training pipelines")

    def _exists(self) -> bool:
        return all(self._is_trained(name) for name in self._required)

    def _describe(self) -> dict[str, Any]:
        return {"families": self._families, "models_dir": str(self._models_dir),
                "reporting_dir": str(self._reporting_dir), "required": self._required}
