"""Shared fixtures: a test-scale copy of the project, with the synthetic cohort, run through Kedro.

Tests that run pipelines use the ``test`` Kedro environment (conf/test: tiny cohort, 3 folds,
few epochs) on the real code paths, in a temporary project folder so the work tree's data/
and mlflow.db are never touched. The helpers live in ``osteo_testkit``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from osteo_testkit import TEST_COHORT, make_project, run_kedro


@pytest.fixture(scope="session")
def cohort_project(tmp_path_factory) -> Path:
    """A test-scale project whose data/01_raw holds the synthetic cohort (not yet ingested)."""
    from osteo_pipeline.cohort import generate_cohort

    root = make_project(tmp_path_factory.mktemp("project"))
    generate_cohort(root / "data" / "01_raw", **TEST_COHORT)
    return root


@pytest.fixture(scope="session")
def prepared_project(cohort_project: Path) -> Path:
    """The test-scale project after ingest, roi_resize and split_augment."""
    run_kedro(cohort_project, ["ingest", "roi_resize", "split_augment"])
    return cohort_project
