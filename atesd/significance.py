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


def welch_p(a: Any, b: Any, alternative: str = "two-sided") -> float:
    """Welch t-test p-value of the finite values of a and b (`alternative`: "two-sided", or "greater"
    for the one-sided test of mean(a) > mean(b), or "less"); NaN when either has fewer than two values
    or both are constant (no variance to test against)."""
    from scipy import stats

    x, y = finite_values(a), finite_values(b)
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return math.nan
    with warnings.catch_warnings():  # near-constant samples: scipy warns about precision, the p stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)


def paired_p(a: Any, b: Any, alternative: str = "two-sided") -> float:
    """Paired t-test p-value of a against b, pairs where both are finite (`alternative` as in
    `welch_p`: "greater" tests mean(a - b) > 0); NaN below two pairs or when every difference is equal."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 2 or np.ptp(x[both] - y[both]) == 0:
        return math.nan
    return float(stats.ttest_rel(x[both], y[both], alternative=alternative).pvalue)
