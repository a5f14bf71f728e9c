"""Fixtures of the evaluate stage's unit tests (helpers in tests/evaluate_kit.py)."""

from __future__ import annotations

import pytest

from evaluate_kit import fake_cohort


@pytest.fixture
def cohort():
    return fake_cohort()
