"""Fixtures of the cohort tests: small synthetic cohorts written once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from osteo_pipeline.cohort import generate_cohort

# Three classes and many repeat patients in 18 tiny scans: every code path, well under a second.
TINY = {
    "seed": 7,
    "n_normal": 6,
    "n_osteoporosis": 8,
    "n_osteopenia": 4,
    "scale": 0.12,
    "repeat_patient_fraction": 0.3,
    "workers": 1,
}

# The default 174-scan cohort (Table 2 counts, seed 42), rendered at a quarter of the size.
DEFAULT_QUARTER = {"seed": 42, "scale": 0.25, "workers": 2}


@pytest.fixture(scope="session")
def tiny_params() -> dict[str, object]:
    """generate_cohort keyword arguments of the tiny cohort (a copy: tests may edit it)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """(folder, clinical table) of the tiny three-class cohort."""
    out = tmp_path_factory.mktemp("tiny_cohort") / "raw"
    return out, generate_cohort(out, **TINY)


@pytest.fixture(scope="session")
def default_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """(folder, clinical table) of the default cohort at scale 0.25."""
    out = tmp_path_factory.mktemp("default_cohort") / "raw"
    return out, generate_cohort(out, **DEFAULT_QUARTER)
