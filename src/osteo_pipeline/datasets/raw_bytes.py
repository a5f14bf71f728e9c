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


class RawReadError(DatasetError):
    """A raw file or folder the system refuses to read. ``str()`` names the path (for the
    console of whoever runs it); ``reason`` and ``code`` name no path (for reports)."""

    def __init__(self, path: str, reason: str, code: str = "unreadable"):
        super().__init__(f"Cannot read {path}: {reason}")
        self.path, self.reason, self.code = path, reason, code

    def __reduce__(self):  # picklable, e.g. across ParallelRunner processes
        return type(self), (self.path, self.reason, self.code)


def os_reason(err: OSError) -> str:
    """'permission denied', 'is a directory'...: the system's words, without the path."""
    return err.strerror.lower() if err.strerror else type(err).__name__


class RawBytesDataset(AbstractDataset[None, bytes]):
    """Loads a file's bytes; refuses to save (raw data is never modified)."""

    def __init__(self, filepath: str, fs_args: dict[str, Any] | None = None, metadata: dict | None = None):
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> bytes:
        path = get_filepath_str(self._filepath, self._protocol)
        try:
            with self._fs.open(path, "rb") as f:
                return f.read()
        except OSError as err:  # the file's problem (permission, vanished, a loop of links...)
            raise RawReadError(path, os_reason(err)) from None

    def save(self, data: bytes) -> None:
        raise DatasetError(f"Refusing to write raw data at {self._filepath}: raw scans are read-only.")

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}
