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

from controllers.base import OpenLoop, action_size, as_action


@dataclass(frozen=True)
class FixedConfig:
    alpha: float = field(default=1.0, metadata={"help": "the exposure used at every decision (1.0 = OPSD)"})
    alphas: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "per-band action: one alpha per band, in the env's band order (empty: `alpha` for "
            "every band)"
        },
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"FixedConfig.alpha must be in [0, 1], got {self.alpha}")
        for value in self.alphas:
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"FixedConfig.alphas must each be in [0, 1], got {list(self.alphas)}")


class FixedController(OpenLoop):
    """Always acts with `cfg.alpha` (per band: `cfg.alphas`, or `cfg.alpha` for every band)."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: FixedConfig | None = None
    ) -> None:
        self.cfg = cfg or FixedConfig()
        size = action_size(action_space)
        values = self.cfg.alphas or (self.cfg.alpha,) * size
        if len(values) != size:
            raise ValueError(
                f"FixedConfig.alphas has {len(values)} values; the action has {size} (one per band)"
            )
        low, high = float(action_space.low.min()), float(action_space.high.max())
        if not all(low <= v <= high for v in values):
            raise ValueError(
                f"FixedConfig alpha {list(values)} lies outside the action space [{low}, {high}]"
            )
        self.action_space = action_space
        self._action = as_action(values, action_space)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The configured alpha(s) as a (K,) float32 action, whatever the observation."""
        return self._action.copy()
