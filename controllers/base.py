"""The Controller protocol, the one interaction loop, and controller state (de)serialisation.

A controller is an agent in any env with the exposure action space: it is built from the spaces and
its config, acts on observation arrays, learns from (obs, action, reward, next_obs, ...) tuples and
never sees the engine. `run_episode` is the only loop that drives a controller; recipes and tests
call it. State dicts hold tensors, numpy arrays and JSON scalars and round-trip through
safetensors + JSON (no pickle).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np


class Controller(Protocol):
    """An exposure agent. Constructed as `cls(observation_space, action_space, cfg)`.

    Learned parameters persist across `reset`; per-episode buffers (pending decisions) do not.
    """

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Start an episode; `seed` reseeds the controller's own RNG, `info` is the env's reset info."""
        ...

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action (shape (1,), float32, inside the action space) for observation `obs`."""
        ...

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
        """Learn from one transition; returns controller metrics (namespaced `controller/*`)."""
        ...

    def pop_credits(self) -> list[dict[str, float]]:
        """The credits given since the last call: `{"decision": i, "return": R, "advantage": A}` per
        decision a learner has scored (logged to decisions.jsonl); `[]` for one that keeps none."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OpenLoop:
    """Shared by controllers that learn nothing (fixed, random, schedule): `observe` only validates
    the transition and reports no metrics; no state unless a subclass adds some (random's RNG)."""

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Nothing to reset."""

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
        """Validates the transition; learns nothing and reports no metrics."""
        check_transition(obs, reward, next_obs)
        return {}

    def pop_credits(self) -> list[dict[str, float]]:
        """No per-decision credit to report (returns are not rebuilt here)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts the (empty) state of another instance."""


def check_transition(obs: np.ndarray, reward: float, next_obs: np.ndarray) -> None:
    """Raise ValueError on a NaN or infinite reward or observation (a controller never learns from one)."""
    if not math.isfinite(float(reward)):
        raise ValueError(f"reward must be finite, got {reward}")
    for name, value in (("obs", obs), ("next_obs", next_obs)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {np.asarray(value).tolist()}")


def as_action(alpha: float, action_space: gym.spaces.Box) -> np.ndarray:
    """A scalar alpha as a (1,) float32 action, clipped into the action space's bounds."""
    low, high = float(action_space.low[0]), float(action_space.high[0])
    return np.array([min(max(float(alpha), low), high)], dtype=np.float32)


@dataclass
class EpisodeResult:
    """What one episode produced, step by step (from `start` on, when an episode was resumed);
    `start_info` is the reset's info (empty for a resumed episode): where the episode started."""

    rewards: list[float] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    controller_metrics: list[dict[str, float]] = field(default_factory=list)
    final_info: dict = field(default_factory=dict)
    start_info: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def start_score(self) -> float:
        """The env's score at reset (NaN where the env reports none there, or the episode resumed)."""
        return float(self.start_info.get("score", math.nan))


class Transition(NamedTuple):
    """One env step as the controller saw it, and what the controller reported."""

    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    info: dict
    metrics: dict[str, float]


def run_episode(
    env: gym.Env,
    controller: Controller,
    logger: Callable[[int, dict[str, float]], None] | None = None,
    seed: int | None = None,
    start: tuple[np.ndarray, int] | None = None,
    on_step: Callable[[int, Transition], None] | None = None,
    on_reset: Callable[[np.ndarray, dict], None] | None = None,
) -> EpisodeResult:
    """Drive `controller` through one episode of `env` (the only interaction loop in the project).

    `logger(step, metrics)` receives, per env step, the step's numbers under the logs' key scheme
    (`step_metrics`: `env/*`, `reward/*`, `stats/*`, `time/*`, `eval/*`) and `controller/*` metrics;
    `on_step(step, transition)` the whole transition, after the controller learnt from it (the place
    to checkpoint); `on_reset(obs, info)` the reset's observation and info (the place to log where
    the episode starts).
    `start=(obs, steps_done)` continues an episode whose env and controller states were restored
    from a checkpoint taken after `steps_done` steps at observation `obs`, instead of resetting.
    """
    result = EpisodeResult()
    if start is None:
        obs, info = env.reset(seed=seed)
        controller.reset(seed=seed, info=info)
        result.start_info, step0 = info, 0
        if on_reset is not None:
            on_reset(obs, info)
    else:
        obs, step0 = start
    done = False
    while not done:
        action = controller.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        metrics = controller.observe(obs, action, float(reward), next_obs, terminated, truncated, info)
        result.rewards.append(float(reward))
        result.alphas.append(float(info.get("alpha", np.asarray(action, dtype=np.float64).flat[0])))
        result.scores.append(float(info.get("score", math.nan)))  # envs of others may report none
        result.controller_metrics.append(metrics)
        step = step0 + result.steps
        if logger is not None:
            logger(step, step_metrics(info, float(reward)) | metrics)
        if on_step is not None:
            on_step(
                step, Transition(obs, action, float(reward), next_obs, terminated, truncated, info, metrics)
            )
        obs, done = next_obs, terminated or truncated
    result.final_info = info
    return result


def step_metrics(info: dict, reward: float) -> dict[str, float]:
    """The numbers of one env step under the one key scheme of the logs: info keys that carry a
    namespace keep it (`reward/progress`, `stats/loss`, `time/window_s`), bare ones go under `env/`
    (`env/alpha`, `env/score`), a dict one level deep is flattened (`eval/accuracy/C6`), and the step's
    reward is `env/reward`."""
    out: dict[str, float] = {}
    for key, value in info.items():
        name = key if "/" in key else f"env/{key}"
        if _is_number(value):
            out[name] = float(value)
        elif isinstance(value, dict):
            out |= {f"{key}/{k}": float(v) for k, v in value.items() if _is_number(v)}
    return out | {"env/reward": reward}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
