"""Adding a controller is one file plus one registry line (docs/CONTROLLERS.md), exercised end to end.

The example controller of docs/CONTROLLERS.md (a hill-climber on alpha), registered for each test: its
fields are configurable through RunConfig (a misspelled one is refused with the closest name), it runs
on the mock env through run_episode with actions in bounds, repeats under a seed, resumes exactly from
its saved state, and benchmarks against `fixed` through bench.py's Python API.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import controllers
import envs  # noqa: F401  (registers atesd/MockExposure-v0)
from atesd import config as cfglib
from atesd.state import load_state, save_state
from controllers.base import as_action, check_transition, run_episode
from controllers.credit import PendingDecisions, credit_checks
from envs.mock_env import MockConfig
from recipes import bench
from recipes.common import RunConfig, build_controller

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "# ---- begin: the example of docs/CONTROLLERS.md ----\n", "# ---- end of the example ----\n"


# ---- begin: the example of docs/CONTROLLERS.md ----
@dataclass(frozen=True)
class HillClimbConfig:
    """The hill-climber's settings; a probe earns its discounted, grounded return (controllers.credit)."""

    alpha0: float = field(default=0.5, metadata={"help": "starting centre, in [0, 1]"})
    delta: float = field(default=0.1, metadata={"help": "probe offset around the centre, in (0, 0.5]"})
    step: float = field(default=0.05, metadata={"help": "centre move toward the better probe, in (0, 1]"})
    hold_steps: int = field(default=5, metadata={"help": "student updates per env step, H (= the env's)"})
    lookahead_steps: int = field(default=10, metadata={"help": "lookahead L in updates, a multiple of H"})
    gamma: float = field(default=0.9, metadata={"help": "per-update discount of the lookahead, in (0, 1]"})
    seed: int = field(default=0, metadata={"help": "seed of the probe order (with reset's seed)"})

    def __post_init__(self) -> None:
        checks = (
            ("alpha0", math.isfinite(self.alpha0) and 0.0 <= self.alpha0 <= 1.0, "in [0, 1]"),
            ("delta", math.isfinite(self.delta) and 0.0 < self.delta <= 0.5, "in (0, 0.5]"),
            ("step", math.isfinite(self.step) and 0.0 < self.step <= 1.0, "in (0, 1]"),
            ("seed", self.seed >= 0, ">= 0"),
            *credit_checks("discounted_grounded", self.hold_steps, self.lookahead_steps, self.gamma, "drop"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"HillClimbConfig.{name} must be {rule}, got {getattr(self, name)!r}")


class HillClimbController:
    """Acts centre + s * delta for a pair of decisions, s = +1 and -1 in random order; once both returns
    are known, moves the centre by `step` toward the probe with the larger return."""

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        cfg: HillClimbConfig | None = None,
    ) -> None:
        self.cfg = cfg or HillClimbConfig()
        self.action_space = action_space
        self.rng = np.random.default_rng(self.cfg.seed)
        self.centre = self.cfg.alpha0
        self.credit = PendingDecisions(
            "discounted_grounded", self.cfg.hold_steps, self.cfg.lookahead_steps, self.cfg.gamma
        )
        self.signs: list[int] = []  # probe signs still to play in the current pair
        self.sign = 0  # sign of the last action
        self.returns: dict[int, float] = {}  # sign -> return, for the pair being credited

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """Drops pending probes and half-done pairs; reseeds from (cfg.seed, seed) when `seed` is given;
        the centre persists."""
        self.credit.clear()
        self.signs, self.returns = [], {}
        if seed is not None:
            self.rng = np.random.default_rng([self.cfg.seed, seed])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The next probe of the current pair (a new pair in random order when it is done)."""
        if not self.signs:
            first = 1 if self.rng.random() < 0.5 else -1
            self.signs = [first, -first]
        self.sign = self.signs.pop(0)
        return as_action(self.centre + self.sign * self.cfg.delta, self.action_space)

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
        """Books the probe; credits those whose lookahead has passed; moves the centre after each pair."""
        check_transition(obs, reward, next_obs)
        for probe, ret in self.credit.push({"sign": self.sign}, info, terminated or truncated, reward):
            self.returns[int(probe["sign"])] = ret
            if len(self.returns) == 2:
                move = self.cfg.step if self.returns[1] > self.returns[-1] else -self.cfg.step
                self.centre = min(max(self.centre + move, 0.0), 1.0)
                self.returns = {}
        return {"controller/centre": self.centre}

    def pop_credits(self) -> list[dict[str, float]]:
        return []  # no per-decision credits to log

    def state_dict(self) -> dict[str, Any]:
        return {
            "centre": self.centre,
            "rng": self.rng.bit_generator.state,
            "signs": list(self.signs),
            "sign": self.sign,
            "returns": dict(self.returns),
            "pending": self.credit.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.centre = float(state["centre"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.signs = [int(s) for s in state["signs"]]
        self.sign = int(state["sign"])
        self.returns = {int(k): float(v) for k, v in state["returns"].items()}
        self.credit.load_state_dict(state["pending"])


# ---- end of the example ----


@pytest.fixture
def registered(monkeypatch):
    """hill_climb in the registry for one test (the registry line of the doc, undone afterwards)."""
    monkeypatch.setitem(controllers.CONTROLLERS, "hill_climb", (HillClimbController, HillClimbConfig))


def make(seed: int = 0, total_steps: int = 100, **fields: Any) -> tuple[gym.Env, HillClimbController]:
    env = gym.make("atesd/MockExposure-v0", total_steps=total_steps)
    return env, HillClimbController(
        env.observation_space, env.action_space, HillClimbConfig(seed=seed, **fields)
    )


def test_the_doc_shows_this_code():
    source = Path(__file__).read_text()
    example = source[source.index(BEGIN) + len(BEGIN) : source.index(END)].strip()
    assert example in (ROOT / "docs" / "CONTROLLERS.md").read_text()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="HillClimbConfig.delta must be in"):
        HillClimbConfig(delta=0.7)
    with pytest.raises(ValueError, match="HillClimbConfig.lookahead_steps"):
        HillClimbConfig(lookahead_steps=7)


def test_run_config_takes_its_fields_and_rejects_a_misspelled_one(registered):
    cfg = cfglib.load(RunConfig, None, ["controller=hill_climb", "controllers.hill_climb.delta=0.2"])
    assert cfg.controllers["hill_climb"]["delta"] == 0.2 and cfg.controllers["fixed"] == {
        "alpha": 1.0,
        "alphas": (),
    }
    with pytest.raises(cfglib.ConfigError, match="did you mean 'controllers.hill_climb.delta'"):
        cfglib.load(RunConfig, None, ["controllers.hill_climb.detla=0.2"])
    with pytest.raises(cfglib.ConfigError, match="delta must be in"):
        cfglib.load(RunConfig, None, ["controllers.hill_climb.delta=0.7"])
    # built by the recipes' builder: the run's seed and the env's hold window reach the config
    run = RunConfig(
        controller="hill_climb", env="mock", seed=4, mock=MockConfig(hold_steps=2, total_steps=40)
    )
    env = gym.make("atesd/MockExposure-v0", cfg=run.mock)
    controller = build_controller(run, env)
    assert (controller.cfg.seed, controller.cfg.hold_steps, controller.cfg.delta) == (4, 2, 0.1)


def test_runs_on_the_mock_env_in_bounds_and_repeats_under_a_seed():
    runs = []
    for _ in range(2):
        env, controller = make(seed=3)
        results = [run_episode(env, controller, seed=s) for s in (0, 1)]  # learns across the two
        runs.append([r.alphas for r in results])
        alphas = np.array(runs[-1])
        assert np.all((alphas >= 0.0) & (alphas <= 1.0))
        metrics = [m for r in results for m in r.controller_metrics]
        assert all(set(m) == {"controller/centre"} for m in metrics)
        centres = {m["controller/centre"] for m in metrics}
        assert centres - {controller.cfg.alpha0}  # it moved: returns were credited
    assert runs[0] == runs[1]
    env, other = make(seed=4)
    assert run_episode(env, other, seed=0).alphas != runs[0][0]  # the seed matters (probe order)


class OnlyTheReward(gym.Wrapper):
    """An env of someone else's: the exposure action and a step reward, none of our info keys."""

    def reset(self, **kw):
        obs, _ = self.env.reset(**kw)
        return obs, {}

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {}


