"""What the evaluate stage knows about a trained model, the held-out test scans, and how each
model family turns test scans into class probabilities.

``select_test_set`` is the one function in the project that hands out test-partition scans;
every training stage sets them aside (``training.data.select_training_set``) and checks it.
``predict_proba`` is the one place that knows how each family is called, so the statistics,
figures and report never ask which kind of model they are looking at. The fusion model's
two inputs (image + clinical covariates) are handled by ``_fusion_inputs`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from osteo_pipeline.core.labels import LabelScheme
from osteo_pipeline.core.leakage import LeakageError, assert_patients_disjoint
from osteo_pipeline.training.metrics import EPOCH_METRICS

FAMILIES = ("cnn21", "transfer", "classical", "fusion")
logger = logging.getLogger(__name__)

REFERENCE = "cnn21"  # the study's own model (train_cnn21); every other model is a baseline
TEST_PARTITION = "test"


def declared_families(train_baselines: Mapping[str, Any]) -> dict[str, str]:
    """Every model of the study -> its family, in report order: CNN21, then each block of the
    ``train_baselines`` parameters that has a ``family`` (the one declaration of the baselines)."""
    families = {REFERENCE: "cnn21"}
    for name, block in train_baselines.items():
        if isinstance(block, Mapping) and "family" in block:
            if block["family"] not in FAMILIES[1:]:
                raise ValueError(f"train_baselines.{name}: unknown family {block['family']!r}; use one of {FAMILIES[1:]}")
            families[str(name)] = str(block["family"])
    return families


def model_artifacts(name: str, family: str) -> dict[str, str]:
    """The catalog datasets evaluate reads for one model (its training pipeline's outputs)."""
    if family == "cnn21":
        return {what: f"cnn21_{what}" for what in ("model", "final_fit", "cv_summary", "fold_metrics")}
    model = f"{name}.sklearn_model" if family == "classical" else f"{name}.model"
    return {"model": model, **{what: f"{name}.{what}" for what in ("final_fit", "cv_summary", "fold_metrics", "baseline_info")}}


@dataclass(frozen=True)
class NotTrained:
    """What evaluate gets for a model artifact that no run has saved yet (the model is then missing)."""

    dataset: str


@dataclass
class TrainedModel:
    """One trained model and the reports its training stage wrote (latest saved versions, as the
    catalog loads them)."""

    name: str
    family: str  # one of FAMILIES
    model: Any  # keras.Model, or a fitted sklearn pipeline (classical)
    final_fit: dict[str, Any]
    cv_summary: dict[str, Any] = field(default_factory=dict)
    fold_metrics: pd.DataFrame | None = None
    baseline_info: dict[str, Any] | None = None
    history: dict[str, list[float]] | None = None  # final fit, per epoch: loss, val_loss, ...

    @property
    def class_names(self) -> list[str]:
        names = self.final_fit.get("class_names") or (self.baseline_info or {}).get("class_names")
        return list(names or [])

    @property
    def pretrained(self) -> bool | None:
        """Transfer models: whether the backbone had ImageNet weights; None for other families."""
        for source in (self.baseline_info or {}, self.final_fit, self.cv_summary):
            if "pretrained" in source:
                return bool(source["pretrained"])
        return None

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in (self.baseline_info or {}).get("warnings", [])]

    def chosen_fold_metrics(self) -> pd.DataFrame:
        """The CV rows of the setting the model was finally fitted with (one row per fold)."""
        table = self.fold_metrics
        if table is None or table.empty:
            return pd.DataFrame()
        if "best_setting" in self.cv_summary and "setting" in table:
            rows = table[table["setting"].astype(str) == str(self.cv_summary["best_setting"])]
        elif "best_learning_rate" in self.cv_summary and "learning_rate" in table:
            rate = float(self.cv_summary["best_learning_rate"])
            rows = table[np.isclose(table["learning_rate"].astype(float), rate, rtol=1e-9, atol=0.0)]
        else:
            rows = table
        return rows.sort_values("fold").reset_index(drop=True)


@dataclass(frozen=True)
class TestSet:
    """The held-out test scans of one label scheme, aligned row by row."""

    scan_ids: np.ndarray
    patient_ids: np.ndarray
    labels: np.ndarray  # int index into class_names
    class_names: tuple[str, ...]
    images: dict[int, np.ndarray]  # input size -> uint8 (N, S, S, 3)
    manifest: pd.DataFrame  # the scans' manifest rows (clinical columns), in scan_id order
    counts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scan_ids)

    def images_at(self, size: int) -> np.ndarray:
        if size not in self.images:
            raise ValueError(f"no {size}-px test images (have {sorted(self.images)}): is model_input_{size} in the catalog?")
        return self.images[size]


