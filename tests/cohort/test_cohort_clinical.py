"""Clinical table statistics: Table 2 of the seed paper, WHO-consistent labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.cohort.clinical import (
    CLASS_STATS,
    repeat_patient_count,
    sample_cohort_patients,
    who_label,
)
from osteo_pipeline.cohort.writer import plan_cohort

DEFAULT_COUNTS = {"normal": 60, "osteopenia": 0, "osteoporosis": 114}


@pytest.fixture(scope="module")
def big_patients() -> pd.DataFrame:
    """Many patients per class, so sample means sit close to the targets (no images)."""
    counts = {"normal": 6000, "osteopenia": 3000, "osteoporosis": 11400}
    return sample_cohort_patients(np.random.default_rng(0), counts, 0.1)


def test_who_label_thresholds() -> None:
    assert who_label(-1.0) == "normal"
    assert who_label(-1.01) == "osteopenia"
    assert who_label(-2.49) == "osteopenia"
    assert who_label(-2.5) == "osteoporosis"


def test_t_scores_agree_with_labels(big_patients: pd.DataFrame) -> None:
    assert (big_patients["t_score"].map(who_label) == big_patients["label"]).all()


@pytest.mark.parametrize("label", ["normal", "osteoporosis"])
def test_table2_means_and_sds(big_patients: pd.DataFrame, label: str) -> None:
    rows = big_patients[big_patients["label"] == label]
    st = CLASS_STATS[label]
    for col, (mean, sd) in {"bmd": st.bmd, "z_score": st.z_score, "age": st.age, "bmi": st.bmi}.items():
        assert rows[col].mean() == pytest.approx(mean, abs=0.1 * sd + 0.01), col
        assert rows[col].std() == pytest.approx(sd, rel=0.2), col
    # T-scores are truncated to the WHO band, yet keep the published class mean.
    published_t = {"normal": -0.8, "osteoporosis": -2.9}[label]
    assert rows["t_score"].mean() == pytest.approx(published_t, abs=0.03)


def test_osteopenia_sits_between(big_patients: pd.DataFrame) -> None:
    means = big_patients.groupby("label")[["bmd", "t_score", "fracture_history"]].mean()
    assert means.loc["osteoporosis", "bmd"] < means.loc["osteopenia", "bmd"] < means.loc["normal", "bmd"]
    assert means.loc["osteopenia", "bmd"] == pytest.approx(0.80, abs=0.02)
    order = means["fracture_history"].loc[["normal", "osteopenia", "osteoporosis"]]
    assert order.is_monotonic_increasing


def test_fracture_history_is_informative_not_the_label(big_patients: pd.DataFrame) -> None:
    rate = big_patients.groupby("label")["fracture_history"].mean()
    assert 0.1 < rate["normal"] < 0.25
    assert 0.7 < rate["osteoporosis"] < 0.9  # 0.75 prior plus visible vertebral fractures


def test_default_cohort_counts_sex_and_repeats() -> None:
    clinical, jobs = plan_cohort(42, DEFAULT_COUNTS, 0.1)
    assert len(clinical) == len(jobs) == 174
    sexes = clinical.groupby(["label", "sex"]).size()
    assert sexes.to_dict() == {
        ("normal", "F"): 30,
        ("normal", "M"): 30,
        ("osteoporosis", "F"): 59,
        ("osteoporosis", "M"): 55,
    }
    per_patient = clinical.groupby("patient_id").size()
    assert set(per_patient) == {1, 2}
    assert 0.07 < (per_patient == 2).mean() < 0.13
    assert (clinical.groupby("patient_id")["label"].nunique() == 1).all()


def test_patient_ids_do_not_follow_the_label() -> None:
    clinical, _ = plan_cohort(42, DEFAULT_COUNTS, 0.1)
    first = clinical.drop_duplicates("patient_id").sort_values("patient_id")["label"].head(40)
    assert first.nunique() == 2


def test_repeat_patient_count() -> None:
    assert repeat_patient_count(60, 0.1) == 5
    assert repeat_patient_count(114, 0.1) == 10
    assert repeat_patient_count(1, 0.5) == 0
    assert repeat_patient_count(10, 5.0) == 5
    assert repeat_patient_count(10, 0.0) == 0
