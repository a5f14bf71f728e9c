"""Datasets that kedro-datasets does not ship."""

from .raw_bytes import RawBytesDataset
from .raw_folder import RawFolderDataset

__all__ = ["RawBytesDataset", "RawFolderDataset"]
