"""``ingest_report.json`` describes the run that last ran ingest, also when ingest stopped.

Without this, a run that fails in ingest (bad labels CSV, a class with no usable scan, no
usable scan at all, an unreadable raw folder) leaves the previous run's report in place,
and it reads as this run's. Saved through the catalog, like the report itself.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)

REPORT = "ingest_report"


class IngestReportHook:
    """On a failed run that was to write the ingest report and had not yet: save a failed report
    (``status: failed``, the error, and what ingest had found when the error carries it)."""

    def __init__(self) -> None:
        self._pending = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog) -> None:
        self._pending = REPORT in pipeline.all_outputs()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        if dataset_name == REPORT:
            self._pending = False

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Pipeline,
                          catalog: DataCatalog) -> None:
        if not self._pending:
            return
        self._pending = False
        # IngestError carries the report built so far (file_refs only, never raw paths).
        found = {k: v for k, v in (getattr(error, "report", None) or {}).items() if k != "status"}
        report = {"status": "failed", "error": f"{type(error).__name__}: {error}", **found}
        try:
            catalog.save(REPORT, report)
        except Exception as save_error:  # noqa: BLE001 - never hide the run's own error behind this one
            logger.warning("ingest: could not write the failed ingest report: %s", save_error)
