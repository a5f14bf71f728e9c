"""Write-only dataset: the evaluate stage's metrics into MLflow, per model and on the parent run.

Saving ``{"parent_metrics": {"cnn21.test_auc": 0.9, ...}, "runs": {"cnn21": {"metrics": {...},
"params": {...}, "tags": {...}}, ...}}`` logs the parent metrics on the active run (the one
kedro-mlflow opens for ``kedro run``) and opens one nested child run per model
(``evaluate-<model>``) carrying the shared metric names (``test_auc``, ``test_accuracy``...),
so ``mlflow ui``'s compare view lines the models up. The class name starts with ``Mlflow`` so
kedro-mlflow switches it off with the rest of its datasets when tracking is disabled.
Without an active run (a notebook, tracking off) nothing is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from osteo_pipeline.core.metrics import finite_or_none

logger = logging.getLogger(__name__)


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics MLflow can store: finite numbers only."""
    return {key: number for key, value in metrics.items() if (number := finite_or_none(value)) is not None}


class MlflowEvaluationDataset(AbstractDataset[dict[str, Any], None]):
    """Per-model child runs plus parent-run metrics; write-only."""

    def __init__(self, run_name_prefix: str = "evaluate", metadata: dict[str, Any] | None = None):
        self._prefix = run_name_prefix
        self._logging_activated = True  # kedro-mlflow's switch (switch_catalog_logging)
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        parent = mlflow.active_run()
        if not self._logging_activated or parent is None:
            logger.info("evaluate: no active MLflow run, metrics not logged to MLflow")
            return
        client = MlflowClient()
        parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
        for key, value in _finite(data.get("parent_metrics", {})).items():
            client.log_metric(parent_id, key, value)
        for model, run in data.get("runs", {}).items():
            name = f"{self._prefix}-{model}"
            tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: name, "stage": "evaluate", "model": model,
                    **{k: str(v) for k, v in (run.get("tags") or {}).items()}}
            child = client.create_run(experiment_id, tags=tags, run_name=name)
            run_id = child.info.run_id
            try:
                for key, value in (run.get("params") or {}).items():
                    client.log_param(run_id, key, str(value)[:6000])
                for key, value in _finite(run.get("metrics") or {}).items():
                    client.log_metric(run_id, key, value)
            except Exception:
                client.set_terminated(run_id, status="FAILED")
                raise
            client.set_terminated(run_id)

    def load(self) -> dict[str, Any]:
        raise DatasetError("evaluation metrics are written to MLflow; read them with mlflow ui or MlflowClient")

    def _describe(self) -> dict[str, Any]:
        return {"run_name_prefix": self._prefix}
