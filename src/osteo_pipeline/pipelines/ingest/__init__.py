"""ingest: inventory the raw scans, resolve labels and patients, build the scan manifest."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
