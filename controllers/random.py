"""Uniformly random exposure: the paper's uncontrolled control (random alpha 54.94 vs OPSD 57.20 on AIME24).

Owns its own numpy generator and the interval [low, high]; every decision draws a fresh alpha, ignoring
observations and rewards. It shows what exposure variation without control costs; it learns nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from controllers.base import OpenLoop, action_size, as_action, whole


@dataclass(frozen=True)
class RandomConfig:
    low: float = field(default=0.0, metadata={"help": "lowest alpha drawn, in [0, 1]"})
    high: float = field(default=1.0, metadata={"help": "highest alpha drawn, in [low, 1]"})
    seed: int = field(
        default=0, metadata={"help": "seed of the controller's generator (reset(seed) reseeds from both)"}
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and 0.0 <= self.low <= 1.0):
            raise ValueError(f"RandomConfig.low must be in [0, 1], got {self.low}")
        if not (math.isfinite(self.high) and self.low <= self.high <= 1.0):
            raise ValueError(f"RandomConfig.high must be in [low={self.low}, 1], got {self.high}")
        if not (whole(self.seed) and self.seed >= 0):
            raise ValueError(f"RandomConfig.seed must be a whole number >= 0, got {self.seed}")


class RandomController(OpenLoop):
    """Draws alpha ~ Uniform[low, high] at every decision from its own generator."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: RandomConfig | None = None
    ) -> None:
        self.cfg = cfg or RandomConfig()
        action_size(action_space)
        low, high = float(action_space.low[0]), float(action_space.high[0])
        if not low <= self.cfg.low <= self.cfg.high <= high:
            raise ValueError(
                f"RandomConfig [low, high] = [{self.cfg.low}, {self.cfg.high}] lies outside the action space "
                f"[{low}, {high}]"
            )
        self.action_space = action_space
        self.rng = np.random.default_rng(self.cfg.seed)

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Reseeds the generator from (cfg.seed, seed) when `seed` is given; otherwise the stream
        continues. From `seed` alone its draws were the env's own (Gymnasium seeds `np_random` from the
        same number the same way): the mock's noise, the real env's engine seed."""
        if seed is not None:
            self.rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, seed]))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """A fresh uniform alpha in [low, high] (per band: one independent draw per band)."""
        size = self.action_space.shape[0]
        draw = (
            self.rng.uniform(self.cfg.low, self.cfg.high)
            if size == 1
            else self.rng.uniform(self.cfg.low, self.cfg.high, size)
        )
        return as_action(draw, self.action_space)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
