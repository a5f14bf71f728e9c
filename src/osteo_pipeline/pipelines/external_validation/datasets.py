"""Two small datasets of external_validation (declared in conf/base/catalog_external_validation.yml).

``OptionalDataset``: a read-only view of another project dataset that loads ``None`` when nothing is
saved yet. External validation reads the training manifest, split and internal test metrics when
the project has them; a project that only holds registered models (a tracking server) still runs,
and the report says what could not be compared. It always "exists", so the before-run check does
not ask for ingest, split_augment or evaluate first.

``MlflowRunRecordDataset``: write-only, logs ``{"metrics": {...}, "tags": {...}}`` on the active
MLflow run (the one kedro-mlflow opens for ``kedro run``). The class name starts with ``Mlflow``
so kedro-mlflow switches it off with its own datasets when tracking is disabled.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

logger = logging.getLogger(__name__)


class OptionalDataset(AbstractDataset[None, Any]):
    """``dataset``'s latest saved version, or ``None`` when it has none. Read-only."""

    def __init__(self, dataset: dict[str, Any], metadata: dict[str, Any] | None = None):
        config = dict(dataset)
        self._inner = AbstractDataset.from_config("optional", config)
        self.metadata = metadata

    def load(self) -> Any:
        if not self._inner.exists():
            return None
        return self._inner.load()

    def save(self, data: Any) -> None:
        raise DatasetError("read-only: external validation never writes the training data's datasets")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._inner._describe()}


class MlflowRunRecordDataset(AbstractDataset[dict[str, Any], None]):
    """Metrics (finite ones) and tags on the active MLflow run; write-only."""

    def __init__(self, metadata: dict[str, Any] | None = None):
        self._logging_activated = True  # kedro-mlflow's switch (switch_catalog_logging)
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        import mlflow

        if not self._logging_activated or mlflow.active_run() is None:
            logger.info("external_validation: no active MLflow run, nothing logged to MLflow")
            return
        metrics = {}
        for key, value in (data.get("metrics") or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                metrics[key] = number
        mlflow.log_metrics(metrics)
        mlflow.set_tags({k: str(v)[:5000] for k, v in (data.get("tags") or {}).items()})

    def load(self) -> dict[str, Any]:
        raise DatasetError("the external validation record is written to MLflow; read it with mlflow ui or MlflowClient")

    def _describe(self) -> dict[str, Any]:
        return {}
