"""Statistics of the evaluate stage: metrics, patient-bootstrap intervals and paired model comparisons.

Every function is pure (arrays in, numbers or frozen dataclasses out) and seeded where random.
Every test result carries its name and ``n`` and can ``describe()`` itself, so a report never
prints a bare p-value.

Conventions: ``classes`` lists the labels in the column order of ``proba``; in binary problems the
positive class is the last one (osteoporosis), so sensitivity = recall of ``classes[-1]`` and the
ROC-AUC is computed on its probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from osteo_pipeline.core.metrics import as_proba_matrix, midrank_auc

# Below this many paired units a test's p-value is flagged as resting on a small sample.
SMALL_SAMPLE = 10

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- helpers


def _fmt_p(p: float) -> str:
    """A p-value as a report prints it (never '0.000')."""
    if not math.isfinite(p):
        return "p undefined"
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def _sample_note(n: int, unit: str) -> str:
    """'(n=5; small sample)' or '(n=40 scans)'."""
    return f"(n={n} {unit}; small sample)" if n < SMALL_SAMPLE else f"(n={n} {unit})"


def _resolve_classes(y_true: np.ndarray, classes: Sequence[Any] | None) -> list[Any]:
    """The given class order, else the sorted labels (sklearn's ``classes_`` order)."""
    return list(classes) if classes is not None else sorted(np.unique(y_true).tolist())


def _macro_auc(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float:
    """Binary: AUC of the last class; more classes: unweighted mean of the one-vs-rest AUCs of the
    classes present in ``y_true`` (as :func:`classification_metrics` does when a class is absent)."""
    if len(classes) == 2:
        return midrank_auc(y_true == classes[-1], proba[:, -1])
    present = [(k, c) for k, c in enumerate(classes) if np.any(y_true == c)]
    return float(np.mean([midrank_auc(y_true == c, proba[:, k]) for k, c in present]))


# --------------------------------------------------------------------------- patient bootstrap


def _group_indices(groups: Any) -> list[np.ndarray]:
    """Row indices of each patient, in a fixed (sorted-id) order so results are reproducible."""
    codes, _ = pd.factorize(pd.Series(np.asarray(groups)), sort=True)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def _patient_resamples(
    y_true: np.ndarray, groups: Any, n_boot: int, seed: int
) -> Iterator[np.ndarray | None]:
    """Row indices of ``n_boot`` patient resamples (all scans of each drawn patient);
    ``None`` where a class of ``y_true`` is missing from the resample."""
    if len(np.asarray(groups)) != len(y_true):
        raise ValueError("groups must give one patient id per scan")
    members = _group_indices(groups)
    n_classes = np.unique(y_true).size
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        yield rows if np.unique(y_true[rows]).size == n_classes else None


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile CI from a patient bootstrap; unpacks as ``point, lo, hi``."""

    metric: str
    point: float
    lo: float
    hi: float
    alpha: float
    n: int
    n_patients: int
    n_boot: int
    n_skipped: int
    test: str = "patient bootstrap"

    def __iter__(self) -> Iterator[float]:
        return iter((self.point, self.lo, self.hi))

    def describe(self) -> str:
        level = round(100 * (1 - self.alpha))
        return (
            f"{self.metric} {self.point:.3f} ({level}% CI {self.lo:.3f} to {self.hi:.3f}; {self.test} over "
            f"{self.n_patients} patients, {self.n_boot} resamples, {self.n_skipped} skipped for a missing class) "
            f"{_sample_note(self.n, 'scans')}"
        )


def bootstrap_ci(
    y_true: Any,
    proba: Any,
    groups: Any,
    metric_fn: MetricFn,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    name: str | None = None,
) -> BootstrapCI:
    """Percentile CI of ``metric_fn(y_true, proba)`` by resampling patients (``groups``), not scans.

    Scans of one patient are correlated, so patients are drawn with replacement and all their
    scans taken. Resamples lacking a class are skipped and counted (``n_skipped``).
    ``name`` labels the metric in ``describe()`` (default: the function's name).
    """
    y, p = np.asarray(y_true), np.asarray(proba)
    point = float(metric_fn(y, p))
    values = [float(metric_fn(y[r], p[r])) for r in _patient_resamples(y, groups, n_boot, seed) if r is not None]
    lo, hi = (np.quantile(values, [alpha / 2, 1 - alpha / 2]) if values else (np.nan, np.nan))
    return BootstrapCI(
        metric=name or getattr(metric_fn, "__name__", "metric"),
        point=point,
        lo=float(lo),
        hi=float(hi),
        alpha=alpha,
        n=int(y.size),
        n_patients=len(np.unique(np.asarray(groups))),
        n_boot=n_boot,
        n_skipped=n_boot - len(values),
    )


def label_indices(y_true: Any, classes: Sequence[Any]) -> np.ndarray:
    """Labels as integer positions in ``classes`` (the probability columns); unknown labels are an error."""
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.fromiter((lookup[v] for v in np.asarray(y_true).tolist()), dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"label {err.args[0]!r} is not one of the classes {list(classes)}") from None


def metric_functions(n_classes: int) -> dict[str, MetricFn]:
    """Fast numpy twins of :func:`classification_metrics`' scalars (accuracy, precision, recall,
    specificity, f1, auc) for bootstraps: ``fn(y_idx, proba)`` with integer labels ``y_idx``.

    Same conventions: arg-max predictions; binary figures of the positive (last) class; more
    classes: macro averages and the one-vs-rest macro AUC; zero where a ratio's denominator is 0.
    """
    k = int(n_classes)

    def per_class(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        cm = np.bincount(y * k + p.argmax(axis=1), minlength=k * k).reshape(k, k)
        tp = np.diag(cm).astype(float)
        fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
        tn = cm.sum() - tp - fp - fn

        def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.divide(a, b, out=np.zeros(k), where=b > 0)

        return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
                "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn),
                "accuracy": np.array([tp.sum() / max(cm.sum(), 1)])}

    def pick(values: np.ndarray) -> float:
        return float(values[-1]) if k == 2 else float(values.mean())

    def auc(y: np.ndarray, p: np.ndarray) -> float:
        if k == 2:
            return midrank_auc(y == 1, p[:, 1])
        return float(np.nanmean([midrank_auc(y == c, p[:, c]) for c in range(k) if (y == c).any()]))

    def scalar(name: str) -> MetricFn:
        if name == "accuracy":
            return lambda y, p: float(per_class(y, p)["accuracy"][0])
        return lambda y, p: pick(per_class(y, p)[name])

    fns: dict[str, MetricFn] = {n: scalar(n) for n in ("accuracy", "precision", "recall", "specificity", "f1")}
    fns["auc"] = auc
    for name, fn in fns.items():
        fn.__name__ = name  # type: ignore[attr-defined]
    return fns


def bootstrap_cis(
    y_true: Any,
    proba: Any,
    groups: Any,
    metric_fns: Mapping[str, MetricFn],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, BootstrapCI]:
    """:func:`bootstrap_ci` of several metrics on the same patient resamples (one pass).

    Every metric sees identical resamples, so a run's intervals are mutually consistent and, where
    every resample gives a finite value, equal to :func:`bootstrap_ci`'s with the same seed
    (non-finite resample values are left out of the quantiles here).
    """
    y, p = np.asarray(y_true), np.asarray(proba)
    values: dict[str, list[float]] = {name: [] for name in metric_fns}
    n_valid = 0
    for rows in _patient_resamples(y, groups, n_boot, seed):
        if rows is None:
            continue
        n_valid += 1
        for name, fn in metric_fns.items():
            values[name].append(float(fn(y[rows], p[rows])))
    out = {}
    for name, fn in metric_fns.items():
        finite = np.asarray(values[name], dtype=float)
        finite = finite[np.isfinite(finite)]
        lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if finite.size else (np.nan, np.nan)
        out[name] = BootstrapCI(
            metric=name, point=float(fn(y, p)), lo=float(lo), hi=float(hi), alpha=alpha, n=int(y.size),
            n_patients=len(np.unique(np.asarray(groups))), n_boot=n_boot, n_skipped=n_boot - n_valid,
        )
    return out


# --------------------------------------------------------------------------- paired tests


@dataclass(frozen=True)
class PairedTTest:
    """Paired t-test of two models' per-fold scores."""

    n: int
    statistic: float
    p_value: float
    mean_a: float
    sd_a: float
    mean_b: float
    sd_b: float
    test: str = "paired t-test"

    def describe(self) -> str:
        return (
            f"{self.test} over {self.n} folds: t={self.statistic:.3g}, {_fmt_p(self.p_value)}; "
            f"A {self.mean_a:.3f}±{self.sd_a:.3f} vs B {self.mean_b:.3f}±{self.sd_b:.3f} "
            f"{_sample_note(self.n, 'folds')}"
        )


def paired_ttest(a_fold_scores: Sequence[float], b_fold_scores: Sequence[float]) -> PairedTTest:
    """scipy's paired t-test of A vs B over the same CV folds, with mean±sd (ddof=1) of each.

    With five folds the test has 4 degrees of freedom and the folds share training data, so the
    p-value is optimistic (Nadeau & Bengio); the result says so through its small-sample flag.
    """
    a, b = np.asarray(a_fold_scores, dtype=float), np.asarray(b_fold_scores, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("need two equally long score sequences of at least 2 folds")
    res = stats.ttest_rel(a, b)
    return PairedTTest(
        n=int(a.size),
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        mean_a=float(a.mean()),
        sd_a=float(a.std(ddof=1)),
        mean_b=float(b.mean()),
        sd_b=float(b.std(ddof=1)),
    )


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: ``b`` = A right & B wrong, ``c`` = A wrong & B right, of ``n`` paired scans."""

    n: int
    b: int
    c: int
    p_value: float
    test: str = "exact McNemar test"

    @property
    def statistic(self) -> int:
        """The binomial test's statistic: ``b`` out of ``b + c`` discordant pairs."""
        return self.b

    def describe(self) -> str:
        return (
            f"{self.test}: A-only correct b={self.b}, B-only correct c={self.c} of {self.b + self.c} "
            f"discordant pairs, {_fmt_p(self.p_value)} {_sample_note(self.n, 'scans')}"
        )


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact (binomial, p=0.5, two-sided) McNemar test on the discordant pairs of two classifiers."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("correct_a and correct_b must describe the same scans")
    n_b, n_c = int((a & ~b).sum()), int((~a & b).sum())
    # No discordant pair: no evidence either way.
    p = float(stats.binomtest(n_b, n_b + n_c, 0.5).pvalue) if n_b + n_c else 1.0
    return McNemarResult(n=int(a.size), b=n_b, c=n_c, p_value=p)


def delong_covariance(y_true: Any, scores: Any, pos_label: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` score vectors (shape (k, n)) on the same cases and DeLong's (k, k) covariance.

    Uses the placement (structural component) form with midranks: a positive's placement is the
    fraction of negatives it outscores (ties count 1/2), computed from its rank among all cases
    minus its rank among the positives. Positive class: ``pos_label``, else the largest label.
    """
    y = np.asarray(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    pos = y == (np.unique(y)[-1] if pos_label is None else pos_label)
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positive and two negative cases")
    x, z = s[:, pos], s[:, ~pos]
    r_all = stats.rankdata(np.concatenate([x, z], axis=1), axis=1)
    r_x, r_z = stats.rankdata(x, axis=1), stats.rankdata(z, axis=1)
    v10 = (r_all[:, :m] - r_x) / n  # per positive: share of negatives below it
    v01 = 1.0 - (r_all[:, m:] - r_z) / m  # per negative: share of positives above it
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


@dataclass(frozen=True)
class DeLongResult:
    """DeLong test of two correlated ROC AUCs."""

    n: int
    n_positive: int
    n_negative: int
    auc_a: float
    auc_b: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    statistic: float
    p_value: float
    test: str = "DeLong test"

    def describe(self) -> str:
        return (
            f"{self.test} of correlated AUCs: A {self.auc_a:.3f} vs B {self.auc_b:.3f}, "
            f"z={self.statistic:.3g}, {_fmt_p(self.p_value)} "
            f"(n={self.n} scans: {self.n_positive} positive, {self.n_negative} negative)"
        )


def delong_test(y_true: Any, score_a: Any, score_b: Any, pos_label: Any = None) -> DeLongResult:
    """Two-sided DeLong test that two scores have the same ROC-AUC on the same binary cases.

    The scans are treated as independent; with several scans per patient prefer
    :func:`bootstrap_auc_difference`, which resamples patients.
    """
    y = np.asarray(y_true)
    aucs, cov = delong_covariance(y, np.vstack([score_a, score_b]), pos_label)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 0:  # identical rankings: the difference is exactly 0 with no spread
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    n_pos = int((y == (np.unique(y)[-1] if pos_label is None else pos_label)).sum())
    return DeLongResult(
        n=int(y.size),
        n_positive=n_pos,
        n_negative=int(y.size) - n_pos,
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        cov=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
        statistic=float(z),
        p_value=float(p),
    )


@dataclass(frozen=True)
class BootstrapDifference:
    """Patient-bootstrap comparison of two models' macro ROC-AUC on the same scans."""

    n: int
    n_patients: int
    auc_a: float
    auc_b: float
    difference: float
    lo: float
    hi: float
    p_value: float
    alpha: float
    n_boot: int
    n_skipped: int
    test: str = "patient-bootstrap AUC difference"

    @property
    def statistic(self) -> float:
        """The observed difference AUC_A - AUC_B."""
        return self.difference

    def describe(self) -> str:
        level = round(100 * (1 - self.alpha))
        return (
            f"{self.test}: A {self.auc_a:.3f} - B {self.auc_b:.3f} = {self.difference:+.3f} "
            f"({level}% CI {self.lo:+.3f} to {self.hi:+.3f}), {_fmt_p(self.p_value)}; "
            f"{self.n_patients} patients, {self.n_boot} resamples, {self.n_skipped} skipped "
            f"{_sample_note(self.n, 'scans')}"
        )


def bootstrap_auc_difference(
    y_true: Any,
    proba_a: Any,
    proba_b: Any,
    groups: Any,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    classes: Sequence[Any] | None = None,
    alpha: float = 0.05,
) -> BootstrapDifference:
    """Paired patient bootstrap of AUC_A - AUC_B (one-vs-rest macro AUC; binary: positive-class AUC).

    Both models are scored on the same resample. The CI is the percentile interval. The p-value
    inverts that interval: twice the share of resampled differences on the far side of 0
    (``<= 0`` when the observed difference is positive), with the +1 correction
    ``(1 + count) / (1 + valid resamples)`` so it is never reported as exactly 0; capped at 1.
    ``classes`` gives the column order of the probabilities (default: sorted labels).
    """
    y = np.asarray(y_true)
    cls = _resolve_classes(y, classes)
    pa, pb = as_proba_matrix(proba_a, len(cls)), as_proba_matrix(proba_b, len(cls))
    auc_a, auc_b = _macro_auc(y, pa, cls), _macro_auc(y, pb, cls)
    diffs = np.array(
        [
            _macro_auc(y[r], pa[r], cls) - _macro_auc(y[r], pb[r], cls)
            for r in _patient_resamples(y, groups, n_boot, seed)
            if r is not None
        ]
    )
    observed = auc_a - auc_b
    if diffs.size:
        lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
        far_side = int((diffs <= 0).sum()) if observed > 0 else int((diffs >= 0).sum())
        p = 1.0 if observed == 0 else min(1.0, 2 * (1 + far_side) / (1 + diffs.size))
    else:
        lo = hi = p = float("nan")
    return BootstrapDifference(
        n=int(y.size),
        n_patients=len(np.unique(np.asarray(groups))),
        auc_a=float(auc_a),
        auc_b=float(auc_b),
        difference=float(observed),
        lo=float(lo),
        hi=float(hi),
        p_value=float(p),
        alpha=alpha,
        n_boot=n_boot,
        n_skipped=n_boot - int(diffs.size),
    )


# --------------------------------------------------------------------------- multiplicity


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN, outside the family."""
    finite = sorted((p, k) for k, p in p_values.items() if math.isfinite(p))
    m, running, adjusted = len(finite), 0.0, {k: float("nan") for k in p_values}
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))  # monotone: never below a smaller p's adjustment
        adjusted[k] = running
    return adjusted