def test_runs_on_an_env_that_gives_only_the_step_reward():
    env, controller = make(seed=3)
    result = run_episode(OnlyTheReward(env), controller, seed=0)
    assert len(result.alphas) == 20 and controller.centre != controller.cfg.alpha0  # credited, moved


def test_state_round_trip_mid_episode_acts_identically(tmp_path):
    env, controller = make(seed=1)
    run_episode(env, controller, seed=0)
    obs, info = env.reset(seed=1)
    controller.reset(seed=1, info=info)
    for _ in range(7):  # stop with probes pending and a pair half done
        action = controller.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        controller.observe(obs, action, reward, next_obs, terminated, truncated, info)
        obs = next_obs
    save_state(controller.state_dict(), tmp_path / "ctl")
    _, restored = make(seed=99)  # a different seed: everything that matters comes from the state
    restored.load_state_dict(load_state(tmp_path / "ctl"))
    traces = []
    for ctl, e in ((controller, env), (restored, copy.deepcopy(env))):
        o, trace = obs.copy(), []
        for _ in range(12):
            action = ctl.act(o)
            next_o, reward, terminated, truncated, info = e.step(action)
            ctl.observe(o, action, reward, next_o, terminated, truncated, info)
            trace.append((float(action[0]), ctl.centre))
            o = next_o
        traces.append(trace)
    assert traces[0] == traces[1]


