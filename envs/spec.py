"""The exposure env contract shared by the real and the mock env: spaces, observation layout, info keys.

Owns how raw training-state statistics become a bounded float32 observation, the action policy
(a NaN, infinite or out-of-range alpha is an error, never silently clipped) and the info keys every
exposure env fills. Knows nothing of engines or learning dynamics.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import spaces

# Observation layout: (name, low, high, meaning). Every env in this package fills exactly these.
OBSERVATION = (
    ("progress", 0.0, 1.0, "training progress t / T (student updates done / budget)"),
    ("ema_alpha", 0.0, 1.0, "EMA of the exposure actually used"),
    ("ema_loss", -1.0, 1.0, "EMA of the distillation loss, squashed x / (1 + |x|)"),
    ("ema_mismatch", 0.0, 1.0, "EMA of the top-1 student-teacher disagreement"),
    ("ema_probe_nll", 0.0, 4.0, "EMA of the probe NLL relative to its value at reset, clipped to [0, 4]"),
    ("confidence", 0.0, 1.0, "student self-confidence: EMA of the mean max next-token probability"),
)
OBS_NAMES = tuple(name for name, *_ in OBSERVATION)

# Keys present in every step's info dict (both envs). `eval` appears only when an evaluation ran.
INFO_KEYS = (
    "alpha",  # the exposure used in this window
    "reward/progress",  # discounted learning progress of the window (paper's G_lp over H steps)
    "reward/grounded",  # discount-weighted mean grounded score of the window
    "reward/total",  # progress + lambda_gt * grounded = the step's reward
    "stats/loss",  # raw window means of the training statistics
    "stats/mismatch",
    "stats/probe_nll",
    "stats/confidence",
    "losses",  # the tracked loss l_0..l_H around the window (list of H + 1 floats)
    "steps_done",  # student updates done so far
    "score",  # the env's quality measure of the student now (mock: competence; real: last eval accuracy)
    "oracle_alpha",  # the best exposure for the current state (mock env only; NaN in the real env)
    "time/window_s",  # wall time of the window
)


_LOW = tuple(lo for _, lo, _, _ in OBSERVATION)
_HIGH = tuple(hi for _, _, hi, _ in OBSERVATION)


def observation_space() -> spaces.Box:
    return spaces.Box(np.array(_LOW, dtype=np.float32), np.array(_HIGH, dtype=np.float32), dtype=np.float32)


def action_space() -> spaces.Box:
    return spaces.Box(0.0, 1.0, (1,), dtype=np.float32)


def make_observation(
    progress: float,
    ema_alpha: float,
    ema_loss: float,
    ema_mismatch: float,
    probe_ratio: float,
    confidence: float,
) -> np.ndarray:
    """Raw statistics -> the bounded float32 observation (a non-finite input becomes 0, then clipped).

    Plain Python on purpose: the mock env calls it every step.
    """
    raw = (progress, ema_alpha, ema_loss / (1 + abs(ema_loss)) if math.isfinite(ema_loss) else 0.0,
           ema_mismatch, probe_ratio, confidence)  # fmt: skip
    values = [
        min(hi, max(lo, v)) if math.isfinite(v) else min(hi, max(lo, 0.0))
        for v, lo, hi in zip(raw, _LOW, _HIGH)
    ]
    return np.array(values, dtype=np.float32)


def check_action(action: np.ndarray | float) -> float:
    """The alpha of an action; raises ValueError on NaN, infinity or values outside [0, 1].

    Policy: an env never repairs an action. A controller that produces an invalid alpha has a bug,
    and clipping it silently would hide the bug inside the training curve.
    """
    if isinstance(action, np.ndarray) and action.size == 1:
        alpha = float(action.flat[0])
    elif isinstance(action, (int, float, np.floating)):
        alpha = float(action)
    else:
        raise ValueError(f"action must hold exactly one alpha, got {action!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"action alpha must be finite, got {alpha}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"action alpha must be in [0, 1], got {alpha}")
    return alpha
