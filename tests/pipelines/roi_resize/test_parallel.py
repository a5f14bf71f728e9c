"""ingest and roi_resize over two worker processes, or a Dask cluster, give exactly what one process
gives, in shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader

from osteo_pipeline.cohort import generate_cohort
from osteo_pipeline.datasets import RawFolderDataset
from osteo_pipeline.pipelines.ingest.nodes import build_manifest, index_scans
from osteo_pipeline.pipelines.roi_resize.nodes import collect_model_inputs, crop_and_resize

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, Any]:
    """Six small scans, and ingest and roi_resize's outputs from this process alone."""
    folder = tmp_path_factory.mktemp("parallel") / "raw"
    generate_cohort(folder, seed=3, n_normal=3, n_osteoporosis=3, scale=0.15, workers=1)
    raw = RawFolderDataset(path=str(folder)).load()  # picklable loaders, as in a run
    params = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")["parameters"]
    roi = {**params["roi_resize"], "shard_scans": 4}
    index = index_scans(raw, params["ingest"], workers=1)
    manifest, file_index, _ = build_manifest(raw, index, params["ingest"], None, "test-key")
    chunks = list(crop_and_resize(raw, manifest, file_index, roi, params["ingest"]["max_pixels"], workers=1))
    return {"raw": raw, "params": params, "roi": roi, "index": index, "manifest": manifest,
            "file_index": file_index, "chunks": chunks}


def assert_same_outputs(serial: dict[str, Any], index: pd.DataFrame, chunks: list) -> None:
    pd.testing.assert_frame_equal(index, serial["index"])
    assert [len(c[1]["scan_id"]) for c in chunks] == [len(c[1]["scan_id"]) for c in serial["chunks"]]
    for one, two in zip(collect_model_inputs(serial["chunks"]), collect_model_inputs(chunks)):
        if isinstance(one, pd.DataFrame):
            pd.testing.assert_frame_equal(two, one)
        else:
            np.testing.assert_array_equal(two["scan_id"], one["scan_id"])
            assert two["images"].tobytes() == one["images"].tobytes()


def run(serial: dict[str, Any], **where: Any) -> tuple[pd.DataFrame, list]:
    index = index_scans(serial["raw"], serial["params"]["ingest"], **where)
    chunks = list(crop_and_resize(serial["raw"], serial["manifest"], serial["file_index"], serial["roi"],
                                  serial["params"]["ingest"]["max_pixels"], **where))
    return index, chunks


@pytest.mark.slow  # two process pools start (spawn): ~10 s on 2 idle cores
def test_two_workers_give_the_same_bytes_as_one_and_shards_stay_small(serial):
    assert [len(c[1]["scan_id"]) for c in serial["chunks"]] == [4, 2]  # one yield (one saved shard) per 4 scans
    table = serial["chunks"][-1][0]
    assert len(table) == len(serial["manifest"]) and (table["roi_source"] != "failed").all()
    assert_same_outputs(serial, *run(serial, workers=2))


@pytest.mark.slow  # a two-process Dask LocalCluster starts: ~10 s
def test_a_dask_cluster_gives_the_same_bytes(serial):
    distributed = pytest.importorskip("distributed", reason="the optional extra `dask` is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert_same_outputs(serial, *run(serial, dask_scheduler=cluster.scheduler_address))
