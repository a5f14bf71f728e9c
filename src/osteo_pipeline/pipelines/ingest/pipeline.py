"""Wiring of the ``ingest`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_manifest, index_scans


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(index_scans, ["raw_scans", "params:ingest", "params:workers", "params:dask_scheduler"], "scan_index", name="index_scans"),
            Node(
                build_manifest,
                ["raw_scans", "scan_index", "params:ingest", "params:patient_id_regex", "pseudonym_key"],
                ["scan_manifest", "file_index", "ingest_report"],
                name="build_manifest",
            ),
        ]
    )
