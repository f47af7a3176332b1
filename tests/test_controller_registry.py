"""Every registered controller on the mock env: its config is a documented frozen dataclass whose
defaults build, it acts inside the action space, completes an episode with finite rewards, repeats
under a seed, and resumes exactly from its saved state; and any Gymnasium agent (SB3 PPO) can drive
the registered mock env. Each check is parametrised over `controllers.CONTROLLERS`, so a newly
registered controller is checked without editing this file."""

import copy
import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from _helpers import assert_same_state

import envs  # noqa: F401  (registers the atesd/ envs)
from atesd.state import load_state, save_state
from controllers import CONTROLLERS
from controllers.base import run_episode
from envs.mock_env import MockExposureEnv

torch.set_num_threads(1)


def build(name: str, seed: int = 0, env: gym.Env | None = None):
    cls, cfg_cls = CONTROLLERS[name]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    cfg = cfg_cls(seed=seed) if "seed" in fields else cfg_cls()
    env = env or MockExposureEnv(total_steps=100)
    return cls(env.observation_space, env.action_space, cfg)


NAMES = list(CONTROLLERS)
PROTOCOL = ("reset", "act", "observe", "state_dict", "load_state_dict")


def test_registry_maps_names_to_controller_and_config_classes():
    assert CONTROLLERS, "no controller is registered"
    for name, entry in CONTROLLERS.items():
        assert isinstance(name, str) and name.isidentifier() and name == name.lower(), name
        cls, cfg_cls = entry
        assert isinstance(cls, type) and isinstance(cfg_cls, type), name
        assert dataclasses.is_dataclass(cfg_cls) and callable(cls), name
        for method in PROTOCOL:
            assert callable(getattr(cls, method, None)), f"{name} lacks {method}"


@pytest.mark.parametrize("name", NAMES)
def test_config_is_a_frozen_dataclass_with_help_on_every_field(name):
    _, cfg_cls = CONTROLLERS[name]
    assert dataclasses.is_dataclass(cfg_cls) and cfg_cls.__dataclass_params__.frozen
    for f in dataclasses.fields(cfg_cls):
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip(), f"{cfg_cls.__name__}.{f.name} has no help text"
    cfg = cfg_cls()  # every field has a default, and the defaults pass the config's own checks
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.some_field = 1
    for f in dataclasses.fields(cfg_cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, f.name, getattr(cfg, f.name))


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_the_mock_env_spaces_and_acts_inside_the_action_space(name):
    cls, cfg_cls = CONTROLLERS[name]
    env = MockExposureEnv(total_steps=50)
    controller = cls(env.observation_space, env.action_space, cfg_cls())
    obs, info = env.reset(seed=0)
    controller.reset(seed=0, info=info)  # the oracle reads its alpha from the reset info
    done, steps = False, 0
    while not done:
        action = controller.act(obs)
        assert isinstance(action, np.ndarray) and action.dtype == np.float32, (name, action)
        assert action.shape == env.action_space.shape and env.action_space.contains(action), (name, action)
        next_obs, reward, terminated, truncated, info = env.step(action)
        metrics = controller.observe(obs, action, float(reward), next_obs, terminated, truncated, info)
        assert isinstance(metrics, dict), name
        obs, done, steps = next_obs, terminated or truncated, steps + 1
    assert steps == 50 // env.cfg.hold_steps


@pytest.mark.parametrize("name", NAMES)
def test_a_short_episode_completes_with_finite_rewards(name):
    cls, cfg_cls = CONTROLLERS[name]
    env = MockExposureEnv(total_steps=60)
    result = run_episode(env, cls(env.observation_space, env.action_space, cfg_cls()), seed=0)
    assert result.steps == 60 // env.cfg.hold_steps
    assert all(math.isfinite(r) for r in result.rewards), result.rewards
    assert all(0.0 <= a <= 1.0 for a in result.alphas) and all(math.isfinite(s) for s in result.scores)
    for metrics in result.controller_metrics:
        assert all(k.startswith("controller/") and math.isfinite(float(v)) for k, v in metrics.items())


@pytest.mark.parametrize("name", NAMES)
def test_saved_state_loads_into_a_fresh_instance_that_acts_identically(name, tmp_path):
    """After a learning episode, the state saved to disk reads back equal, and loaded into a fresh
    controller of the same config (a resumed run rebuilds from its config; `reset(seed)` mixes the
    config's seed in) makes it act and learn as the original does, episode for episode, under the
    same seed."""
    controller = build(name, seed=1)
    run_episode(MockExposureEnv(total_steps=100), controller, seed=0)
    state = controller.state_dict()
    save_state(state, tmp_path / "ctl")
    loaded = load_state(tmp_path / "ctl")
    assert_same_state(state, loaded)
    restored = build(name, seed=1)  # untrained: its learned part comes from the state
    restored.load_state_dict(loaded)
    assert_same_state(controller.state_dict(), restored.state_dict())
    for seed in (2, 3):  # learning goes on identically too
        runs = [run_episode(MockExposureEnv(total_steps=100), c, seed=seed) for c in (controller, restored)]
        assert runs[0].alphas == runs[1].alphas and runs[0].rewards == runs[1].rewards


