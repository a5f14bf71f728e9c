"""Datasets that kedro-datasets does not ship."""

from __future__ import annotations

from typing import Any

from .raw_bytes import RawBytesDataset
from .raw_folder import RawFolderDataset
from .sharded_images import ShardedArrayDataset, ShardedImages

__all__ = ["KerasModelDataset", "MlflowEvaluationDataset", "RawBytesDataset", "RawFolderDataset", "ShardedArrayDataset",
           "ShardedImages", "SklearnModelDataset"]

# Imported on first use: they pull in TensorFlow / MLflow, which ingest never needs.
_LAZY = {
    "KerasModelDataset": ".model_files",
    "SklearnModelDataset": ".model_files",
    "MlflowEvaluationDataset": ".mlflow_evaluation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
