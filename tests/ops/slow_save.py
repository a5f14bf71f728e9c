"""A Parquet dataset that writes half a file and then waits: a save that a signal interrupts.

Used by tests/ops/test_run_safety.py through a conf/test override in a temporary project copy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kedro_datasets.pandas import ParquetDataset


class SlowSaveParquetDataset(ParquetDataset):
    """Writes the first bytes of the version file, says so, then waits up to 60 s before saving."""

    def save(self, data: Any) -> None:
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 half-written")  # what a writer stopped half-way leaves behind
        print(f"SLOW_SAVE_STARTED {path}", flush=True)
        for _ in range(600):
            time.sleep(0.1)
        super().save(data)
