"""Statistics over seeds: a Student-t confidence interval of the mean and Welch's t-test (scipy),
NaN-safe. Knows nothing of what was measured."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def finite_values(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the finite values: a Student-t interval; NaN bounds below two values."""
    from scipy import stats

    x = finite_values(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def is_constant(x: Any, scale: float | None = None) -> bool:
    """All values equal up to float rounding (a spread within 1e-12 of `scale`, by default their own
    largest size): a sample with no variance to test against. Exact equality took 0.8 and 0.8 + 1e-15
    for a difference (p 8e-06). Differences pass the size of what was subtracted as `scale`."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return False
    size = float(np.max(np.abs(x))) if scale is None else scale
    return float(np.ptp(x)) <= 1e-12 * size


def welch_p(a: Any, b: Any, alternative: str = "two-sided") -> float:
    """Welch t-test p-value of the finite values of a and b (`alternative`: "two-sided", or "greater"
    for the one-sided test of mean(a) > mean(b), or "less"); NaN when either has fewer than two values
    or both are constant (no variance to test against)."""
    from scipy import stats

    x, y = finite_values(a), finite_values(b)
    if len(x) < 2 or len(y) < 2 or (is_constant(x) and is_constant(y)):
        return math.nan
    with warnings.catch_warnings():  # near-constant samples: scipy warns about precision, the p stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)


def paired_p(a: Any, b: Any, alternative: str = "two-sided") -> float:
    """Paired t-test p-value of a against b, pairs where both are finite (`alternative` as in
    `welch_p`: "greater" tests mean(a - b) > 0); NaN below two pairs or when every difference is equal
    (`is_constant`: no variance to test against; the difference is then exact, see `paired_exact`)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 2 or _same_difference(x[both], y[both]):
        return math.nan
    return float(stats.ttest_rel(x[both], y[both], alternative=alternative).pvalue)


def paired_exact(a: Any, b: Any) -> bool:
    """At least two pairs, every one differing by the same (up to rounding): `paired_p` is NaN, and the
    difference is exact (every seed went from 0.80 to 0.70: a certain drop, not an unknown one)."""
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    both = np.isfinite(x) & np.isfinite(y)
    return bool(both.sum() >= 2 and _same_difference(x[both], y[both]))


def _same_difference(x: np.ndarray, y: np.ndarray) -> bool:
    """Every pair differs by the same, up to the rounding of values of their size (returns of 1e5:
    a constant difference of 0.1 rounds by ~1e-11, and a test of it gave p 4e-31)."""
    return is_constant(x - y, scale=float(max(np.max(np.abs(x)), np.max(np.abs(y)))))