def test_bench_against_fixed(registered, tmp_path):
    argv = [
        "--controllers",
        "hill_climb,fixed",
        "--env",
        "mock",
        "--seeds",
        "3",
        "--set",
        "mock.total_steps=100",
    ]
    run_dir = bench.main([*argv, "--out", str(tmp_path), "--name", "hill"])
    record = json.loads((run_dir / "results.json").read_text())
    summary = record["summary"]["mock"]
    assert list(summary) == ["hill_climb", "fixed"]
    assert summary["hill_climb"]["n"] == summary["fixed"]["n"] == 3
    assert 0.0 <= summary["hill_climb"]["p_value"] <= 1.0 and summary["fixed"]["p_value"] is None
    assert summary["hill_climb"]["mean"] > summary["fixed"]["mean"]  # alpha = 1 is the mock's worst
    assert len(record["units"][0]["curve"]) == 1 + 20  # the start, then 100 updates / H = 5
    assert math.isfinite(record["wall_s"])


def test_run_episode_refuses_a_controller_built_for_another_env():
    """Built directly as the README shows, a controller kept its own H and gamma (5, 0.9) on an env of
    H 4 and gamma 0.8: PPO discounted its windows by 0.9^5 unsaid, the credit failed at the first
    step; schedule read whatever sat at observation entry 0 as progress. Only the recipes checked."""
    from controllers.ppo import PPOConfig, PPOController
    from controllers.schedule import ScheduleConfig, ScheduleController

    env = gym.make("atesd/MockExposure-v0", hold_steps=4, total_steps=96, gamma=0.8)
    ppo = PPOController(env.observation_space, env.action_space, PPOConfig(seed=0))
    with pytest.raises(ValueError, match=r"hold_steps=5, but the env's reward_spec has hold_steps=4"):
        run_episode(env, ppo, seed=0)
    fitted = PPOController(
        env.observation_space, env.action_space, PPOConfig(seed=0, hold_steps=4, gamma=0.8)
    )
    assert run_episode(env, fitted, seed=0).steps == 24
    env = gym.make("atesd/MockExposure-v0")
    env.unwrapped.observation_names = tuple(reversed(env.unwrapped.observation_names))
    schedule = ScheduleController(env.observation_space, env.action_space, ScheduleConfig())
    with pytest.raises(ValueError, match="reads observation entry 0 as 'progress'"):
        run_episode(env, schedule, seed=0)
