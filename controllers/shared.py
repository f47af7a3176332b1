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
    `broadcast_float(alpha) -> alpha` (rank 0's value on every rank); on the other ranks it only
    receives the broadcast alpha, and learns, saves and reports nothing (the envs see identical
    averaged statistics on every rank).
    """

    def __init__(self, controller: Any, is_main: bool, broadcast_float: Callable[[float], float]) -> None:
        self.controller, self.is_main, self.broadcast_float = controller, is_main, broadcast_float

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        if self.is_main:
            self.controller.reset(seed=seed, info=info)

    def act(self, obs: np.ndarray) -> np.ndarray:
        alpha = float(self.controller.act(obs)[0]) if self.is_main else 0.0
        return np.array([self.broadcast_float(alpha)], dtype=np.float32)

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
