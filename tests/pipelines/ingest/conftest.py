"""Fixtures for the ingest tests: tiny generated raw folders and a one-call ingest runner.

Helpers are fixtures (not imports): ``conftest`` is not importable by name next to tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from osteo_pipeline.datasets import RawFolderDataset

from osteo_pipeline.pipelines.ingest.nodes import build_manifest, index_scans

REPO = Path(__file__).resolve().parents[3]
KNEE = REPO.parent / "shared" / "datasets" / "knee-xray-3class"
TEST_KEY = "test-secret"


@pytest.fixture
def ref() -> Callable[[str], str]:
    """The file_ref of a raw-folder path under ``TEST_KEY``."""
    from osteo_pipeline.pipelines.ingest.privacy import file_ref

    return lambda path: file_ref(path, TEST_KEY)


def _load_params(runtime_params: dict[str, Any] | None = None) -> dict[str, Any]:
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base",
                               runtime_params=runtime_params or {})
    return loader["parameters"]


@pytest.fixture
def load_params() -> Callable[..., dict[str, Any]]:
    """All parameters from the real conf/base (so the YAML itself is under test)."""
    return _load_params


@pytest.fixture
def ingest_params() -> dict[str, Any]:
    return _load_params()["ingest"]


@pytest.fixture
def knee_dir() -> Path:
    """The real, messy knee X-ray set from ../shared (present in CI)."""
    if not KNEE.is_dir():
        pytest.skip(f"{KNEE} not present")
    return KNEE


@pytest.fixture
def write_scan(tmp_path: Path) -> Callable[..., Path]:
    """Write a small PNG with content unique to ``seed`` under tmp_path/raw."""

    def write(rel: str, seed: int, shape: tuple[int, int] = (20, 30)) -> Path:
        path = tmp_path / "raw" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        assert cv2.imwrite(str(path), pixels)
        return path

    return write


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    def write(rel: str, content: bytes | str) -> Path:
        path = tmp_path / "raw" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


def _partitions(raw_dir: Path) -> dict[str, Callable[[], bytes]]:
    return RawFolderDataset(path=str(raw_dir)).load()


@pytest.fixture
def make_partitions() -> Callable[[Path], dict[str, Callable[[], bytes]]]:
    """What the catalog's ``raw_scans`` hands the nodes, for a given folder."""
    return _partitions


@pytest.fixture
def run_ingest(tmp_path: Path, ingest_params: dict[str, Any]) -> Callable[..., tuple[pd.DataFrame, dict[str, Any]]]:
    """Run both ingest nodes on tmp_path/raw (or on a given raw folder or partitions dict) with
    the key ``TEST_KEY`` (or ``key=``); returns the manifest and the report (the file index is
    ``manifest.attrs["file_index"]``)."""

    def run(regex: str | None = None, parts: dict | Path | None = None, key: str = TEST_KEY, **overrides: Any):
        raw = parts if isinstance(parts, Path) else tmp_path / "raw"
        params = {**ingest_params, "raw_dir": str(raw), **overrides}
        parts = _partitions(raw) if parts is None or isinstance(parts, Path) else parts
        manifest, index, report = build_manifest(parts, index_scans(parts, params), params, regex, key)
        manifest.attrs["file_index"] = index
        return manifest, report

    return run
