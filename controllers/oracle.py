"""The oracle: acts with the best exposure the mock env reports for its state (the benchmarks' upper bound).

Owns the last `info["oracle_alpha"]` it was shown (by the reset info and by every step's info) and acts
with it. It knows nothing of why that alpha is best; only the mock env can say, so on the real env
(whose info has no `oracle_alpha`, or a NaN one) it refuses to run instead of acting on a made-up value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from controllers.base import as_action, check_transition


@dataclass(frozen=True)
class OracleConfig:
    """No options: the oracle's behaviour is fully set by the env."""


def read_oracle_alpha(info: dict | None) -> float | list[float]:
    """The finite `oracle_alpha` of an env info dict (a list of them under the per-band action);
    ValueError where it is missing or not finite."""
    raw = math.nan if info is None else info.get("oracle_alpha", math.nan)
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if not values.size or not np.all(np.isfinite(values)):
        raise ValueError(
            f"the oracle controller only works on the mock env: info['oracle_alpha'] is "
            f"{'missing' if info is None or 'oracle_alpha' not in info else raw} (the real env has none)"
        )
    return [float(v) for v in values] if isinstance(raw, (list, tuple, np.ndarray)) else float(values[0])


class OracleController:
    """Acts with the most recent `oracle_alpha` reported by the env."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: OracleConfig | None = None
    ) -> None:
        self.cfg = cfg or OracleConfig()
        self.action_space = action_space
        self.oracle_alpha: float | list[float] | None = None

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Reads the oracle alpha of the env's reset info (ValueError where there is none)."""
        self.oracle_alpha = read_oracle_alpha(info)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The env's current oracle alpha, clipped into the action space."""
        if self.oracle_alpha is None:
            raise ValueError("the oracle controller only works on the mock env; call reset(info=...) first")
        return as_action(self.oracle_alpha, self.action_space)

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
        """Stores the step's oracle alpha for the next decision; reports it as `controller/oracle_alpha`."""
        check_transition(obs, reward, next_obs)
        self.oracle_alpha = read_oracle_alpha(info)
        return {"controller/oracle_alpha": float(np.mean(self.oracle_alpha))}

    def pop_credits(self) -> list[dict[str, float]]:
        """No per-decision credit to report (returns are not rebuilt here)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"oracle_alpha": self.oracle_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state["oracle_alpha"]
        self.oracle_alpha = None if value is None else value if isinstance(value, list) else float(value)
