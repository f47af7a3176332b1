"""The controller family against the mock env's default (rising) variant: the issue's ranking checks.

Protocol and thresholds were written down before any controller was run on the mock env, and the
mock's constants were set from the paper's qualitative findings (envs/mock_env.py), not from these
results. Every controller trains for EPISODES episodes (learned state persists across episodes, as in
a training run that is repeated); its score for a seed is the competence at the end of the last
episode; the comparison is between means over SEEDS seeds.
"""

import numpy as np
import pytest
import torch

from controllers import CONTROLLERS
from controllers.bandit import BanditConfig
from controllers.base import run_episode
from controllers.beta_reinforce import BetaReinforceConfig
from controllers.fixed import FixedConfig
from envs.mock_env import MockExposureEnv

torch.set_num_threads(1)
SEEDS = 8
EPISODES = 20

ARMS = {
    "fixed_1": ("fixed", FixedConfig(alpha=1.0)),
    "random": ("random", None),
    "bandit_thompson": ("bandit", BanditConfig(kind="thompson")),
    "bandit_ucb": ("bandit", BanditConfig(kind="ucb")),
    "ppo": ("ppo", None),
    "beta_reinforce": ("beta_reinforce", None),
    "beta_reinforce_immediate": ("beta_reinforce", BetaReinforceConfig(reward_mode="immediate")),
    "oracle": ("oracle", None),
}


def final_competence(name: str, cfg, seed: int) -> float:
    cls, cfg_cls = CONTROLLERS[name]
    if cfg is None:
        cfg = cfg_cls()
    if hasattr(cfg, "seed"):
        cfg = type(cfg)(**{**cfg.__dict__, "seed": seed})
    env = MockExposureEnv()
    controller = cls(env.observation_space, env.action_space, cfg)
    for episode in range(EPISODES):
        result = run_episode(env, controller, seed=1000 * seed + episode)
    return float(result.final_info["score"])


@pytest.fixture(scope="module")
def finals() -> dict[str, float]:
    return {
        arm: float(np.mean([final_competence(name, cfg, seed) for seed in range(SEEDS)]))
        for arm, (name, cfg) in ARMS.items()
    }


def test_beta_reinforce_beats_opsd(finals):
    assert finals["beta_reinforce"] > finals["fixed_1"] + 0.2, finals


@pytest.mark.xfail(
    strict=True,
    reason="measured (docs/BENCHMARKS.md): over 20 runs the paper's controller drifts toward "
    "overexposure on the trap (0.728 vs random 0.741); after one run it leads (0.802 vs 0.748)",
)
def test_beta_reinforce_beats_random(finals):
    assert finals["beta_reinforce"] > finals["random"] + 0.02, finals


def test_discounted_grounded_beats_the_immediate_reward_ablation(finals):
    assert finals["beta_reinforce"] > finals["beta_reinforce_immediate"], finals


THOMPSON_XFAIL = pytest.mark.xfail(
    strict=True,
    reason="measured (docs/BENCHMARKS.md): discounted Thompson sampling explores too much "
    "for the mock's noise and ends level with random (0.72 vs 0.74)",
)


@pytest.mark.parametrize("arm", [pytest.param("bandit_thompson", marks=THOMPSON_XFAIL), "bandit_ucb", "ppo"])
def test_bandits_and_ppo_beat_random(finals, arm):
    assert finals[arm] > finals["random"], finals


def test_oracle_beats_everyone(finals):
    others = {arm: v for arm, v in finals.items() if arm != "oracle"}
    assert all(finals["oracle"] > v for v in others.values()), finals
