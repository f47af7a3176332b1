"""Success-driven exposure heuristics: reveal more of the reference while the student's rollouts fail,
less as they succeed (the idea of GHPO's hint ladder and of PAINT, here on the one global alpha).

GHPO (github.com/hkgc-1/GHPO) shows a problem 25%, then 50%, then 75% of its reference while every
rollout of it fails; PAINT (arXiv 2604.26573) masks the teacher's view per rollout by how much the
rollout already overlaps the reference. Neither learns: they are the hand-written baselines a learned
controller must beat. On one alpha per window, two kinds:

- `ghpo`: alpha moves by `step` (GHPO's 0.25 rungs by default) up when the window's success is
  below `low`, down when above `high`, and holds in between (a dead band: a batch of many problems
  rarely fails all at once).
- `paint`: alpha = alpha_min + (alpha_max - alpha_min) * (1 - s), s an EMA of the success rate
  (reveal in proportion to failure; PAINT's per-rollout overlap needs a per-rollout action).

The success signal is the env's `info["stats/rollout_accuracy"]` (the real env: the share of the
window's training rollouts the verifier accepts); where an env has no such key (the mock),
`info["score"]` (the mock's competence, a success rate in [0, 1]); a window whose signal is missing
or NaN (a band no problem of the window drew) leaves alpha as it is. It reads no observation entry
and keeps its alpha and EMA as state (resumable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import gymnasium as gym
import numpy as np

from controllers.base import OpenLoop, PerBand, action_size, as_action, check_transition

HintKind = Literal["ghpo", "paint"]
SUCCESS_KEYS = ("stats/rollout_accuracy", "score")  # the first the info has is the signal


@dataclass(frozen=True)
class HintConfig:
    kind: HintKind = field(
        default="ghpo", metadata={"help": "ghpo (dead-band steps) or paint (alpha from failure)"}
    )
    alpha0: float = field(default=0.5, metadata={"help": "alpha of the first window, in [0, 1]"})
    alpha_min: float = field(default=0.0, metadata={"help": "lowest alpha, in [0, 1]"})
    alpha_max: float = field(default=1.0, metadata={"help": "highest alpha, in [alpha_min, 1]"})
    step: float = field(default=0.25, metadata={"help": "ghpo: alpha change per window, in (0, 1]"})
    low: float = field(default=0.3, metadata={"help": "ghpo: success below this raises alpha, in [0, 1]"})
    high: float = field(default=0.7, metadata={"help": "ghpo: success above this lowers alpha, in [low, 1]"})
    decay: float = field(default=0.5, metadata={"help": "paint: EMA weight of the old success, in [0, 1)"})

    def __post_init__(self) -> None:
        if self.kind not in get_args(HintKind):
            raise ValueError(f"HintConfig.kind must be one of {get_args(HintKind)}, got {self.kind!r}")
        for name in ("alpha0", "alpha_min", "alpha_max", "low", "high"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"HintConfig.{name} must be in [0, 1], got {value}")
        if not self.alpha_min <= self.alpha0 <= self.alpha_max:
            raise ValueError("HintConfig needs alpha_min <= alpha0 <= alpha_max")
        if not self.low <= self.high:
            raise ValueError(f"HintConfig needs low <= high, got {self.low} > {self.high}")
        if not (math.isfinite(self.step) and 0.0 < self.step <= 1.0):
            raise ValueError(f"HintConfig.step must be in (0, 1], got {self.step}")
        if not (math.isfinite(self.decay) and 0.0 <= self.decay < 1.0):
            raise ValueError(f"HintConfig.decay must be in [0, 1), got {self.decay}")


def success_of(info: dict) -> float:
    """The window's success rate from the env's info (NaN when it gives none).

    The first of SUCCESS_KEYS the info has is the signal: a NaN there (the real env's band that no
    problem of the window drew) is no signal, not a reason to read the next key (the overall score
    would move that band's alpha on the other bands' accuracy)."""
    for key in SUCCESS_KEYS:
        if key in info:
            value = info[key]
            if isinstance(value, (int, float, np.floating)) and math.isfinite(float(value)):
                return min(max(float(value), 0.0), 1.0)
            return math.nan
    return math.nan


class HintController(OpenLoop):
    """Moves alpha against the student's success (see the module docstring)."""

    def __new__(
        cls,
        observation_space: gym.spaces.Box | None = None,
        action_space: gym.spaces.Box | None = None,
        cfg: HintConfig | None = None,
    ):
        """Under a per-band action (K alphas): K independent copies, one per band (`PerBand`). (The
        spaces default to None for copy and pickle, which call `__new__(cls)` alone.)"""
        if action_space is not None and action_size(action_space) > 1:
            return PerBand(cls, observation_space, action_space, cfg or HintConfig())
        return super().__new__(cls)

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: HintConfig | None = None
    ) -> None:
        self.cfg = cfg or HintConfig()
        low, high = float(action_space.low[0]), float(action_space.high[0])
        if not (low <= self.cfg.alpha_min and self.cfg.alpha_max <= high):
            raise ValueError(
                f"HintConfig [alpha_min, alpha_max] = [{self.cfg.alpha_min}, {self.cfg.alpha_max}] lies "
                f"outside the action space [{low}, {high}]"
            )
        self.action_space = action_space
        self.reset()

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Each episode starts again at alpha0 (a new student: its success is unknown)."""
        self.alpha, self.success = self.cfg.alpha0, math.nan

    def act(self, obs: np.ndarray) -> np.ndarray:
        return as_action(self.alpha, self.action_space)

    def observe(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> dict[str, float]:
        check_transition(obs, reward, next_obs)
        s, c = success_of(info), self.cfg
        if math.isfinite(s):
            if c.kind == "ghpo":
                if s < c.low:
                    self.alpha += c.step
                elif s > c.high:
                    self.alpha -= c.step
            else:
                self.success = (
                    s if not math.isfinite(self.success) else c.decay * self.success + (1 - c.decay) * s
                )
                self.alpha = c.alpha_min + (c.alpha_max - c.alpha_min) * (1.0 - self.success)
            self.alpha = min(max(self.alpha, c.alpha_min), c.alpha_max)
        return {"controller/success": s, "controller/next_alpha": self.alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "success": self.success}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.success = float(state["alpha"]), float(state["success"])
