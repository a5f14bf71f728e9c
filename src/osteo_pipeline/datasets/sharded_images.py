"""Model inputs as memory-mapped shards: one versioned dataset, read lazily.

A version of ``model_input_{size}`` is a folder ``<filepath>/<version>/`` holding

- ``<name>`` (e.g. ``model_input_150.joblib``): the index, a small joblib pickle of
  ``{"scan_id": (N,) str, "images": ShardedImages}``;
- ``<name>.shard-00000.npy``, ...: the images, uint8 ``(n_i, S, S, 3)`` arrays in plain ``.npy``.

``load`` returns the index with :class:`ShardedImages` in place of one big array: it has the
array's ``shape``, ``dtype`` and ``len`` and reads only the rows an index asks for
(``images[keep]``, ``images[i]``, ``images[a:b]``) from memory maps, so 100,000 scans at 300 px
(27 GB) never have to fit in memory, and a consumer that needs 30 test scans reads 30.
``np.asarray(images)`` still gives the whole array (for small sets and old code).

Every ``save`` within one save version appends a shard, so a generator node (``crop_and_resize``)
hands over one shard at a time and Kedro saves each as it comes. A save of
``{"scan_id", "images", "complete": False}`` writes its shard and a small "incomplete" index; the
whole index is written (atomically) by a save without ``complete`` or with ``complete: True``, the
stream's last (so the index is not rewritten with every shard). Loading an incomplete version
raises: a run that stops half-way leaves no half of a dataset that reads as whole (and the run
guard removes it). The index is a joblib file, as the model
inputs were before: ``joblib.load(index)`` gives the same dict (its shards are found where they
were written).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import joblib
import numpy as np
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path


class ShardedImages:
    """A read-only, lazily read array over ``.npy`` shards concatenated along the first axis."""

    def __init__(self, folder: str, shards: list[str], counts: list[int], item_shape: tuple[int, ...], dtype: str):
        self.folder = folder
        self.shards = list(shards)
        self.counts = [int(c) for c in counts]
        self.item_shape = tuple(int(d) for d in item_shape)
        self.dtype = np.dtype(dtype)
        self._starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self.item_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedImages(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.load(os.path.join(self.folder, self.shards[k]), mmap_mode="r")
        return self._maps[k]

    def _rows(self, key: Any) -> tuple[np.ndarray, bool]:
        """(row numbers, whether the first axis is dropped) of a first-axis index."""
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if int(key) < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} is out of bounds for axis 0 with size {n}")
            return np.asarray([i], dtype=np.int64), True
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64), False
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} does not match {n} rows")
            return np.flatnonzero(rows).astype(np.int64), False
        if rows.size == 0:
            return np.zeros(0, dtype=np.int64), False
        if not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"only integers, slices and boolean or integer arrays index rows, not {rows.dtype}")
        rows = np.where(rows < 0, rows + n, rows).astype(np.int64)
        if rows.min() < 0 or rows.max() >= n:
            raise IndexError(f"row index out of bounds for axis 0 with size {n}")
        return rows, False

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows, drop = self._rows(first)
        out = np.empty((len(rows), *self.item_shape), dtype=self.dtype)
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(shard):
            here = shard == k
            out[here] = self._map(int(k))[rows[here] - self._starts[k]]
        if drop:
            return out[0][rest] if rest else out[0]
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened where the object is loaded
        return state


class ShardedArrayDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    """``{"scan_id", "images"}`` saved shard by shard, loaded as :class:`ShardedImages` (see the module)."""

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"ShardedArrayDataset memory-maps its shards: it needs a local path, not {protocol}://")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(PurePosixPath(path), version, exists_function=os.path.exists, glob_function=_glob)
        # (save version, index path, shard names, counts, scan ids, item shape, dtype) of the
        # version being written: later saves of the same version append to it. Only the scan ids
        # of the shards are kept here (64 bytes a scan), never their images.
        self._writing: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        index = Path(get_filepath_str(self._get_load_path(), self._protocol))
        data = joblib.load(index)
        if not data.get("complete", True):
            raise DatasetError(f"{index.parent} is incomplete: the run writing it stopped after {data['shards']} "
                               "shard(s). Run roi_resize again (or load an earlier version).")
        data["images"].folder = str(index.parent)  # wherever the version folder is now
        return data

    def save(self, data: dict[str, Any]) -> None:
        ids = np.asarray(data["scan_id"]).astype(str)
        images = np.asarray(data["images"])
        if images.ndim < 1 or len(images) != len(ids):
            raise DatasetError(f"model input: {len(ids)} scan ids for images of shape {images.shape}")
        version = self.resolve_save_version()
        state = self._writing
        if state is None or state["version"] != version:
            index = Path(get_filepath_str(self._get_save_path(), self._protocol))
            if version is None and index.parent.exists():  # unversioned: a new save replaces the old one
                for old in index.parent.glob(f"{index.name}*"):
                    old.unlink()
            index.parent.mkdir(parents=True, exist_ok=True)
            state = {"version": version, "index": index, "shards": [], "counts": [], "ids": [],
                     "item": tuple(images.shape[1:]), "dtype": images.dtype.str}
        if tuple(images.shape[1:]) != state["item"] or images.dtype.str != state["dtype"]:
            raise DatasetError(f"model input shard of {images.shape[1:]} {images.dtype} does not match the "
                               f"earlier shards' {state['item']} {np.dtype(state['dtype'])}")
        index: Path = state["index"]
        if len(ids):
            name = f"{index.name}.shard-{len(state['shards']):05d}.npy"
            _replace(index.parent / name, lambda f: np.save(f, np.ascontiguousarray(images), allow_pickle=False))
            state["shards"].append(name)
            state["counts"].append(len(ids))
            state["ids"].append(ids)
        self._writing = state
        if not data.get("complete", True):  # more shards to come: the whole index comes with the last one
            _replace(index, lambda f: joblib.dump({"complete": False, "shards": len(state["shards"])}, f))
            return
        all_ids = np.concatenate(state["ids"]) if state["ids"] else np.zeros(0, dtype="<U1")
        lazy = ShardedImages(str(index.parent), state["shards"], state["counts"], state["item"], state["dtype"])
        _replace(index, lambda f: joblib.dump({"scan_id": all_ids, "images": lazy}, f))

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return os.path.exists(get_filepath_str(path, self._protocol))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern)


def _replace(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file renamed over it: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


__all__ = ["ShardedArrayDataset", "ShardedImages"]
