"""A constant exposure: the paper's fixed-alpha baselines; alpha = 1 is OPSD (plain self-distillation).

Owns one number and nothing else: it ignores observations and rewards, learns nothing and draws no
randomness. It does not know what alpha means to the teacher; the best fixed alpha in the paper's
sweep is 0.5 (57.44 on AIME24 vs OPSD's 57.20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from controllers.base import OpenLoop, as_action


@dataclass(frozen=True)
class FixedConfig:
    alpha: float = field(default=1.0, metadata={"help": "the exposure used at every decision (1.0 = OPSD)"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"FixedConfig.alpha must be in [0, 1], got {self.alpha}")


class FixedController(OpenLoop):
    """Always acts with `cfg.alpha`."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: FixedConfig | None = None
    ) -> None:
        self.cfg = cfg or FixedConfig()
        low, high = float(action_space.low[0]), float(action_space.high[0])
        if not low <= self.cfg.alpha <= high:
            raise ValueError(
                f"FixedConfig.alpha={self.cfg.alpha} lies outside the action space [{low}, {high}]"
            )
        self.action_space = action_space
        self._action = as_action(self.cfg.alpha, action_space)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The configured alpha as a (1,) float32 action, whatever the observation."""
        return self._action.copy()