def select_test_set(
    model_inputs: Mapping[int, dict[str, np.ndarray]],
    split_table: pd.DataFrame,
    scan_manifest: pd.DataFrame,
    label_scheme: str | LabelScheme,
) -> TestSet:
    """The test-partition scans of ``label_scheme`` at every input size: THE ONLY read of test scans.

    Training stages never see these scans (they select the train/val partition and assert it);
    this is where the held-out partition is opened, once, for evaluation. Never augmented.
    Patients are checked to sit in one partition only, and every size must hold the same scans.
    """
    scheme = LabelScheme.of(label_scheme)
    assert_patients_disjoint(split_table)
    class_names = scheme.classes
    table = split_table.assign(scan_id=split_table["scan_id"].astype(str)).set_index("scan_id")
    wanted = table[(table["partition"] == TEST_PARTITION) & table["label"].isin(class_names)]
    if wanted.empty:
        raise ValueError(f"the split table holds no test-partition scans of {list(class_names)}")
    order = np.sort(wanted.index.to_numpy())
    images: dict[int, np.ndarray] = {}
    for size, model_input in model_inputs.items():
        ids = pd.Index(np.asarray(model_input["scan_id"]).astype(str))
        position = pd.Series(np.arange(len(ids)), index=ids)
        missing = pd.Index(order).difference(ids)
        if len(missing):
            raise ValueError(f"{len(missing)} test scans are missing from model_input_{size}, e.g. {list(missing[:3])}")
        # Only the test rows are read (the model input may be a lazy, memory-mapped ShardedImages).
        images[int(size)] = np.asarray(model_input["images"][position.loc[order].to_numpy()])
    rows = wanted.loc[order]
    manifest = scan_manifest.assign(scan_id=scan_manifest["scan_id"].astype(str)).drop_duplicates("scan_id")
    manifest = manifest.set_index("scan_id").reindex(pd.Index(order, name="scan_id")).reset_index()
    excluded = table[(table["partition"] == TEST_PARTITION) & ~table["label"].isin(class_names)]
    return TestSet(
        scan_ids=order,
        patient_ids=rows["patient_id"].astype(str).to_numpy(),
        labels=rows["label"].map(scheme.index()).to_numpy(dtype=np.int64),
        class_names=class_names,
        images=images,
        manifest=manifest,
        counts={
            "label_scheme": scheme.name,
            "n_test_scans": len(order),
            "n_test_patients": int(rows["patient_id"].nunique()),
            "class_counts": rows["label"].value_counts().reindex(class_names, fill_value=0).astype(int).to_dict(),
            "n_excluded_out_of_scheme": len(excluded),
        },
    )


def assert_not_trained_on(model: TrainedModel, test: TestSet) -> None:
    """Raise ``LeakageError`` if a scan or patient the model trained or early-stopped on is a test one.

    The split cannot be re-derived from a saved model; what the reports name is checked here
    (the final fit's early-stopping patients); ``check_models`` compares data fingerprints.
    """
    seen = set(map(str, model.final_fit.get("val_patients", []) or []))
    if leaked := seen.intersection(map(str, test.patient_ids)):
        raise LeakageError(f"{model.name}: {len(leaked)} test patient(s) were in its early-stopping set, e.g. {sorted(leaked)[0]}")


# ------------------------------------------------------------------------------------ prediction


def _keras_input_size(model: Any) -> int:
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError("a multi-input Keras model is not an image model")
    return int(shape[1])


def _fusion_inputs(model: TrainedModel, test: TestSet) -> dict[str, np.ndarray]:
    """The fusion network's two inputs, as ``fusion.baseline_info`` describes them: ``image`` (the
    150-px scans scaled to [0, 1]) and ``covariates`` (raw, NaN where unknown, imputed in-model)."""
    from osteo_pipeline.models.fusion import clinical_table  # registers the fusion layers too

    inputs = (model.baseline_info or {}).get("inputs", {})
    columns = inputs.get("covariates", {}).get("columns") or model.final_fit.get("covariates")
    if not columns:
        raise ValueError("fusion: neither baseline_info nor final_fit names the covariate columns")
    image_shape = inputs.get("image", {}).get("shape") or list(model.model.input_shape[0][1:])
    covariates = clinical_table(test.manifest, test.scan_ids, list(columns)).to_numpy(np.float32)
    images = test.images_at(int(image_shape[0])).astype(np.float32) / 255.0
    return {"image": images, "covariates": covariates}


def predict_proba(model: TrainedModel, test: TestSet, batch_size: int = 16) -> np.ndarray:
    """(N, K) class probabilities of the test scans, columns in ``test.class_names`` order.

    Keras image models (CNN21, transfer): float32 images in [0, 1] at the model's input size.
    Classical: the sklearn pipeline's ``predict_proba`` on uint8 images. Fusion: see ``_fusion_inputs``.
    """
    if list(model.class_names) != list(test.class_names):
        raise ValueError(f"{model.name} was trained on classes {model.class_names}, the test set has {list(test.class_names)}")
    k = len(test.class_names)
    if model.family == "classical":
        from osteo_pipeline.models.classical import full_probabilities

        shape = ((model.baseline_info or {}).get("input") or {}).get("shape") or [150]
        proba = full_probabilities(model.model, test.images_at(int(shape[0])), k)
    elif model.family == "fusion":
        proba = model.model.predict(_fusion_inputs(model, test), batch_size=batch_size, verbose=0)
    else:
        images = test.images_at(_keras_input_size(model.model)).astype(np.float32) / 255.0
        proba = model.model.predict(images, batch_size=batch_size, verbose=0)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(test), k):
        raise ValueError(f"{model.name}: predictions have shape {proba.shape}, expected {(len(test), k)}")
    return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax rows miss 1 by ~1e-7


def predictions_table(model_name: str, test: TestSet, proba: np.ndarray) -> pd.DataFrame:
    """One row per test scan: scan id, patient id, true label, one probability column per class
    (``p_<class>``), the arg-max prediction and whether it is right."""
    names = np.asarray(test.class_names, dtype=object)
    table = pd.DataFrame({
        "model": model_name,
        "scan_id": test.scan_ids,
        "patient_id": test.patient_ids,
        "label": names[test.labels],
        **{f"p_{c}": proba[:, i] for i, c in enumerate(test.class_names)},
        "prediction": names[proba.argmax(axis=1)],
    })
    table["correct"] = table["label"] == table["prediction"]
    return table


def proba_columns(class_names: Sequence[str]) -> list[str]:
    return [f"p_{c}" for c in class_names]


# ------------------------------------------------------------------------------------ history

# Per-epoch metrics of a final-fit MLflow run (training.tracking.MlflowEpochLogger).
HISTORY_KEYS = (*EPOCH_METRICS, *(f"val_{m}" for m in EPOCH_METRICS))


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
