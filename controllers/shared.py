"""SharedDecisions: one controller decides for every data-parallel rank.

A wrapper of any controller (the `controllers.base.Controller` protocol) for runs under torchrun:
rank 0's controller acts and learns, and each action is broadcast so every rank trains at the same
alpha (a random draw per rank would desynchronise them). It is given the broadcast as a function and
knows nothing of torch.distributed or of the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class SharedDecisions:
    """Rank 0's controller decides; every rank acts with the alpha it broadcasts.

    On rank 0 (`is_main`) everything passes through to `controller` and each action is broadcast with
    `broadcast_float(alpha) -> alpha` (rank 0's value on every rank; one call per alpha of the
    action); on the other ranks it only receives the broadcast alphas, and learns, saves and
    reports nothing (the envs see identical averaged statistics on every rank).
    """

    def __init__(
        self, controller: Any, is_main: bool, broadcast_float: Callable[[float], float], size: int = 1
    ) -> None:
        """`size`: the action's length (K alphas under the per-band action), each one broadcast."""
        if size < 1:
            raise ValueError(f"an action holds at least one alpha, got size {size}")
        self.controller, self.is_main, self.broadcast_float, self.size = (
            controller,
            is_main,
            broadcast_float,
            size,
        )

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        if self.is_main:
            self.controller.reset(seed=seed, info=info)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.is_main:
            action = np.asarray(self.controller.act(obs), dtype=np.float32).reshape(-1)
            if action.size != self.size:
                raise ValueError(f"the controller gave {action.size} alphas for an action of {self.size}")
        else:
            action = np.zeros(self.size, dtype=np.float32)
        return np.array([self.broadcast_float(float(alpha)) for alpha in action], dtype=np.float32)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> dict[str, float]:
        if not self.is_main:
            return {}
        return self.controller.observe(obs, action, reward, next_obs, terminated, truncated, info)

    def pop_credits(self) -> list[dict[str, float]]:
        return self.controller.pop_credits() if self.is_main else []

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)
