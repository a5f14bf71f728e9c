"""Read-only dataset for one raw file, returned as bytes.

Used as the per-file dataset of a ``partitions.PartitionedDataset`` over the raw folder:
decoding happens in the node (``imaging.decode``), so an unreadable scan becomes a
reported row instead of an exception inside the data catalog, and the raw file is
never opened for writing.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path


class RawBytesDataset(AbstractDataset[None, bytes]):
    """Loads a file's bytes; refuses to save (raw data is never modified)."""

    def __init__(self, filepath: str, fs_args: dict[str, Any] | None = None, metadata: dict | None = None):
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> bytes:
        with self._fs.open(get_filepath_str(self._filepath, self._protocol), "rb") as f:
            return f.read()

    def save(self, data: bytes) -> None:
        raise DatasetError(f"Refusing to write raw data at {self._filepath}: raw scans are read-only.")

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}
