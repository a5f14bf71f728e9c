"""The evaluate stage's statistics, checked against hand-computed values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from osteo_pipeline.core.metrics import classification_metrics, midrank_auc
from osteo_pipeline.evaluation.stats import (
    bootstrap_auc_difference,
    bootstrap_ci,
    bootstrap_cis,
    delong_covariance,
    delong_test,
    holm,
    label_indices,
    mcnemar_exact,
    metric_functions,
    paired_ttest,
)

BINARY = ["normal", "osteoporosis"]
THREE = ["normal", "osteopenia", "osteoporosis"]


@pytest.fixture
def scored_cases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 binary cases, two correlated scores rounded to one decimal so that ties occur."""
    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(18, int), np.ones(22, int)]
    signal = y + rng.normal(0, 0.9, y.size)
    score_a = np.round(signal + rng.normal(0, 0.3, y.size), 1)
    score_b = np.round(signal + rng.normal(0, 0.8, y.size), 1)
    return y, score_a, score_b


def _placements_brute_force(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components straight from the definition, O(m*n) per score."""
    x, z = scores[:, y == 1], scores[:, y == 0]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])  # (k, m, n)
    return psi.mean(axis=(1, 2)), psi.mean(axis=2), psi.mean(axis=1)


def _three_class_data(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, an informative and an uninformative probability matrix, patient ids (2 scans each)."""
    rng = np.random.default_rng(seed)
    patient_label = rng.integers(0, 3, n_patients)
    y_idx = np.repeat(patient_label, 2)
    groups = np.repeat(np.arange(n_patients), 2)
    logits = 2.5 * np.eye(3)[y_idx] + rng.normal(0, 1, (y_idx.size, 3))
    good = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    noise = rng.dirichlet(np.ones(3), y_idx.size)
    return np.asarray(THREE)[y_idx], good, noise, groups


# ---------------------------------------------------------------- classification_metrics


def test_binary_metrics_match_a_hand_made_confusion_matrix() -> None:
    # normal: 3 right (TN), 1 called osteoporosis (FP); osteoporosis: 2 missed (FN), 4 found (TP)
    y = np.array(["normal"] * 4 + ["osteoporosis"] * 6)
    p_pos = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])
    m = classification_metrics(y, p_pos, BINARY)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m["auc"] == pytest.approx(roc_auc_score(y == "osteoporosis", p_pos))
    assert m["loss"] == pytest.approx(-np.mean(np.log(np.where(y == "osteoporosis", p_pos, 1 - p_pos))))
    # a (n, 2) matrix gives the same figures as the positive-class vector
    assert classification_metrics(y, np.column_stack([1 - p_pos, p_pos]), BINARY)["auc"] == m["auc"]


def test_three_class_specificity_is_the_macro_one_vs_rest_tn_over_tn_plus_fp() -> None:
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 4]])  # rows true, columns predicted
    y_idx, pred_idx = zip(*[(t, p) for t in range(3) for p in range(3) for _ in range(cm[t, p])])
    proba = np.full((len(y_idx), 3), 0.1)
    proba[np.arange(len(y_idx)), pred_idx] = 0.8
    y = np.asarray(THREE)[list(y_idx)]
    m = classification_metrics(y, proba, THREE)
    assert m["confusion_matrix"] == cm.tolist()
    # class k vs rest: TN = all - row k - column k + diagonal, FP = column k - diagonal
    expected = [9 / 11, 9 / 11, 11 / 12]  # 17 scans
    assert [m["per_class"][c]["specificity"] for c in THREE] == pytest.approx(expected)
    assert m["specificity"] == pytest.approx(np.mean(expected))
    assert m["recall"] == pytest.approx(np.mean([5 / 6, 3 / 6, 4 / 5]))
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", labels=THREE))


def test_midrank_auc_equals_sklearn_with_ties(scored_cases) -> None:
    y, score_a, _ = scored_cases
    assert midrank_auc(y == 1, score_a) == pytest.approx(roc_auc_score(y, score_a))


# ---------------------------------------------------------------- bootstrap_ci


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return midrank_auc(y == 1, p)


def _binary_patients(n_patients: int, scans: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n_patients), scans)
    return y, y + rng.normal(0, 1.2, y.size), np.repeat(np.arange(n_patients), scans)


def test_bootstrap_ci_covers_the_point_and_narrows_with_more_patients() -> None:
    small = bootstrap_ci(*_binary_patients(30, 2, 0), _auc, n_boot=500, seed=1)
    large = bootstrap_ci(*_binary_patients(600, 2, 0), _auc, n_boot=500, seed=1)
    for ci in (small, large):
        point, lo, hi = ci  # unpacks as (point, lo, hi)
        assert lo <= point <= hi
    assert (large.hi - large.lo) < 0.5 * (small.hi - small.lo)
    assert bootstrap_ci(*_binary_patients(30, 2, 0), _auc, n_boot=500, seed=1) == small  # seeded


