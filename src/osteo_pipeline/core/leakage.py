"""Run-time leakage guards, called by the pipelines themselves (not only by tests)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


class LeakageError(AssertionError):
    """Data from one partition reached another."""


def assert_patients_disjoint(split_table: pd.DataFrame) -> None:
    """No patient may appear in two partitions, nor in two CV folds."""
    parts = split_table.groupby("patient_id")["partition"].nunique()
    if (bad := parts[parts > 1]).size:
        raise LeakageError(f"{bad.size} patient(s) appear in more than one partition, e.g. {bad.index[0]}")
    train = split_table[split_table["partition"] == "train"]
    folds = train.groupby("patient_id")["fold"].nunique()
    if (bad := folds[folds > 1]).size:
        raise LeakageError(f"{bad.size} patient(s) appear in more than one CV fold, e.g. {bad.index[0]}")


def assert_not_in_partition(scan_ids: Iterable[str], split_table: pd.DataFrame, partition: str = "test") -> None:
    """Raise if any of ``scan_ids`` belongs to ``partition`` (by default the held-out test set)."""
    held_out = set(split_table.loc[split_table["partition"] == partition, "scan_id"])
    if leaked := held_out.intersection(scan_ids):
        raise LeakageError(f"{len(leaked)} {partition}-partition scan(s) reached a step that must not see them")
