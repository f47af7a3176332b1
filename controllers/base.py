"""The Controller protocol, the one interaction loop, and controller state (de)serialisation.

A controller is an agent in any env with the exposure action space: it is built from the spaces and
its config, acts on observation arrays, learns from (obs, action, reward, next_obs, ...) tuples and
never sees the engine. `run_episode` is the only loop that drives a controller; recipes and tests
call it. State dicts hold tensors, numpy arrays and JSON scalars and round-trip through
safetensors + JSON (no pickle).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

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
        """The action (shape (K,), float32, inside the action space: K = 1 for the global alpha, one
        per band for the per-band action) for observation `obs`."""
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


class PerBand:
    """K independent single-alpha controllers, one per band of a per-band action `Box(0, 1, (K,))`.

    Controllers without a vector action of their own (bandit, hint) become this when built for a
    per-band env (their `__new__` returns one): member i acts for alpha i, sees the whole
    observation and the shared step reward, and an info dict for its band (`band_info`). Member i's
    config seed is the config's seed + i. Metrics and credits carry the band index (`.../<i>`,
    `"band": i`); the state is the members' states.
    """

    def __init__(
        self, cls: type, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: Any
    ) -> None:
        self.action_space = action_space
        size = action_size(action_space)
        self.members = []
        for i in range(size):
            member_cfg = cfg
            if cfg is not None and "seed" in {f.name for f in dataclasses.fields(cfg)}:
                member_cfg = dataclasses.replace(cfg, seed=cfg.seed + i)
            space = gym.spaces.Box(
                action_space.low[i : i + 1], action_space.high[i : i + 1], dtype=np.float32
            )
            self.members.append(cls(observation_space, space, member_cfg))
        self.cfg = self.members[0].cfg

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        for i, member in enumerate(self.members):
            band_seed = None if seed is None else int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            member.reset(seed=band_seed, info=None if info is None else band_info(info, i))

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([member.act(obs) for member in self.members]).astype(np.float32)

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
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        metrics: dict[str, float] = {}
        for i, member in enumerate(self.members):
            out = member.observe(
                obs, action[i : i + 1], reward, next_obs, terminated, truncated, band_info(info, i)
            )
            metrics |= {f"{key}/{i}": value for key, value in out.items()}
        return metrics

    def pop_credits(self) -> list[dict[str, float]]:
        return [
            credit | {"band": i} for i, member in enumerate(self.members) for credit in member.pop_credits()
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"bands": [member.state_dict() for member in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        bands = state.get("bands") if isinstance(state, dict) else None
        if not isinstance(bands, list) or len(bands) != len(self.members):
            raise ValueError(
                f"a per-band controller state needs {len(self.members)} band states, got "
                f"{len(bands) if isinstance(bands, list) else 'none'}"
            )
        for member, band_state in zip(self.members, bands):
            member.load_state_dict(band_state)


def band_info(info: dict, i: int) -> dict:
    """The env info as band i's member sees it: `alpha` and `oracle_alpha` (lists under the
    per-band action) become band i's entry, and `stats/rollout_accuracy` band i's rollout accuracy
    (`band_accuracy[i]`, where the env gives one)."""
    out = dict(info)
    for key in ("alpha", "oracle_alpha"):
        if isinstance(info.get(key), (list, tuple)):
            out[key] = info[key][i]
    accuracy = info.get("band_accuracy")
    if isinstance(accuracy, (list, tuple)) and i < len(accuracy):
        out["stats/rollout_accuracy"] = accuracy[i]
    return out


def whole(n: object) -> bool:
    """An int (numpy's too), not a bool: a count or a seed. A float passed every range check and failed
    at the first update (`2.5` decisions per batch), or ran rounded (`8.5` steps)."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def check_observation(obs: np.ndarray, size: int) -> None:
    """ValueError unless `obs` holds `size` finite numbers: what `act` is given (a NaN failed deep inside
    torch's Beta, a wrong length in a matrix product, and a schedule returned a NaN alpha)."""
    values = np.asarray(obs, dtype=np.float64).reshape(-1)
    if values.size != size:
        raise ValueError(f"the observation has {values.size} values; the observation space has {size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"obs must be finite, got {values.tolist()}")


def check_transition(obs: np.ndarray, reward: float, next_obs: np.ndarray) -> None:
    """Raise ValueError on a NaN or infinite reward or observation (a controller never learns from one)."""
    if not math.isfinite(float(reward)):
        raise ValueError(f"reward must be finite, got {reward}")
    for name, value in (("obs", obs), ("next_obs", next_obs)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {np.asarray(value).tolist()}")


F = TypeVar("F", bound=Callable)


def one_thread(fn: F) -> F:
    """Run `fn` on one torch thread and give the caller its thread count back: for a controller's
    `__init__`, `act` and `observe` when they run a torch network. run.py's thread count follows the
    machine's load (atesd/threads.py), and a small network's results moved in the last bits with it
    (an orthogonal init is a QR, which MKL splits otherwise on one and two threads; updates too), so a
    run's decisions depended on what else was running; on one thread they do not (and are no slower
    at this size)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        previous = torch.get_num_threads()
        if previous == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]


def as_action(
    alpha: float | Sequence[float] | np.ndarray, action_space: gym.spaces.Box, clip: bool = True
) -> np.ndarray:
    """An alpha, or one per band, as a float32 action of the space's shape, clipped into its bounds:
    a scalar is broadcast (the same alpha for every band), a sequence must match the shape. Clipping
    is for controllers that probe at the bounds (alpha + delta near 1); with `clip=False` a value
    outside them by more than rounding (1e-6) is a ValueError, so a controller that computes alpha 7
    says so instead of running at 1. A NaN is never repaired (the env refuses it)."""
    values = np.asarray(alpha, dtype=np.float64)
    size = action_size(action_space)
    if values.ndim == 0:
        values = np.full(size, float(values))
    values = values.reshape(-1)
    if values.size != size:
        raise ValueError(f"{values.size} alphas for an action space of {size}")
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    outside = (values < low - 1e-6) | (values > high + 1e-6)
    if not clip and outside.any():
        raise ValueError(
            f"the controller's alpha {values[outside][0]:g} is outside the action space's "
            f"[{low.min():g}, {high.max():g}] (as_action(..., clip=False) clips rounding only)"
        )
    return np.clip(values, low, high).astype(np.float32)


def action_size(action_space: gym.spaces.Box) -> int:
    """The number of alphas an action holds: 1 (one global alpha) or one per band. ValueError for a
    space that is not a flat Box."""
    if (
        not isinstance(action_space, gym.spaces.Box)
        or len(action_space.shape) != 1
        or action_space.shape[0] < 1
    ):
        raise ValueError(f"exposure controllers need a Box action of shape (K,), got {action_space}")
    return int(action_space.shape[0])


def check_alpha_range(alpha_min: float, alpha_max: float, action_space: gym.spaces.Box, name: str) -> None:
    """ValueError unless [alpha_min, alpha_max], where a learner keeps its sampled alphas, lies inside
    every band's bounds of the action space: otherwise `as_action` would clip some samples again and
    the learner's log-probabilities would be of alphas the env never ran."""
    low, high = float(np.max(action_space.low)), float(np.min(action_space.high))
    if not low <= alpha_min < alpha_max <= high:
        raise ValueError(
            f"{name}.alpha_min and alpha_max [{alpha_min:g}, {alpha_max:g}] must lie inside the action "
            f"space's bounds [{low:g}, {high:g}]: set them to fit"
        )


def mean_alpha(alpha: Any) -> float:
    """One number for an alpha or a per-band list (their mean): what the curves and tables show."""
    values = np.asarray(alpha, dtype=np.float64).reshape(-1)
    return float(values.mean()) if values.size else math.nan


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


def check_fits(env: gym.Env, controller: Any) -> None:
    """ValueError in one line when `controller` was built for another env than `env`: an H or gamma
    other than the env's `reward_spec` (its returns would be windowed and discounted otherwise: PPO's
    silently), or an observation entry it reads by position (`reads`) that the env's
    `observation_names` put elsewhere. What the env does not declare is trusted. Build controllers
    with `recipes.common.build_controller`, which takes H and gamma from the env."""
    env = getattr(env, "unwrapped", env)
    reward, cfg = getattr(env, "reward_spec", None), getattr(controller, "cfg", None)
    for key in ("hold_steps", "gamma"):
        mine, theirs = getattr(cfg, key, None), getattr(reward, key, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"{type(controller).__name__} was built with {key}={mine}, but the env's reward_spec has "
                f"{key}={theirs}: build it with the env's (recipes.common.build_controller does)"
            )
    check_reads(type(controller), getattr(env, "observation_names", None), type(controller).__name__,
                observation_size(env))  # fmt: skip


def observation_size(env: Any) -> int | None:
    """The number of entries of a flat Box observation space; None for another space."""
    space = getattr(env, "observation_space", None)
    shape = getattr(space, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 1 else None


def check_reads(cls: type, names: Sequence[str] | None, name: str, size: int | None = None) -> None:
    """A controller that reads observation entries by position (`cls.reads`, name -> index) runs only
    on an env whose `observation_names` put those names there; an env that names no entries is
    trusted (an outside env: its layout is the user's to match)."""
    for entry, index in getattr(cls, "reads", {}).items():
        if names is None and size is not None and index >= size:  # an IndexError at the first act
            raise ValueError(
                f"controller {name} reads observation entry {index} as '{entry}', but this env's "
                f"observations have {size} entries"
            )
        if names is not None and (index >= len(names) or names[index] != entry):
            found = names[index] if index < len(names) else "nothing"
            raise ValueError(
                f"controller {name} reads observation entry {index} as '{entry}', but this env has "
                f"'{found}' there (its observation: {', '.join(names)})"
            )


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
    check_fits(env, controller)
    result = EpisodeResult()
    if start is None:
        obs, info = env.reset(seed=seed)
        controller.reset(seed=seed, info=info)
        result.start_info, step0 = info, 0
        if on_reset is not None:
            on_reset(obs, info)
    else:
        obs, step0 = start
    done, name = False, type(controller).__name__
    while not done:
        window = step0 + result.steps + 1
        try:  # an error names where it came from (try costs nothing until it raises)
            action = controller.act(obs)
        except Exception as err:
            note_error(err, f"in {name}.act, window {window}")
            raise
        try:
            next_obs, reward, terminated, truncated, info = env.step(action)
        except Exception as err:
            note_error(err, f"in env.step of {name}'s action at window {window}")
            raise
        try:
            metrics = controller.observe(obs, action, float(reward), next_obs, terminated, truncated, info)
        except Exception as err:
            note_error(err, f"in {name}.observe, window {window}")
            raise
        result.rewards.append(float(reward))
        result.alphas.append(mean_alpha(info.get("alpha", action)))  # per band: their mean
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


def note_error(err: BaseException, where: str) -> None:
    """Attach `where` to `err` as a note (Python 3.11+; the recipes' one-line errors print it), so an
    error in a controller names the method and window it came from (a numpy error in observe named
    neither)."""
    if hasattr(err, "add_note") and where not in getattr(err, "__notes__", ()):
        err.add_note(where)


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
