"""A hand-written exposure curriculum: alpha as a fixed function of training progress t / T.

Owns the curve from `alpha0` (progress 0) to `alpha1` (progress 1), linear, cosine, or a step
(`alpha0` until progress `switch`, then `alpha1`); reads only the
observation's progress entry (index 0, see `envs.spec.OBSERVATION`) and learns nothing. It is the
open-loop baseline for the paper's finding that the learned Beta drifts upward during training.
Decisions happen at progress t / T < 1, so `alpha1` itself is reached only in the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import gymnasium as gym
import numpy as np

from controllers.base import OpenLoop, as_action, check_observation

ScheduleKind = Literal["linear", "cosine", "step"]


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleKind = field(
        default="linear",
        metadata={
            "help": "curve shape: linear, cosine (flat at both ends), step (alpha0, alpha1 from switch)"
        },
    )
    alpha0: float = field(default=0.25, metadata={"help": "alpha at progress 0, in [0, 1]"})
    alpha1: float = field(default=0.75, metadata={"help": "alpha at progress 1, in [0, 1]"})
    switch: float = field(
        default=0.5, metadata={"help": "kind=step: the progress alpha1 starts at, in [0, 1]"}
    )

    def __post_init__(self) -> None:
        if self.kind not in get_args(ScheduleKind):
            raise ValueError(
                f"ScheduleConfig.kind must be one of {get_args(ScheduleKind)}, got {self.kind!r}"
            )
        for name in ("alpha0", "alpha1", "switch"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"ScheduleConfig.{name} must be in [0, 1], got {value}")


def schedule_alpha(
    progress: float, kind: ScheduleKind, alpha0: float, alpha1: float, switch: float = 0.5
) -> float:
    """Alpha at `progress` in [0, 1] (clipped): linear interpolation, a step (alpha0 below `switch`,
    alpha1 from it on), or alpha1 + (alpha0 - alpha1) * (1 + cos(pi * p)) / 2 for the cosine curve."""
    p = min(max(float(progress), 0.0), 1.0)
    if kind == "linear":
        return alpha0 + (alpha1 - alpha0) * p
    if kind == "step":
        return alpha1 if p >= switch - 1e-9 else alpha0
    return alpha1 + (alpha0 - alpha1) * (1.0 + math.cos(math.pi * p)) / 2.0


class ScheduleController(OpenLoop):
    """Acts with `schedule_alpha(obs[0])`."""

    reads = {"progress": 0}  # observation entries it relies on, by name and index (checked at build)

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        cfg: ScheduleConfig | None = None,
    ) -> None:
        self.cfg = cfg or ScheduleConfig()
        low, high = float(action_space.low[0]), float(action_space.high[0])
        for name in ("alpha0", "alpha1"):
            value = getattr(self.cfg, name)
            if not low <= value <= high:
                raise ValueError(
                    f"ScheduleConfig.{name}={value} lies outside the action space [{low}, {high}]"
                )
        self.action_space = action_space
        self.obs_size = int(np.prod(observation_space.shape))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The scheduled alpha at the observation's progress `obs[0]`."""
        check_observation(obs, self.obs_size)
        alpha = schedule_alpha(
            float(obs[0]), self.cfg.kind, self.cfg.alpha0, self.cfg.alpha1, self.cfg.switch
        )
        return as_action(alpha, self.action_space)
