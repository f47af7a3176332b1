"""Learning controllers (beta_reinforce, ppo) on tiny stub envs: they learn, keep books, resume exactly."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from atesd.progress import window_reward
from atesd.state import load_state, save_state
from controllers.base import run_episode
from controllers.beta_reinforce import (
    BETA22_ENTROPY,
    BetaReinforceConfig,
    BetaReinforceController,
    advantages,
    entropy_penalty,
    reinforce_loss,
    standardise,
)
from controllers.ppo import PPOConfig, PPOController, gae
from envs import spec

torch.set_num_threads(1)
H, GAMMA, LAMBDA_GT = 5, 0.9, 0.1
D = GAMMA**H  # window discount


class StubEnv(gym.Env):
    """Windows of H updates whose per-update loss drops come from `drops(alpha, prev_alpha)`.

    "peak": stationary, every drop is 0.02 exp(-((alpha - 0.7) / 0.25)^2), grounded score peaks at 0.7 too.
    "delayed": the first update drops 0.05 alpha (immediate credit favours alpha = 1); the next four drop
    0.075 (1 - alpha) each, but one window later, so a K = 2 window lookahead favours low alpha.
    """

    def __init__(self, kind: str, n_windows: int = 20, noise: float = 0.002) -> None:
        self.kind, self.n_windows, self.noise = kind, n_windows, noise
        self.observation_space, self.action_space = spec.observation_space(), spec.action_space()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.loss, self.ema_alpha, self.prev_alpha = 0, 2.0, 0.5, 0.5
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return spec.make_observation(self.t / self.n_windows, self.ema_alpha, self.loss, 0.3, 1.0, 0.5)

    def step(self, action):
        alpha = spec.check_action(action)
        if self.kind == "peak":
            drops = np.full(H, 0.02 * math.exp(-(((alpha - 0.7) / 0.25) ** 2)))
            grounded = np.full(H, -((alpha - 0.7) ** 2))
        else:
            drops = np.array([0.05 * alpha] + [0.075 * (1 - self.prev_alpha)] * (H - 1))
            grounded = np.zeros(H)
        drops = drops + self.noise * self.np_random.standard_normal(H)
        losses = self.loss - np.concatenate([[0.0], np.cumsum(drops)])  # (H + 1,)
        r = window_reward(losses, grounded, GAMMA, LAMBDA_GT)
        self.t, self.loss, self.prev_alpha = self.t + 1, float(losses[-1]), alpha
        self.ema_alpha = 0.8 * self.ema_alpha + 0.2 * alpha
        info = {"alpha": alpha, "reward/progress": r["progress"], "reward/grounded": r["grounded"],
                "reward/total": r["reward"], "losses": losses.tolist(), "score": -self.loss}  # fmt: skip
        return self._obs(), r["reward"], False, self.t >= self.n_windows, info


class ScriptedEnv(gym.Env):
    """Replays fixed window terms whatever the action: progress p_w, total p_w + e_w, l_0 - l_1 = q_w."""

    P, E, Q = (0.1, 0.2, 0.4, 0.8), (0.01, 0.02, 0.03, 0.04), (0.3, 0.05, 0.2, 0.1)

    def __init__(self, n_windows: int = 4) -> None:
        self.n_windows = n_windows
        self.observation_space, self.action_space = spec.observation_space(), spec.action_space()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return spec.make_observation(0.0, 0.5, 1.0, 0.3, 1.0, 0.5), {}

    def step(self, action):
        w, self.t = self.t, self.t + 1
        p, e = self.P[w], self.E[w]
        info = {"alpha": float(action[0]), "reward/progress": p, "reward/total": p + e,
                "reward/grounded": self.E[w] / LAMBDA_GT, "losses": [1.0, 1.0 - self.Q[w]] + [0.5] * (H - 1),
                "score": 0.0}  # fmt: skip
        obs = spec.make_observation(self.t / self.n_windows, 0.5, 1.0, 0.3, 1.0, 0.5)
        return obs, p + e, False, self.t >= self.n_windows, info


def spaces() -> tuple[gym.spaces.Box, gym.spaces.Box]:
    return spec.observation_space(), spec.action_space()


def train(ctrl, env: gym.Env, episodes: int, seed: int) -> float:
    """Run `episodes` episodes; the mean Beta mean over the last one."""
    for ep in range(episodes):
        result = run_episode(env, ctrl, seed=1000 * seed + ep)
    return float(np.mean([m["controller/beta_mean"] for m in result.controller_metrics]))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ---- learning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_beta_reinforce_moves_toward_peak(seed):
    ctrl = BetaReinforceController(*spaces(), BetaReinforceConfig(seed=seed))
    assert train(ctrl, StubEnv("peak"), 1, seed) == pytest.approx(0.5, abs=0.05)  # starts near Beta(2, 2)
    assert train(ctrl, StubEnv("peak"), 40, seed) >= 0.6  # optimum 0.7


@pytest.mark.slow
def test_immediate_and_discounted_learn_opposite_exposures_under_delayed_credit():
    final = {}
    for mode in ("immediate", "discounted"):
        final[mode] = np.mean(
            [train(BetaReinforceController(*spaces(), BetaReinforceConfig(reward_mode=mode, seed=s)),
                   StubEnv("delayed"), 40, s) for s in (0, 1)]
        )  # fmt: skip
    assert final["immediate"] >= 0.6 and final["discounted"] <= 0.4, final
    assert final["immediate"] - final["discounted"] >= 0.3, final


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_moves_toward_peak(seed):
    ctrl = PPOController(*spaces(), PPOConfig(seed=seed))
    assert train(ctrl, StubEnv("peak"), 40, seed) >= 0.6


# ---- bookkeeping and loss maths by hand ----------------------------------------------------------
def drive(ctrl, env: gym.Env, steps: int, seed: int = 0):
    """act/observe `steps` times from a reset; returns the last observation."""
    obs, info = env.reset(seed=seed)
    ctrl.reset(seed=seed, info=info)
    for _ in range(steps):
        action = ctrl.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        ctrl.observe(obs, action, reward, next_obs, terminated, truncated, info)
        obs = next_obs
    return obs


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("discounted", [0.1 + D * 0.2, 0.2 + D * 0.4]),
        ("discounted_grounded", [0.1 + D * 0.2 + (0.01 + D * 0.02) / (1 + D),
                                 0.2 + D * 0.4 + (0.02 + D * 0.03) / (1 + D)]),
        ("short_delayed", [0.1, 0.2, 0.4]),
        ("immediate", [0.3, 0.05, 0.2]),
    ],
)  # fmt: skip
def test_pending_decisions_finish_with_hand_returns(mode, expected):
    ctrl = BetaReinforceController(*spaces(), BetaReinforceConfig(reward_mode=mode, batch_decisions=8))
    drive(ctrl, ScriptedEnv(), 3)
    assert [f.ret for f in ctrl.finished] == pytest.approx(expected)
    assert len(ctrl.pending) == 3 - len(expected)  # K = 2 windows for the delayed modes, else 1


@pytest.mark.parametrize("finish_truncated, n_finished", [("drop", 3), ("truncate", 4)])
def test_episode_end_drops_or_truncates_pending(finish_truncated, n_finished):
    cfg = BetaReinforceConfig(reward_mode="discounted", batch_decisions=8, finish_truncated=finish_truncated)
    ctrl = BetaReinforceController(*spaces(), cfg)
    drive(ctrl, ScriptedEnv(), 4)
    assert len(ctrl.finished) == n_finished and ctrl.pending == []
    assert ctrl.finished[-1].ret == pytest.approx(0.8 if finish_truncated == "truncate" else 0.4 + D * 0.8)


def test_trend_baseline_holds_only_returns_finished_before_the_decision():
    cfg = BetaReinforceConfig(reward_mode="discounted", batch_decisions=8)  # the default baseline: trend
    ctrl = BetaReinforceController(*spaces(), cfg)
    drive(ctrl, ScriptedEnv(), 4)
    r0, r1, r2 = 0.1 + D * 0.2, 0.2 + D * 0.4, 0.4 + D * 0.8
    # decision 1 is made before decision 0's return is known (K = 2 windows); decision 2 after it
    assert [f.baseline for f in ctrl.finished] == [None, None, pytest.approx(r0)]
    assert ctrl.trend == pytest.approx(0.8 * (0.8 * r0 + 0.2 * r1) + 0.2 * r2)
    adv = advantages(torch.tensor([r0, r1, r2]), [f.baseline for f in ctrl.finished], 1e-8)
    centred = np.array([0.0, 0.0, r2 - r0])  # no baseline yet: no credit either way
    assert adv.tolist() == pytest.approx((centred / centred.std()).tolist(), rel=1e-5)
    ctrl.reset(seed=1)
    assert ctrl.trend is None  # each run's learning curve starts afresh


def test_standardise_and_entropy_penalty_by_hand():
    adv = standardise(torch.tensor([1.0, 2.0, 3.0, 4.0]), 1e-8)
    assert adv.tolist() == pytest.approx(
        [-1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25), 0.5 / math.sqrt(1.25), 1.5 / math.sqrt(1.25)]
    )
    assert standardise(torch.full((4,), 3.0), 1e-8).tolist() == [0.0] * 4
    assert BETA22_ENTROPY == pytest.approx(torch.distributions.Beta(2.0, 2.0).entropy().item(), abs=1e-6)
    assert BETA22_ENTROPY == pytest.approx(-0.1251, abs=1e-4)
    uniform = entropy_penalty(torch.tensor(0.0), BETA22_ENTROPY, 0.1)  # Beta(1, 1): entropy 0
    assert uniform.item() == pytest.approx(0.1 * (math.log(6) - 5 / 3) ** 2)
    assert entropy_penalty(torch.tensor(-0.5), BETA22_ENTROPY, 0.1).item() == 0.0  # sharper: not charged


def test_reinforce_loss_by_hand():
    x = torch.tensor([0.5, 0.5, 0.5, 0.2])
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    adv = np.array([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25)
    log_pdf = np.log(6 * x.numpy() * (1 - x.numpy()))  # Beta(2, 2) density 6 x (1 - x)
    cfg = BetaReinforceConfig()
    loss, _ = reinforce_loss(
        torch.distributions.Beta(torch.full((4,), 2.0), torch.full((4,), 2.0)), x, returns, cfg
    )
    assert loss.item() == pytest.approx(-np.mean(adv * log_pdf), rel=1e-5)  # entropy = target: no penalty
    loss, _ = reinforce_loss(torch.distributions.Beta(torch.ones(4), torch.ones(4)), x, returns, cfg)
    assert loss.item() == pytest.approx(0.1 * BETA22_ENTROPY**2, rel=1e-5)  # uniform: log pdf 0, penalty only


def test_gae_bootstraps_truncation_not_termination():
    r, v = np.ones(3), np.full(3, 0.5)
    nv = np.array([0.5, 0.5, 2.0])
    terminated = gae(r, v, nv, np.array([0.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0]), 0.5, 1.0)
    assert terminated.tolist() == pytest.approx([0.75 + 0.5 * 0.5, 0.5, 1.5])
    truncated = gae(r, v, nv, np.zeros(3), np.array([0.0, 1.0, 1.0]), 0.5, 1.0)
    assert truncated.tolist() == pytest.approx([0.75 + 0.5 * 0.75, 0.75, 1.5])


def test_first_update_changes_parameters_and_reports_metrics():
    ctrl = BetaReinforceController(*spaces())
    before = params(ctrl.policy)
    env, obs = StubEnv("peak"), None
    obs, info = env.reset(seed=0)
    ctrl.reset(seed=0)
    metrics: dict[str, float] = {}
    while "controller/pg_loss" not in metrics:
        action = ctrl.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        metrics = ctrl.observe(obs, action, reward, next_obs, terminated, truncated, info)
        obs = next_obs
    assert ctrl.updates == 1 and env.t == 5  # B = 4 decisions, each finished one window late
    assert any(not torch.equal(a, b) for a, b in zip(before, params(ctrl.policy)))
    assert {
        "controller/adv_std",
        "controller/return_mean",
        "controller/beta_a",
        "controller/alpha",
    } <= metrics.keys()


# ---- seeding, resume, validation -----------------------------------------------------------------
def make(name: str, seed: int = 0):
    if name == "beta_reinforce":
        return BetaReinforceController(*spaces(), BetaReinforceConfig(seed=seed))
    return PPOController(*spaces(), PPOConfig(seed=seed))


@pytest.mark.parametrize("name", ["beta_reinforce", "ppo"])
def test_same_seed_same_actions_different_seed_different(name):
    runs = [run_episode(StubEnv("peak"), make(name, seed), seed=0).alphas for seed in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0] != run_episode(StubEnv("peak"), make(name, 0), seed=1).alphas  # reset seed reseeds


@pytest.mark.parametrize("name", ["beta_reinforce", "ppo"])
def test_state_round_trip_mid_episode_resumes_identically(name, tmp_path):
    ctrl, env = make(name), StubEnv("peak")
    obs = drive(ctrl, env, 7)  # beta_reinforce: 1 pending, 2 finished of B = 4; ppo: 7 of 8 buffered
    action = ctrl.act(obs)  # an undecided action is part of the state too
    save_state(ctrl.state_dict(), tmp_path / "ctrl")
    twin = make(name, seed=123)  # different init and RNG: everything must come from the state
    twin.load_state_dict(load_state(tmp_path / "ctrl"))
    net = "policy" if name == "beta_reinforce" else "agent"
    updates = ctrl.updates
    for _ in range(6):
        next_obs, reward, terminated, truncated, info = env.step(action)
        metrics = [
            c.observe(obs, action, reward, next_obs, terminated, truncated, info) for c in (ctrl, twin)
        ]
        assert metrics[0] == metrics[1]
        obs = next_obs
        action, twin_action = ctrl.act(obs), twin.act(obs)
        np.testing.assert_array_equal(action, twin_action)
    assert ctrl.updates > updates
    for a, b in zip(params(getattr(ctrl, net)), params(getattr(twin, net))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["beta_reinforce", "ppo"])
def test_non_finite_reward_or_observation_raises(name):
    ctrl, env = make(name), StubEnv("peak")
    obs, _ = env.reset(seed=0)
    ctrl.reset(seed=0)
    action = ctrl.act(obs)
    next_obs, reward, terminated, truncated, info = env.step(action)
    with pytest.raises(ValueError, match="reward"):
        ctrl.observe(obs, action, float("nan"), next_obs, terminated, truncated, info)
    with pytest.raises(ValueError, match="next_obs"):
        ctrl.observe(obs, action, reward, next_obs * np.inf, terminated, truncated, info)


def test_hold_steps_mismatch_with_env_raises():
    ctrl = BetaReinforceController(*spaces(), BetaReinforceConfig(hold_steps=2, lookahead_steps=4))
    with pytest.raises(ValueError, match="hold_steps"):
        drive(ctrl, StubEnv("peak"), 1)


@pytest.mark.parametrize(
    "cls, kwargs, field_name",
    [
        (BetaReinforceConfig, {"lookahead_steps": 7}, "lookahead_steps"),
        (BetaReinforceConfig, {"batch_decisions": 1}, "batch_decisions"),
        (BetaReinforceConfig, {"gamma": 0.0}, "gamma"),
        (BetaReinforceConfig, {"alpha_min": 0.5, "alpha_max": 0.4}, "alpha_max"),
        (BetaReinforceConfig, {"reward_mode": "greedy"}, "reward_mode"),
        (BetaReinforceConfig, {"finish_truncated": "keep"}, "finish_truncated"),
        (BetaReinforceConfig, {"seed": -1}, "seed"),
        (PPOConfig, {"seed": -1}, "seed"),
        (PPOConfig, {"minibatch_size": 16}, "minibatch_size"),
        (PPOConfig, {"clip_coef": 0.0}, "clip_coef"),
        (PPOConfig, {"gae_lambda": 1.5}, "gae_lambda"),
    ],
)
def test_bad_config_raises_naming_the_field(cls, kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        cls(**kwargs)


def test_the_starting_beta_is_the_prior_asked_for():
    ctrl = BetaReinforceController(*spaces(), BetaReinforceConfig(init_mean=0.75, init_concentration=20.0))
    ctrl.act(np.zeros(6, dtype=np.float32))
    assert (ctrl.last["a"], ctrl.last["b"]) == pytest.approx((15.0, 5.0))
    default = BetaReinforceController(*spaces())
    default.act(np.zeros(6, dtype=np.float32))
    assert (default.last["a"], default.last["b"]) == (2.0, 2.0)  # the paper's Beta(2, 2), exactly
    with pytest.raises(ValueError, match="init_concentration"):
        BetaReinforceConfig(init_mean=0.9, init_concentration=4.0)  # b = 0.4 < 1: no 1 + softplus
