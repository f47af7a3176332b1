"""The exposure env contract shared by the real and the mock env: spaces, observation layout, info keys.

Owns how raw training-state statistics become a bounded float32 observation, the action policy
(a NaN, infinite or out-of-range alpha is an error, never silently clipped) and the info keys every
exposure env fills. Knows nothing of engines or learning dynamics.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from atesd.config import coerce

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

# With the per-band action (`action="per_band"`), one more entry per difficulty band, after the
# six above, in the band order of the action: the band's rollout accuracy, an EMA decayed per update
# (0.9^H over a window of H; the real env over the updates that drew the band).
BAND_OBSERVATION = ("rollout_accuracy", 0.0, 1.0, "EMA of the band's rollout accuracy (the fraction solved)")
ACTIONS = ("global", "per_band")

# Keys present in every step's info dict (both envs). `eval` appears only when an evaluation ran.
INFO_KEYS = (
    "alpha",  # the exposure used in this window
    "reward/progress",  # discounted learning progress of the window (paper's G_lp over H steps)
    "reward/grounded",  # the grounded term: the rise of the window's mean grounded score (default), or it
    "reward/total",  # progress + lambda_gt * grounded = the step's reward (a NaN grounded term adds 0)
    "stats/loss",  # raw window means of the training statistics (the probe NLL: its last value, l_H)
    "stats/mismatch",
    "stats/probe_nll",
    "stats/confidence",
    "losses",  # the tracked loss l_0..l_H around the window (list of H + 1 floats)
    "steps_done",  # student updates done so far
    "score",  # the env's quality measure of the student now (mock: competence; real: last eval accuracy)
)
# Wall-clock times are the machine's, not the env's: an env that measures them keeps the last step's
# in `env.unwrapped.timings` (`time/window_s`, ...) and per update in `step_timings`, outside info, so
# that a seeded env gives the same info twice (gymnasium's check_env compares it). The mock env adds
# `oracle_alpha` (the best exposure for the current state) to its info; the real env has none.


_LOW = tuple(lo for _, lo, _, _ in OBSERVATION)
_HIGH = tuple(hi for _, _, hi, _ in OBSERVATION)


def observation_names(bands: Sequence[str] = ()) -> tuple[str, ...]:
    """The observation's entry names: the six shared ones, then `rollout_accuracy/<band>` per band
    (per-band action only; `bands=()` is the global action's layout)."""
    return OBS_NAMES + tuple(f"{BAND_OBSERVATION[0]}/{band}" for band in bands)


def observation_space(bands: Sequence[str] = ()) -> spaces.Box:
    low = np.array(_LOW + (BAND_OBSERVATION[1],) * len(bands), dtype=np.float32)
    high = np.array(_HIGH + (BAND_OBSERVATION[2],) * len(bands), dtype=np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def action_space(size: int = 1) -> spaces.Box:
    """One alpha (the global action) or one per difficulty band (`size` = the number of bands)."""
    if size < 1:
        raise ValueError(f"the action needs at least one alpha, got size {size}")
    return spaces.Box(0.0, 1.0, (size,), dtype=np.float32)


def env_config(cls: type, cfg: Any, overrides: dict[str, Any], env: str) -> Any:
    """`cfg`, or the config dataclass `cls` built from keyword `overrides` (text converted to each
    field's type, as `--set` converts it): how an env takes its config. ValueError for both given, for
    text of another type, and for a keyword no field of `cls` has, naming the nearest field and every
    one (`gymnasium.make(..., lambda=1)` said only that a constructor got an unexpected keyword)."""
    if cfg is not None and overrides:
        raise ValueError("pass either cfg or keyword overrides, not both")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        near = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{env} has no setting {unknown[0]!r}{hint} (its settings: {', '.join(names)})")
    if cfg is not None:
        return cfg
    # values given as text (`bench.py --env-set lambda_gt=1e-3`) take their field's type: "no" was a
    # true bool, and 1e-3 a string no range check could compare
    return cls(**coerced(cls, overrides))


def check_field_types(cfg: Any) -> None:
    """ValueError naming the first field of the env config dataclass `cfg` whose value is not of its
    type (checked before its ranges, which a text compared in a TypeError): a bool field other than
    True/False (the text 'no' was a true flag), an int field a fraction (eval_every=1.5 evaluated after
    windows 3, 6 and 7), a float field not a number."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        hint, value = hints[f.name], getattr(cfg, f.name)
        if hint is bool:
            ok, rule = isinstance(value, (bool, np.bool_)), "true or false"
        elif hint is int:
            ok, rule = is_whole(value), "a whole number"
        elif hint is float:
            ok, rule = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)), "a number"
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name} must be {rule}, got {value!r}")


def coerced(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword `overrides` of the config dataclass `cls` with their text converted to each field's
    type, as `--set` converts it (`bench.py --env-set lambda_gt=1e-3` gives text)."""
    hints = typing.get_type_hints(cls)
    return {
        k: coerce(hints[k], v, k) if isinstance(v, str) and k in hints else v for k, v in overrides.items()
    }


def is_whole(n: object) -> bool:
    """An int (numpy's too), not a bool: a count of steps or skills."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def window_checks(hold_steps, total_steps) -> tuple[tuple[str, bool, str], ...]:
    """(field, ok, rule) checks of an env config's H and T, for its `__post_init__`: whole numbers
    (a float H passed every range check and failed at the first step), T a multiple of H >= 1."""
    whole = is_whole(hold_steps) and is_whole(total_steps)
    return (
        ("hold_steps", is_whole(hold_steps) and hold_steps >= 1, "a whole number >= 1"),
        ("total_steps", is_whole(total_steps) and total_steps >= hold_steps, "a whole number >= hold_steps"),
        (
            "total_steps",
            whole and total_steps % max(hold_steps, 1) == 0,
            f"a multiple of hold_steps={hold_steps} (every window holds H updates)",
        ),
    )


def check_action_kind(action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    return action


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


def with_bands(obs: np.ndarray, band_values: Sequence[float]) -> np.ndarray:
    """The shared observation followed by the per-band entries (each clipped to [0, 1]; a
    non-finite one becomes 0)."""
    if not band_values:
        return obs
    lo, hi = BAND_OBSERVATION[1], BAND_OBSERVATION[2]
    extra = [min(hi, max(lo, v)) if math.isfinite(v) else lo for v in band_values]
    return np.concatenate([obs, np.array(extra, dtype=np.float32)])


def check_action(action: np.ndarray | float) -> float:
    """The alpha of an action; raises ValueError on NaN, infinity or values outside [0, 1], and on
    anything but a real number or a real array of shape (1,) (a string, a bool, a complex number,
    shape (1, 1)).

    Policy: an env never repairs an action. A controller that produces an invalid alpha has a bug,
    and clipping it silently would hide the bug inside the training curve.
    """
    if isinstance(action, np.ndarray) and action.shape in ((1,), ()) and action.dtype.kind in "fiu":
        alpha = float(action.reshape(-1)[0])
    elif isinstance(action, (int, float, np.floating, np.integer)) and not isinstance(
        action, (bool, np.bool_)
    ):
        alpha = float(action)
    else:
        raise ValueError(f"action must hold exactly one alpha (a real array of shape (1,)), got {action!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"action alpha must be finite, got {alpha}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"action alpha must be in [0, 1], got {alpha}")
    return alpha


def check_alphas(action: np.ndarray, size: int) -> tuple[float, ...]:
    """The `size` alphas of a per-band action (a real array of shape (size,)), each checked as
    `check_action` checks one."""
    if not (isinstance(action, np.ndarray) and action.shape == (size,) and action.dtype.kind in "fiu"):
        raise ValueError(
            f"action must hold one alpha per band (a real array of shape ({size},)), got {action!r}"
        )
    return tuple(check_action(float(a)) for a in action)


def check_started(started: bool) -> None:
    """Refuse a state_dict before the first reset (RuntimeError): there is no episode to save."""
    if not started:
        raise RuntimeError("state_dict() before reset(): no episode to save; call reset() first")


def check_stepping(started: bool, done: bool) -> None:
    """Refuse a step before the first reset or after the episode ended (RuntimeError)."""
    if not started:
        raise RuntimeError("step() before reset(): call reset() to start an episode")
    if done:
        raise RuntimeError("the episode is over (terminated): call reset() to start another")
