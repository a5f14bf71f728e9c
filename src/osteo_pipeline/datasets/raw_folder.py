"""The raw scan folder as a lazily loaded, read-only partitioned dataset."""

from __future__ import annotations

import os
from collections.abc import Callable
from copy import deepcopy
from functools import partial
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset

from .raw_bytes import RawReadError, os_reason

EXPECTED_LAYOUT = (
    "class folders (normal/, osteopenia/, osteoporosis/) or a labels.csv with columns file,label; "
    "`make cohort` writes the synthetic default cohort into data/01_raw"
)
UNREADABLE_FOLDER = "unreadable_folder"
SYMLINK_LOOP = "symlink_loop"


class RawFolderDataset(PartitionedDataset):
    """``PartitionedDataset`` of :class:`RawBytesDataset` files that explains an empty or missing folder.

    On a local disk the folder is walked here rather than by fsspec, so that symlinked
    folders (data sets assembled from several mounts) are followed, a link back to an
    enclosing folder is not followed twice, and nothing seen is lost: a folder that cannot
    be listed, a loop, a broken link or a special file becomes a partition (id ``path/`` for
    folders) whose loader raises :class:`RawReadError`, which ingest reports as a row.
    """

    def __init__(self, path: str, **kwargs: Any):
        kwargs.setdefault("dataset", "osteo_pipeline.datasets.RawBytesDataset")
        super().__init__(path=path, **kwargs)

    def load(self) -> dict[str, Callable[[], bytes]]:
        if self._protocol != "file":
            return self._load_remote()
        root = self._local_root()
        if not os.path.lexists(root):
            raise DatasetError(f"The raw folder '{root}' does not exist. Expected {EXPECTED_LAYOUT}.")
        if not os.path.isdir(root):
            raise DatasetError(f"The raw folder '{root}' is not a folder. Expected {EXPECTED_LAYOUT}.")
        try:
            files, problems = walk(root)
        except OSError as err:
            raise DatasetError(f"The raw folder '{root}' cannot be read: {os_reason(err)}.") from None
        partitions: dict[str, Callable[[], bytes]] = {}
        for rel, path in files.items():
            config = deepcopy(self._dataset_config)
            config[self._filepath_arg] = path
            partitions[rel] = self._dataset_type(**config).load
        for rel, (reason, code) in problems.items():
            partitions[rel] = partial(_fail, os.path.join(root, rel), reason, code)
        if not partitions:
            raise DatasetError(f"The raw folder '{root}' holds no files. Expected {EXPECTED_LAYOUT}.")
        return partitions

    def save(self, data: Any) -> None:
        raise DatasetError(f"Refusing to write into the raw folder '{self._path}': raw scans are read-only.")

    def _exists(self) -> bool:
        if self._protocol != "file":
            return super()._exists()
        try:
            return bool(self.load())
        except DatasetError:
            return False

    def _local_root(self) -> str:
        return os.path.abspath(self._filesystem._strip_protocol(self._path))

    def local_root(self) -> str | None:
        """The folder's absolute path on this machine; ``None`` when it is remote (s3://, ...)."""
        return self._local_root() if self._protocol == "file" else None

    def _load_remote(self) -> dict[str, Callable[[], bytes]]:
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" not in str(err):
                raise
            raise DatasetError(f"The raw folder '{self._path}' holds no files. Expected {EXPECTED_LAYOUT}.") from None


def _fail(path: str, reason: str, code: str) -> bytes:
    raise RawReadError(path, reason, code)


def walk(root: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Files (relative id -> path) and problems (relative id -> (reason, code)) under ``root``.

    Raises:
        OSError: when ``root`` itself cannot be listed.
    """
    files: dict[str, str] = {}
    problems: dict[str, tuple[str, str]] = {}
    top = os.stat(root)
    # (folder, relative id, (device, inode) of it and its ancestors): a symlink to one of
    # those is a loop; other links to the same folder are listed again, like linked files.
    stack = [(root, "", frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            if not rel:
                raise
            problems[f"{rel}/"] = (f"folder cannot be listed: {os_reason(err)}", UNREADABLE_FOLDER)
            continue
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                stat = entry.stat()  # follows symlinks
            except OSError as err:
                broken = entry.is_symlink()
                problems[child] = (f"broken symbolic link: {os_reason(err)}" if broken else os_reason(err),
                                   "unreadable")
                continue
            if entry.is_dir():
                key = (stat.st_dev, stat.st_ino)
                if key in ancestors:
                    problems[f"{child}/"] = ("symbolic link to an enclosing folder (a loop); not followed",
                                             SYMLINK_LOOP)
                else:
                    stack.append((entry.path, child, ancestors | {key}))
            elif entry.is_file():
                files[child] = entry.path
            else:  # reading a FIFO would block the run; devices and sockets are no scans either
                problems[child] = ("not a regular file (FIFO, socket or device)", "unreadable")
    return files, problems
