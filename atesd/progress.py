"""Learning-progress and discounted-return maths of ATESD (docs/METHOD.md §3), in numpy.

Pure functions over sequences of tracked-loss values and grounded scores; no torch, no state.
The env uses `window_reward` for one hold window; agents use `lookahead_returns` to turn window
rewards into the paper's delayed-credit return (windows discounted by gamma^H over L/H windows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class RewardSpec(NamedTuple):
    """The facts of an exposure env's reward that an agent's returns must share with it.

    Every exposure env exposes one as `env.unwrapped.reward_spec`; controllers take H and gamma from
    it at construction (`recipes.common.build_controller`), so no second copy can disagree.
    """

    hold_steps: int  # H: student updates per env step
    gamma: float  # per-update discount of the window reward; windows are discounted by gamma^H
    total_steps: int  # T: student updates per episode
    lambda_gt: float  # weight of the grounded score in the reward
    signed_progress: bool  # rises of the tracked loss are charged too (net drop)
    grounded_change: bool = False  # the grounded term is the change of the window's grounded mean

    @classmethod
    def of(cls, cfg: object) -> RewardSpec:
        """The spec of an env config that has a field of each of these names."""
        return cls(*(getattr(cfg, name) for name in cls._fields))


def discounted_progress(losses: Sequence[float], gamma: float, signed: bool = False) -> float:
    """sum_{i=1..n} gamma^(i-1) * max(0, l_{i-1} - l_i) over losses l_0..l_n.

    The paper counts only positive drops (a revert is never charged); `signed=True` gives the
    discounted net drop sum gamma^(i-1) (l_{i-1} - l_i) instead.
    """
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError("losses must be a non-empty 1-D sequence l_0..l_n")
    drops = arr[:-1] - arr[1:]
    if not signed:
        drops = np.maximum(drops, 0.0)
    return float(np.sum(gamma ** np.arange(drops.size) * drops))


def discounted_mean(values: Sequence[float], gamma: float) -> float:
    """sum gamma^(i-1) v_i / sum gamma^(i-1): the discount-weighted mean used for the grounded term,
    over the finite values only, each at its own weight (an update skipped as non-finite measured
    no score); NaN when none is finite."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("values must be non-empty")
    w = gamma ** np.arange(arr.size)
    finite = np.isfinite(arr)
    if not finite.any():
        return math.nan
    return float(np.sum(w[finite] * arr[finite]) / np.sum(w[finite]))


def window_reward(
    losses: Sequence[float], grounded: Sequence[float], gamma: float, lambda_gt: float, signed: bool = False
) -> dict[str, float]:
    """Reward of one hold window of H updates: losses l_0..l_H (before and after each update) and
    the H grounded scores g_1..g_H. Returns every term: progress, grounded, reward."""
    if len(losses) != len(grounded) + 1:
        raise ValueError(f"need H+1 losses for H grounded scores, got {len(losses)} and {len(grounded)}")
    progress = discounted_progress(losses, gamma, signed)
    g = discounted_mean(grounded, gamma) if len(grounded) else 0.0
    return {"progress": progress, "grounded": g, "reward": progress + (lambda_gt * g if lambda_gt else 0.0)}


def window_reward_floats(
    losses: Sequence[float], grounded: Sequence[float], gamma: float, lambda_gt: float, signed: bool = False
) -> dict[str, float]:
    """`window_reward` in plain Python floats, without its checks: for the simulated envs, which call
    it every step (numpy's per-call overhead would dominate at H = 5; tests pin the two equal)."""
    progress, weight, total_w, g_sum = 0.0, 1.0, 0.0, 0.0
    for prev, nxt, g in zip(losses, losses[1:], grounded):
        drop = prev - nxt
        progress += weight * (drop if signed else max(0.0, drop))
        if math.isfinite(g):  # as discounted_mean: an update that measured no score is left out
            g_sum += weight * g
            total_w += weight
        weight *= gamma
    g_mean = g_sum / total_w if total_w else math.nan
    return {
        "progress": progress,
        "grounded": g_mean,
        "reward": progress + (lambda_gt * g_mean if lambda_gt else 0.0),
    }


def grounded_change(terms: dict[str, float], previous: float | None, lambda_gt: float) -> dict[str, float]:
    """`window_reward`'s terms with the grounded term as a change: this window's discount-weighted
    mean grounded score minus the previous window's (0 in an episode's first window, `previous` None).

    A decision's credit is the discount-weighted mean of these changes over its lookahead (with
    gamma = 1, the total rise over it divided by the windows), so a controller is paid for a student
    that got better, not for a state that was already good (the level form pays every window for the
    competence reached before the decision). `previous` should be the last finite level: a window
    whose level is NaN (no score measured) has a NaN change, and so a NaN `reward` here, and leaves
    the level to compare with; the exposure env then credits no grounded term (its reward is the
    progress alone), as it does for a NaN level in the level form. Returns the terms (`grounded` now
    the change, `reward` = progress + lambda_gt * change) plus `grounded_level`, the window's mean,
    for the next window's `previous`.
    """
    level = terms["grounded"]
    if previous is None:  # the first window: no change yet (NaN stays NaN: no score was measured)
        change = math.nan if math.isnan(level) else 0.0
    else:
        change = level - previous
    return {
        "progress": terms["progress"],
        "grounded": change,
        "reward": terms["progress"] + (lambda_gt * change if lambda_gt else 0.0),
        "grounded_level": level,
    }


def lookahead_returns(
    rewards: Sequence[float], discount: float, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """G_w = sum_{k=0..horizon-1} discount^k r_{w+k} for every window w.

    With discount = gamma^H and horizon = L/H this is the paper's lookahead return of the decision
    made at window w. Returns (returns, complete) where complete[w] says the horizon fit in the
    sequence (incomplete returns are truncated sums, for the end of an episode).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    r = np.asarray(rewards, dtype=np.float64)
    n = r.size
    out = np.zeros(n)
    for k in range(min(horizon, n)):  # a horizon past the end adds nothing (truncated sums)
        out[: n - k] += discount**k * r[k:]
    complete = np.arange(n) + horizon <= n
    return out, complete


def paper_return(
    losses: Sequence[float],
    grounded: Sequence[float],
    t0: int,
    lookahead_steps: int,
    gamma: float,
    lambda_gt: float,
) -> float:
    """The paper's step-level return of the decision made at step t0:
    G_lp over l_{t0}..l_{t0+L} plus lambda_gt times the discount-weighted mean of g_{t0+1..t0+L}
    (the progress alone where no update measured g, as the env rewards such a window)."""
    seg = losses[t0 : t0 + lookahead_steps + 1]
    g = grounded[t0 : t0 + lookahead_steps]
    if len(seg) != lookahead_steps + 1 or len(g) != lookahead_steps:
        raise ValueError("the lookahead runs past the recorded steps")
    progress = discounted_progress(seg, gamma)
    g_mean = discounted_mean(g, gamma) if lambda_gt else math.nan
    return progress + lambda_gt * g_mean if math.isfinite(g_mean) else progress