@pytest.mark.parametrize("name", ["beta_reinforce", "ppo"])
def test_a_loaded_state_learns_at_the_configured_rate(name, tmp_path):
    """A saved state brings weights and moments; the rate is the config's (`controller_init` from a
    prior trained at another rate): the optimiser's load had put the saved rate back."""
    cls, cfg_cls = CONTROLLERS[name]
    env = MockExposureEnv(total_steps=100)
    trained = cls(env.observation_space, env.action_space, cfg_cls(lr=1e-3))
    run_episode(env, trained, seed=0)
    save_state(trained.state_dict(), tmp_path / "ctl")
    slower = cls(env.observation_space, env.action_space, cfg_cls(lr=1e-5))
    slower.load_state_dict(load_state(tmp_path / "ctl"))
    assert [g["lr"] for g in slower.optimizer.param_groups] == [1e-5] * len(slower.optimizer.param_groups)


STOCHASTIC = [n for n in NAMES if hasattr(build(n), "rng")]  # a controller with a generator of its own


@pytest.mark.parametrize("name", STOCHASTIC)
def test_the_config_seed_and_the_episode_seed_both_matter(name):
    """docs/CONTROLLERS.md: reset(seed) reseeds from (cfg.seed, seed). random and bandit reseeded from
    the episode seed alone: their cfg.seed did nothing, and their draws were the env's own stream
    (Gymnasium seeds np_random from the same number the same way)."""

    def alphas(cfg_seed: int, seed: int) -> list[float]:
        return run_episode(MockExposureEnv(total_steps=100), build(name, seed=cfg_seed), seed=seed).alphas

    assert alphas(0, 3) == alphas(0, 3)
    assert alphas(0, 3) != alphas(7, 3) and alphas(0, 3) != alphas(0, 4)
    env = MockExposureEnv(total_steps=100)
    env.reset(seed=3)
    controller = build(name)
    controller.reset(seed=3)
    assert controller.rng.random(4).tolist() != env.np_random.random(4).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_repeatable_under_a_seed(name):
    runs = []
    for _ in range(2):
        env, controller = MockExposureEnv(total_steps=100), build(name, seed=3)
        runs.append([run_episode(env, controller, seed=s).alphas for s in (0, 1)])  # learns across runs
    assert runs[0] == runs[1]
    alphas = np.array(runs[0][0])
    assert np.all((alphas >= 0.0) & (alphas <= 1.0))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_mid_episode_acts_identically(name, tmp_path):
    """Stop half-way through a second run, save to disk, load into a fresh controller: both continue
    with the same actions on copies of the same env."""
    env, controller = MockExposureEnv(total_steps=100), build(name, seed=1)
    run_episode(env, controller, seed=0)
    obs, info = env.reset(seed=1)
    controller.reset(seed=1, info=info)
    for _ in range(7):
        action = controller.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        controller.observe(obs, action, reward, next_obs, terminated, truncated, info)
        obs = next_obs
    save_state(controller.state_dict(), tmp_path / "ctl")
    restored = build(name, seed=99)  # a different seed: everything that matters must come from the state
    restored.load_state_dict(load_state(tmp_path / "ctl"))
    pair = [(controller, env), (restored, copy.deepcopy(env))]
    traces = [[], []]
    obs_pair = [obs, obs.copy()]
    for _ in range(12):
        for i, (ctl, e) in enumerate(pair):
            action = ctl.act(obs_pair[i])
            next_obs, reward, terminated, truncated, info = e.step(action)
            ctl.observe(obs_pair[i], action, reward, next_obs, terminated, truncated, info)
            traces[i].append(float(action[0]))
            obs_pair[i] = next_obs
    assert traces[0] == traces[1]


@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric and normalized Box action space")
def test_sb3_ppo_trains_against_the_registered_mock_env():
    sb3 = pytest.importorskip("stable_baselines3", reason="stable-baselines3 is the optional extra [sb3]")
    from stable_baselines3.common.env_checker import check_env

    env = gym.make("atesd/MockExposure-v0", total_steps=100)
    check_env(env.unwrapped, warn=True)
    model = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu", verbose=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(np.clip(action, 0.0, 1.0).astype(np.float32))
