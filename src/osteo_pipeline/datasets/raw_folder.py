"""The raw scan folder as a lazily loaded, read-only partitioned dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset

EXPECTED_LAYOUT = (
    "class folders (normal/, osteopenia/, osteoporosis/) or a labels.csv with columns file,label; "
    "`make cohort` writes the synthetic default cohort into data/01_raw"
)


class RawFolderDataset(PartitionedDataset):
    """``PartitionedDataset`` of :class:`RawBytesDataset` files that explains an empty or missing folder."""

    def __init__(self, path: str, **kwargs: Any):
        kwargs.setdefault("dataset", "osteo_pipeline.datasets.RawBytesDataset")
        super().__init__(path=path, **kwargs)

    def load(self) -> dict[str, Callable[[], bytes]]:
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" not in str(err):
                raise
            raise DatasetError(f"The raw folder '{self._path}' holds no files. Expected {EXPECTED_LAYOUT}.") from None

    def save(self, data: Any) -> None:
        raise DatasetError(f"Refusing to write into the raw folder '{self._path}': raw scans are read-only.")