def test_bootstrap_resamples_patients_not_scans() -> None:
    y, p, g = _binary_patients(40, 1, 3)
    one_scan = bootstrap_ci(y, p, g, _auc, n_boot=300, seed=2)
    # Three identical scans per patient add no information: drawing patients gives the same CI...
    tripled = bootstrap_ci(np.repeat(y, 3), np.repeat(p, 3), np.repeat(g, 3), _auc, n_boot=300, seed=2)
    assert (tripled.lo, tripled.hi) == pytest.approx((one_scan.lo, one_scan.hi))
    assert (tripled.n, tripled.n_patients) == (120, 40)
    # ...while drawing scans as if independent would make it falsely narrow.
    naive = bootstrap_ci(np.repeat(y, 3), np.repeat(p, 3), np.arange(120), _auc, n_boot=300, seed=2)
    assert naive.hi - naive.lo < 0.8 * (tripled.hi - tripled.lo)


def test_bootstrap_skips_and_counts_resamples_missing_a_class() -> None:
    y = np.r_[np.ones(3), np.zeros(27)].astype(int)  # one positive patient of ten
    p = np.linspace(0, 1, 30)
    ci = bootstrap_ci(y, p, np.repeat(np.arange(10), 3), _auc, n_boot=400, seed=0, name="AUC")
    # P(patient 0 never drawn) = 0.9**10 ~ 0.35
    assert 0.25 * 400 < ci.n_skipped < 0.45 * 400
    assert "AUC" in ci.describe() and "skipped" in ci.describe() and "n=30" in ci.describe()


# ---------------------------------------------------------------- paired tests


def test_paired_ttest_matches_scipy() -> None:
    a, b = [0.81, 0.84, 0.78, 0.86, 0.80], [0.76, 0.80, 0.79, 0.81, 0.75]
    res = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert (res.statistic, res.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert (res.mean_a, res.sd_a) == pytest.approx((np.mean(a), np.std(a, ddof=1)))
    assert (res.mean_b, res.sd_b) == pytest.approx((np.mean(b), np.std(b, ddof=1)))
    text = res.describe()
    assert res.n == 5 and "paired t-test over 5 folds" in text and "n=5" in text and "small sample" in text


def test_mcnemar_exact_hand_computed() -> None:
    # 1 scan only A gets right, 9 only B gets right, 20 both, 5 neither
    correct_a = np.r_[np.ones(1), np.zeros(9), np.ones(20), np.zeros(5)].astype(bool)
    correct_b = np.r_[np.zeros(1), np.ones(9), np.ones(20), np.zeros(5)].astype(bool)
    res = mcnemar_exact(correct_a, correct_b)
    # 2 * P(X <= 1 | Bin(10, 1/2)) = 2 * (1 + 10) / 1024
    assert (res.b, res.c, res.n) == (1, 9, 35)
    assert res.p_value == pytest.approx(22 / 1024)
    assert mcnemar_exact(correct_b, correct_a).p_value == pytest.approx(res.p_value)
    assert "McNemar" in res.describe() and "n=35" in res.describe()


def test_mcnemar_without_discordant_pairs_is_not_significant() -> None:
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same).p_value == 1.0


def test_delong_auc_is_the_mann_whitney_statistic(scored_cases) -> None:
    y, score_a, score_b = scored_cases
    aucs, _ = delong_covariance(y, np.vstack([score_a, score_b]))
    for auc, s in zip(aucs, (score_a, score_b)):
        u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
        assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_delong_covariance_matches_brute_force_placements(scored_cases) -> None:
    y, score_a, score_b = scored_cases
    scores = np.vstack([score_a, score_b])
    aucs, cov = delong_covariance(y, scores)
    ref_auc, v10, v01 = _placements_brute_force(y, scores)
    ref_cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    assert aucs == pytest.approx(ref_auc)
    assert cov == pytest.approx(ref_cov)
    # single-AUC variance
    _, var_a = delong_covariance(y, score_a)
    assert var_a[0, 0] == pytest.approx(ref_cov[0, 0])
    # the two-AUC test's z from the brute-force covariance
    res = delong_test(y, score_a, score_b)
    z = (ref_auc[0] - ref_auc[1]) / math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res.statistic == pytest.approx(z)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert (res.n, res.n_positive, res.n_negative) == (40, 22, 18)
    assert "DeLong" in res.describe() and "n=40" in res.describe()


