"""ShardedArrayDataset: model inputs saved shard by shard, loaded lazily from memory maps."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from kedro.io.core import DatasetError, Version

from osteo_pipeline.datasets import ShardedArrayDataset, ShardedImages


def chunk(start: int, n: int, size: int = 4) -> dict[str, np.ndarray]:
    images = (np.arange(start, start + n, dtype=np.uint8)[:, None, None, None]
              * np.ones((1, size, size, 3), np.uint8) + np.arange(size, dtype=np.uint8)[None, :, None, None])
    return {"scan_id": np.asarray([f"s{i:03d}" for i in range(start, start + n)]), "images": images}


def test_saves_of_one_version_append_shards_and_load_reads_rows_lazily(tmp_path):
    data = ShardedArrayDataset(filepath=str(tmp_path / "model_input_4.joblib"), version=Version(None, "v1"))
    parts = [chunk(0, 3), chunk(3, 0), chunk(3, 4), chunk(7, 2)]
    latest = ShardedArrayDataset(filepath=str(tmp_path / "model_input_4.joblib"), version=Version(None, None))
    for k, part in enumerate(parts):  # as Kedro saves a generator node's yields
        data.save({**part, "complete": k == len(parts) - 1})
        if k < len(parts) - 1:  # a version still being written (or left by a stopped run) never reads as whole
            with pytest.raises(DatasetError, match="incomplete"):
                latest.load()
    whole = {k: np.concatenate([p[k] for p in parts]) for k in ("scan_id", "images")}
    folder = tmp_path / "model_input_4.joblib" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["model_input_4.joblib"] + [
        f"model_input_4.joblib.shard-{k:05d}.npy" for k in range(3)]  # the empty part wrote no shard

    loaded = latest.load()
    images = loaded["images"]
    assert isinstance(images, ShardedImages) and images.shape == (9, 4, 4, 3) and len(images) == 9
    np.testing.assert_array_equal(loaded["scan_id"], whole["scan_id"])
    np.testing.assert_array_equal(np.asarray(images), whole["images"])
    keep = np.zeros(9, bool)
    keep[[1, 4, 8]] = True
    for key in (keep, [8, 0, 3, 3], np.array([-1, 2]), slice(2, 8, 3), 5, -2, (slice(None), 0, 1), (4, 2)):
        np.testing.assert_array_equal(images[key], whole["images"][key])
    assert not images._maps.keys() - {0, 1, 2}
    with pytest.raises(IndexError):
        images[9]
    with pytest.raises(IndexError):
        images[np.ones(3, bool)]

    # The index is still a joblib file of the same dict (tests and notebooks load it directly).
    direct = joblib.load(folder / "model_input_4.joblib")
    np.testing.assert_array_equal(direct["images"][[2, 7]], whole["images"][[2, 7]])


def test_a_new_version_starts_over_and_mismatched_shards_are_refused(tmp_path):
    path = str(tmp_path / "m.joblib")
    ShardedArrayDataset(filepath=path, version=Version(None, "v1")).save(chunk(0, 5))
    second = ShardedArrayDataset(filepath=path, version=Version(None, "v2"))
    second.save(chunk(10, 2))
    latest = ShardedArrayDataset(filepath=path, version=Version(None, None)).load()
    assert list(latest["scan_id"]) == ["s010", "s011"]
    with pytest.raises(DatasetError, match="does not match"):
        second.save(chunk(12, 1, size=5))
    with pytest.raises(DatasetError, match="scan ids"):
        second.save({"scan_id": np.asarray(["a"]), "images": np.zeros((2, 4, 4, 3), np.uint8)})
    with pytest.raises(DatasetError, match="must not exist"):  # a finished version is never overwritten
        ShardedArrayDataset(filepath=path, version=Version(None, "v1")).save(chunk(0, 1))