def test_delong_same_scores_give_no_difference(scored_cases) -> None:
    y, score_a, _ = scored_cases
    res = delong_test(y, score_a, score_a)
    assert (res.statistic, res.p_value) == (0.0, 1.0)


def test_bootstrap_auc_difference_three_classes() -> None:
    y, good, noise, groups = _three_class_data(60, 4)
    better = bootstrap_auc_difference(y, good, noise, groups, n_boot=300, seed=0)
    assert better.auc_a == pytest.approx(roc_auc_score(y, good, multi_class="ovr", labels=THREE))
    assert better.difference == pytest.approx(better.auc_a - better.auc_b)
    assert better.lo > 0 and better.p_value < 0.05
    assert better.p_value >= 2 / 301  # never reported as exactly 0
    same = bootstrap_auc_difference(y, good, good, groups, n_boot=100, seed=0)
    assert (same.difference, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert "n=120" in better.describe() and "60 patients" in better.describe()


def test_bootstrap_auc_difference_binary_uses_the_positive_class() -> None:
    y, p, g = _binary_patients(50, 2, 5)
    proba = 1 / (1 + np.exp(-p))
    res = bootstrap_auc_difference(y, proba, 1 - proba, g, n_boot=200, seed=0)
    assert res.auc_a == pytest.approx(roc_auc_score(y, proba))
    assert res.auc_b == pytest.approx(1 - res.auc_a)


# ---------------------------------------------------------------- multiplicity


def test_holm_hand_example() -> None:
    # sorted: a 0.01*3 = 0.03; c 0.03*2 = 0.06; b 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    adjusted = holm({"x": 0.5, "y": 0.6, "z": float("nan")})
    assert adjusted["x"] == 1.0 and adjusted["y"] == 1.0 and math.isnan(adjusted["z"])


# ---------------------------------------------------------------- fast metrics and joint bootstrap


@pytest.mark.parametrize("classes", [BINARY, THREE])
def test_fast_metric_functions_equal_classification_metrics(classes) -> None:
    rng = np.random.default_rng(11)
    k = len(classes)
    y = rng.integers(0, k, 60)
    proba = np.round(rng.dirichlet(np.ones(k), 60) + 0.6 * np.eye(k)[y], 1)  # rounded: ties in the scores
    proba /= proba.sum(axis=1, keepdims=True)
    reference = classification_metrics(np.asarray(classes)[y], proba, classes)
    fast = {name: fn(y, proba) for name, fn in metric_functions(k).items()}
    assert set(fast) == {"accuracy", "precision", "recall", "specificity", "f1", "auc"}
    for name, value in fast.items():
        assert value == pytest.approx(reference[name]), name
    # a class never predicted: precision 0 (sklearn's zero_division=0), not NaN
    always_first = np.eye(k)[np.zeros(60, int)] * 0.9 + 0.1 / k
    assert metric_functions(k)["precision"](y, always_first) == pytest.approx(
        classification_metrics(np.asarray(classes)[y], always_first, classes)["precision"])


def test_label_indices_follow_the_class_order() -> None:
    assert label_indices(["osteoporosis", "normal"], BINARY).tolist() == [1, 0]
    with pytest.raises(ValueError, match="osteopenia"):
        label_indices(["osteopenia"], BINARY)


def test_bootstrap_cis_use_the_same_resamples_as_bootstrap_ci() -> None:
    y, score, groups = _binary_patients(40, 2, 9)
    proba = np.column_stack([1 - 1 / (1 + np.exp(-score)), 1 / (1 + np.exp(-score))])
    fns = metric_functions(2)
    joint = bootstrap_cis(y, proba, groups, fns, n_boot=300, seed=5)
    for name, fn in fns.items():
        single = bootstrap_ci(y, proba, groups, fn, n_boot=300, seed=5)
        assert (joint[name].point, joint[name].lo, joint[name].hi) == pytest.approx((single.point, single.lo, single.hi))
        assert joint[name].lo <= joint[name].point <= joint[name].hi  # the CI covers the point estimate
        assert joint[name].n_patients == 40 and joint[name].n == 80


def test_macro_auc_difference_skips_a_class_absent_from_the_test_set() -> None:
    y, good, noise, groups = _three_class_data(40, 8)
    keep = y != "osteopenia"  # e.g. the embedded cohort, which has no osteopenia scans
    res = bootstrap_auc_difference(y[keep], good[keep], noise[keep], groups[keep], n_boot=100, seed=0, classes=THREE)
    expected = np.mean([roc_auc_score(y[keep] == c, good[keep][:, k]) for k, c in enumerate(THREE) if c != "osteopenia"])
    assert res.auc_a == pytest.approx(expected) and np.isfinite(res.p_value)
    assert res.auc_a == pytest.approx(classification_metrics(y[keep], good[keep], THREE)["auc"])
