"""The baseline controllers (fixed, random, schedule, bandit, oracle) on a tiny stub exposure env."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from atesd.state import load_state, save_state
from controllers.bandit import BanditConfig, BanditController, reward_scale, thompson_posterior, window_ucb
from controllers.base import run_episode
from controllers.beta_reinforce import BetaReinforceConfig, BetaReinforceController
from controllers.fixed import FixedConfig, FixedController
from controllers.oracle import OracleConfig, OracleController
from controllers.ppo import PPOConfig, PPOController
from controllers.random import RandomConfig, RandomController
from controllers.schedule import ScheduleConfig, ScheduleController
from envs import spec
from envs.mock_env import MockExposureEnv

torch.set_num_threads(1)


class PeakEnv(gym.Env):
    """Reward scale * (1 - 4 (alpha - peak)^2 + noise * N(0, 1)); the peak may switch at `switch_at`.

    Progress advances by 1 / steps per step; `oracle_alpha` is the peak for the next decision (NaN when
    `oracle=False`, like the real env).
    """

    def __init__(self, steps=300, peak=0.75, switch_at=None, new_peak=1.0, scale=1.0, noise=0.1, oracle=True):
        self.observation_space, self.action_space = spec.observation_space(), spec.action_space()
        self.steps, self.peak0, self.switch_at, self.new_peak = steps, peak, switch_at, new_peak
        self.scale, self.noise, self.oracle = scale, noise, oracle
        self.t = 0

    def peak(self, t):
        return self.new_peak if self.switch_at is not None and t >= self.switch_at else self.peak0

    def _obs(self):
        return spec.make_observation(self.t / self.steps, 0.5, 0.3, 0.2, 1.0, 0.6)

    def _oracle(self):
        return self.peak(self.t) if self.oracle else float("nan")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"oracle_alpha": self._oracle()}

    def step(self, action):
        alpha = spec.check_action(action)
        quality = 1.0 - 4.0 * (alpha - self.peak(self.t)) ** 2
        reward = self.scale * (quality + self.noise * float(self.np_random.standard_normal()))
        self.t += 1
        info = {
            "alpha": alpha, "reward/progress": reward, "reward/grounded": 0.0, "reward/total": reward,
            "stats/loss": 1.0, "stats/mismatch": 0.2, "stats/probe_nll": 1.0, "stats/confidence": 0.6,
            "losses": [1.0, 0.9], "steps_done": self.t, "score": quality, "oracle_alpha": self._oracle(),
            "time/window_s": 0.0,
        }  # fmt: skip
        assert set(spec.INFO_KEYS) <= set(info)
        return self._obs(), reward, self.t >= self.steps, False, info


def make(cls, cfg=None, action_space=None):
    return cls(spec.observation_space(), action_space or spec.action_space(), cfg)


def one_step(**kwargs) -> BanditConfig:
    """A bandit credited with each step's reward (PeakEnv steps are one update each)."""
    return BanditConfig(hold_steps=1, lookahead_steps=1, **kwargs)


def progress_obs(p):
    return spec.make_observation(p, 0.5, 0.3, 0.2, 1.0, 0.6)


CONTROLLERS = {
    "fixed": lambda: make(FixedController, FixedConfig(alpha=0.5)),
    "random": lambda: make(RandomController, RandomConfig(low=0.1, high=0.9, seed=3)),
    "schedule": lambda: make(ScheduleController, ScheduleConfig(kind="cosine", alpha0=0.2, alpha1=0.9)),
    "thompson": lambda: make(BanditController, one_step(kind="thompson", seed=5)),
    "ucb": lambda: make(BanditController, one_step(kind="ucb", seed=5)),
    "oracle": lambda: make(OracleController, OracleConfig()),
}


def test_fixed_always_returns_its_alpha():
    for alpha in (0.0, 0.5, 1.0):
        controller = make(FixedController, FixedConfig(alpha=alpha))
        result = run_episode(PeakEnv(steps=20), controller, seed=0)
        assert result.alphas == [alpha] * 20
        action = controller.act(progress_obs(0.3))
        assert action.shape == (1,) and action.dtype == np.float32
    assert make(FixedController).act(progress_obs(0.0))[0] == 1.0  # default: OPSD


def test_random_stays_in_bounds_repeats_under_its_seed_and_differs_under_another():
    cfg = RandomConfig(low=0.2, high=0.6, seed=3)
    first = run_episode(PeakEnv(steps=200), make(RandomController, cfg)).alphas
    again = run_episode(PeakEnv(steps=200), make(RandomController, cfg)).alphas
    other = run_episode(
        PeakEnv(steps=200), make(RandomController, RandomConfig(low=0.2, high=0.6, seed=4))
    ).alphas
    assert all(0.2 <= a <= 0.6 for a in first) and max(first) - min(first) > 0.3
    assert first == again and first != other
    # reset(seed) reseeds: the same episode seed gives the same alphas on one controller
    controller = make(RandomController, cfg)
    assert (
        run_episode(PeakEnv(steps=30), controller, seed=7).alphas
        == run_episode(PeakEnv(steps=30), controller, seed=7).alphas
    )


def test_schedule_endpoints_and_midpoints():
    linear = make(ScheduleController, ScheduleConfig(kind="linear", alpha0=0.2, alpha1=0.8))
    assert linear.act(progress_obs(0.0))[0] == pytest.approx(0.2)
    assert linear.act(progress_obs(0.5))[0] == pytest.approx(0.5)
    assert linear.act(progress_obs(1.0))[0] == pytest.approx(0.8)
    cosine = make(ScheduleController, ScheduleConfig(kind="cosine", alpha0=0.2, alpha1=0.8))
    assert cosine.act(progress_obs(0.0))[0] == pytest.approx(0.2)
    assert cosine.act(progress_obs(0.5))[0] == pytest.approx(0.5)
    assert cosine.act(progress_obs(1.0))[0] == pytest.approx(0.8)
    assert cosine.act(progress_obs(0.25))[0] == pytest.approx(0.8 - 0.6 * (1 + math.cos(math.pi / 4)) / 2)
    step = make(ScheduleController, ScheduleConfig(kind="step", alpha0=0.75, alpha1=1.0, switch=0.75))
    assert [step.act(progress_obs(p))[0] for p in (0.0, 0.7, 0.75, 0.9)] == pytest.approx(
        [0.75, 0.75, 1.0, 1.0]
    )
    # driven by the env's progress: a decreasing schedule falls monotonically over an episode
    alphas = run_episode(
        PeakEnv(steps=10), make(ScheduleController, ScheduleConfig(alpha0=0.9, alpha1=0.1))
    ).alphas
    assert alphas[0] == pytest.approx(0.9) and alphas[-1] == pytest.approx(0.9 - 0.8 * 0.9)
    assert all(a > b for a, b in zip(alphas, alphas[1:]))


def test_reward_scale_and_posterior_by_hand():
    # arm 0 saw 0.5 and 1.5, arm 1 saw 5: within-arm sum of squares 0.5 over 3 pulls
    counts, sums, sq_sums = np.array([2.0, 1.0]), np.array([2.0, 5.0]), np.array([2.5, 25.0])
    sigma = math.sqrt(0.5 / 3)
    assert reward_scale(counts, sums, sq_sums) == pytest.approx(sigma)
    means, stds, s = thompson_posterior(counts, sums, sq_sums, prior_mean=0.0, prior_var=1.0)
    mu0 = 7.0 / 3.0  # prior centred on the mean remembered reward
    assert s == pytest.approx(sigma)
    assert means == pytest.approx([(mu0 + 2.0) / 3.0, (mu0 + 5.0) / 2.0])
    assert stds == pytest.approx([sigma / math.sqrt(3.0), sigma / math.sqrt(2.0)])
    # no arm has two rewards yet: the std of all rewards stands in
    assert reward_scale(np.array([1.0, 1.0]), np.array([0.0, 2.0]), np.array([0.0, 4.0])) == pytest.approx(
        1.0
    )


def test_window_ucb_by_hand():
    index, means, sigma = window_ucb(np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]), 3, t=10, window=3, c=1.0)
    assert sigma == pytest.approx(math.sqrt(2.0 / 3.0))
    assert means[:2] == pytest.approx([2.0, 2.0]) and math.isnan(means[2])
    assert index[0] == pytest.approx(2.0 + sigma * math.sqrt(math.log(3) / 2))
    assert index[1] == pytest.approx(2.0 + sigma * math.sqrt(math.log(3)))
    assert index[2] == math.inf  # absent from the window: pulled first


@pytest.mark.parametrize("kind", ["thompson", "ucb"])
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_bandit_concentrates_on_the_best_arm_of_a_stationary_env(kind, scale):
    result = run_episode(
        PeakEnv(steps=300, peak=0.75, scale=scale), make(BanditController, one_step(kind=kind))
    )
    late = np.array(result.alphas[150:])
    assert np.mean(late == 0.75) > 0.6
    assert set(result.alphas[:5]) == {0.0, 0.25, 0.5, 0.75, 1.0}  # every arm tried first
    metrics = result.controller_metrics[-1]
    assert metrics["controller/arm_mean_3"] > metrics["controller/arm_mean_0"]


# the endless-memory contrast keeps a constant baseline: detrending assumes a memory that forgets
ENDLESS = [("thompson", {"discount": 1.0, "trend_decay": 1.0}), ("ucb", {"window": 300, "trend_decay": 1.0})]


@pytest.mark.parametrize("kind, endless_memory", ENDLESS)
def test_bandit_follows_a_switch_of_the_best_arm(kind, endless_memory):
    def late_fractions(**overrides):
        fractions = []
        for seed in range(6):
            env = PeakEnv(steps=300, peak=0.25, switch_at=150, new_peak=1.0, scale=0.01)
            controller = make(BanditController, one_step(kind=kind, seed=seed, **overrides))
            alphas = np.array(run_episode(env, controller, seed=seed).alphas)
            assert np.mean(alphas[75:150] == 0.25) > 0.6  # it had settled on the old best arm
            fractions.append(np.mean(alphas[225:] == 1.0))
        return fractions

    assert min(late_fractions()) > 0.6  # most late pulls on the new best arm, on every seed
    # forgetting is what does it: with an endless memory the same bandit stays stuck on some seed
    assert min(late_fractions(**endless_memory)) < 0.3


@pytest.mark.parametrize("kind", ["thompson", "ucb"])
def test_bandit_decisions_do_not_depend_on_reward_units(kind):
    runs = [
        run_episode(
            PeakEnv(steps=120, noise=0.3, scale=s), make(BanditController, one_step(kind=kind)), seed=1
        )
        for s in (1.0, 0.01)
    ]
    assert runs[0].alphas == runs[1].alphas
    scales = [r.controller_metrics[-1]["controller/reward_scale"] for r in runs]
    assert scales[1] == pytest.approx(0.01 * scales[0])


def test_oracle_follows_the_env_and_refuses_without_one():
    env = PeakEnv(steps=40, peak=0.25, switch_at=20, new_peak=0.9)
    result = run_episode(env, make(OracleController))
    assert result.alphas == pytest.approx([env.peak(t) for t in range(40)])
    with pytest.raises(ValueError, match="mock env"):
        run_episode(PeakEnv(steps=5, oracle=False), make(OracleController))
    controller = make(OracleController)
    with pytest.raises(ValueError, match="mock env"):
        controller.act(progress_obs(0.0))  # never shown an oracle alpha
    controller.reset(info={"oracle_alpha": 0.5})
    obs = progress_obs(0.0)
    with pytest.raises(ValueError, match="mock env"):
        controller.observe(obs, controller.act(obs), 0.0, obs, False, False, {"alpha": 0.5})


def _drive_both(original, restored, steps=30):
    """Feed two controllers the same transitions; return both action sequences."""
    env = PeakEnv(steps=steps, peak=0.5, noise=0.3)
    obs, _ = env.reset(seed=11)
    first, second = [], []
    for _ in range(steps):
        a, b = original.act(obs), restored.act(obs)
        first.append(float(a[0]))
        second.append(float(b[0]))
        next_obs, reward, terminated, truncated, info = env.step(a)
        for controller in (original, restored):
            controller.observe(obs, a, reward, next_obs, terminated, truncated, info)
        obs = next_obs
    return first, second


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_state_round_trip_gives_identical_next_actions(name, tmp_path):
    original = CONTROLLERS[name]()
    run_episode(PeakEnv(steps=40, peak=0.5, noise=0.3), original, seed=2)
    save_state(original.state_dict(), tmp_path / "controller")
    restored = CONTROLLERS[name]()
    restored.load_state_dict(load_state(tmp_path / "controller"))
    first, second = _drive_both(original, restored)
    assert first == second
    if name in ("random", "thompson", "ucb"):  # learned / RNG state matters: a fresh instance differs
        assert _drive_both(CONTROLLERS[name](), CONTROLLERS[name]())[0] != first


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_non_finite_transitions_raise(name):
    controller = CONTROLLERS[name]()
    controller.reset(seed=0, info={"oracle_alpha": 0.5})
    obs = progress_obs(0.1)
    action = controller.act(obs)
    info = {"oracle_alpha": 0.5, "alpha": float(action[0])}
    before = controller.state_dict()
    bad_obs = obs.copy()
    bad_obs[2] = np.nan
    for reward, o, next_o in (
        (math.nan, obs, obs),
        (math.inf, obs, obs),
        (0.1, bad_obs, obs),
        (0.1, obs, bad_obs),
    ):
        with pytest.raises(ValueError, match="finite"):
            controller.observe(o, action, reward, next_o, False, False, info)
    after = controller.state_dict()  # nothing was learned from the rejected transitions
    for key, value in before.items():
        assert np.array_equal(value, after[key]) if isinstance(value, np.ndarray) else value == after[key]


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: FixedConfig(alpha=1.5), "alpha"),
        (lambda: RandomConfig(low=-0.1), "low"),
        (lambda: RandomConfig(low=0.6, high=0.4), "high"),
        (lambda: RandomConfig(seed=-1), "seed"),
        (lambda: ScheduleConfig(kind="ramp"), "kind"),
        (lambda: ScheduleConfig(kind="step", switch=1.5), "switch"),
        (lambda: ScheduleConfig(alpha1=2.0), "alpha1"),
        (lambda: one_step(kind="epsilon"), "kind"),
        (lambda: BanditConfig(arms=(0.5, 0.5)), "arms"),
        (lambda: BanditConfig(arms=(0.5, 1.5)), "arms"),
        (lambda: BanditConfig(discount=0.0), "discount"),
        (lambda: BanditConfig(window=0), "window"),
        (lambda: BanditConfig(ucb_c=-1.0), "ucb_c"),
        (lambda: BanditConfig(prior_var=0.0), "prior_var"),
        (lambda: BanditConfig(prior_mean=math.nan), "prior_mean"),
        (lambda: BetaReinforceConfig(lr=math.inf), "BetaReinforceConfig.lr"),  # the class too, as the others
        (lambda: BetaReinforceConfig(adv_eps=math.inf), "adv_eps"),  # every advantage 0: never learns
        (lambda: BetaReinforceConfig(entropy_coef=math.inf), "entropy_coef"),
        (lambda: BetaReinforceConfig(init_concentration=math.inf), "init_concentration"),
        (lambda: PPOConfig(lr=math.inf), "PPOConfig.lr"),
        (lambda: PPOConfig(vf_coef=math.inf), "vf_coef"),
        (lambda: PPOConfig(ent_coef=math.inf), "ent_coef"),
        # -inf passed `<= 0`: the first update made the weights NaN, and the next act failed in torch
        (lambda: BetaReinforceConfig(entropy_target=-math.inf), "entropy_target"),
        # counts and seeds given as floats passed every range check and failed later, or ran rounded
        (lambda: BetaReinforceConfig(batch_decisions=2.5), "batch_decisions"),
        (lambda: BetaReinforceConfig(seed=1.5), "seed"),
        (lambda: BetaReinforceConfig(hidden=(64, 2.5)), "hidden"),
        (lambda: BetaReinforceConfig(hold_steps=5.0, lookahead_steps=10), "hold_steps"),
        (lambda: PPOConfig(n_steps=8.5), "n_steps"),
        (lambda: PPOConfig(minibatch_size=2.5), "minibatch_size"),
        (lambda: PPOConfig(n_epochs=True), "n_epochs"),
        (lambda: BanditConfig(window=2.5), "window"),
        (lambda: BanditConfig(lookahead_steps=10.0), "lookahead_steps"),
        (lambda: RandomConfig(seed=1.5), "seed"),
    ],
)
def test_config_validation_names_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_configured_alphas_outside_a_narrower_action_space_are_rejected():
    narrow = gym.spaces.Box(0.05, 1.0, (1,), dtype=np.float32)
    with pytest.raises(ValueError, match="alpha"):
        make(FixedController, FixedConfig(alpha=0.0), action_space=narrow)
    with pytest.raises(ValueError, match="arms"):
        make(BanditController, BanditConfig(), action_space=narrow)
    with pytest.raises(ValueError, match="alpha0"):
        make(ScheduleController, ScheduleConfig(alpha0=0.0), action_space=narrow)
    with pytest.raises(ValueError, match="low"):
        make(RandomController, RandomConfig(), action_space=narrow)
    # the learners keep their samples in [alpha_min, alpha_max]: outside the space, the env would run
    # clipped alphas whose log-probabilities the learner never took
    for cls, cfg in ((BetaReinforceController, BetaReinforceConfig), (PPOController, PPOConfig)):
        with pytest.raises(ValueError, match="alpha_min and alpha_max"):
            make(cls, cfg(), action_space=gym.spaces.Box(0.2, 0.8, (1,), dtype=np.float32))
        fits = make(cls, cfg(alpha_min=0.2, alpha_max=0.8), action_space=narrow)
        assert 0.2 <= float(fits.act(np.zeros(6, np.float32))[0]) <= 0.8


@pytest.mark.parametrize("cls", [BetaReinforceController, PPOController, ScheduleController])
def test_act_refuses_an_observation_that_is_not_finite_or_of_the_wrong_length(cls):
    """Only `observe` checked: a NaN failed inside torch's Beta (a schedule returned a NaN alpha), a
    wrong length in a matrix product."""
    controller = make(cls)
    with pytest.raises(ValueError, match="obs must be finite"):
        controller.act(np.full(6, np.nan, np.float32))
    with pytest.raises(ValueError, match="the observation has 5 values; the observation space has 6"):
        controller.act(np.zeros(5, np.float32))


@pytest.mark.parametrize("kind", ["thompson", "ucb"])
def test_the_bandit_explores_while_its_reward_scale_is_unknown(kind):
    """A run's first returns are credited 0 (no trend yet): with a lookahead of 10 windows every tried
    arm's mean stayed 0, no spread was known, and argmax pulled the first arm (alpha 0) for the next
    15 windows of 15. Tied arms are now drawn at random while the scale is 0."""
    env = MockExposureEnv(total_steps=200)
    bandit = make(BanditController, BanditConfig(kind=kind, lookahead_steps=50))
    alphas = run_episode(env, bandit, seed=0).alphas
    assert alphas[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]  # untried arms still in grid order
    assert len(set(alphas[5:20])) >= 3


class WindowEnv(gym.Env):
    """H = 2 windows with scripted progress; the grounded part of the reward is 0."""

    def __init__(self, progress):
        self.observation_space, self.action_space = spec.observation_space(), spec.action_space()
        self.progress, self.t = progress, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return progress_obs(0.0), {"oracle_alpha": 0.5}

    def step(self, action):
        p = self.progress[self.t]
        self.t += 1
        info = {"alpha": float(action[0]), "reward/progress": p, "reward/grounded": 0.0, "reward/total": p,
                "losses": [1.0, 1.0 - p / 2, 1.0 - p], "score": 0.0, "oracle_alpha": 0.5}  # fmt: skip
        return progress_obs(self.t / len(self.progress)), p, self.t >= len(self.progress), False, info


def test_bandit_credits_each_pull_with_its_detrended_lookahead_return():
    d = 0.9**2  # window discount gamma^H with H = 2
    cfg = BanditConfig(kind="ucb", hold_steps=2, lookahead_steps=4, gamma=0.9, trend_decay=0.5)
    bandit = make(BanditController, cfg)
    result = run_episode(WindowEnv([1.0, 2.0, 4.0, 8.0]), bandit, seed=0)
    assert result.alphas == [0.0, 0.25, 0.5, 0.75]  # untried arms first, in grid order
    returns = [1.0 + d * 2.0, 2.0 + d * 4.0, 4.0 + d * 8.0]  # the last pull is cut by the episode end
    # each pull less the trend when it was made (its own window's return never in it): pulls 0 and 1
    # were made before any return was known (credited 0), pull 2 after pull 0's
    expected = [0.0, 0.0, returns[2] - returns[0]]
    trend = returns[0]
    for r in returns[1:]:
        trend = 0.5 * trend + 0.5 * r
    assert [arm for arm, _ in bandit.window] == [0, 1, 2]
    assert [r for _, r in bandit.window] == pytest.approx(expected)
    assert bandit.credit.pending == [] and bandit.trend == pytest.approx(trend)


def test_credit_from_the_step_reward_alone_and_agreement_with_the_info_keys():
    from controllers.credit import window_terms

    assert window_terms({}, 5, reward=0.25) == [0.25, 0.25, 0.0]  # an env of others: the step reward
    info = {"losses": [1.0, 0.9, 0.8], "reward/progress": 0.2, "reward/total": 0.3}
    assert window_terms(info, 2, reward=0.3) == pytest.approx([0.1, 0.2, 0.1])
    with pytest.raises(ValueError, match="disagrees with its step reward"):
        window_terms(info, 2, reward=0.5)
    with pytest.raises(ValueError, match="give all of"):
        window_terms({"losses": [1.0, 0.9, 0.8]}, 2, reward=0.3)
    with pytest.raises(ValueError, match="must be finite"):
        window_terms({}, 2, reward=float("nan"))
    # a window of another H than the controller's: both named, and where the controller's H came from
    with pytest.raises(
        ValueError, match=r"has 3 values \(a window of 2 updates\), but the controller's hold"
    ):
        window_terms(info, 5, reward=0.3)
    with pytest.raises(ValueError, match=r"info\['losses'\] must be finite"):
        window_terms(info | {"losses": [1.0, float("nan"), 0.8]}, 2, reward=0.3)


def test_a_window_without_a_grounded_score_is_left_out_of_the_grounded_mean():
    """Every update of a window skipped: the env's g is NaN and its reward the progress alone. The
    credit's G_gt averages the windows that measured one, as the paper's step-level return does
    (`discounted_mean` skips an update without a score); it counted the window as g = 0, which in the
    level form (log-probs < 0) raised every return whose lookahead spanned it."""
    from atesd.progress import paper_return
    from controllers.credit import decision_return, window_terms

    gamma, lambda_gt, hold = 0.9, 0.1, 2
    losses, grounded = [1.0, 0.9, 0.8, 0.8, 0.8], [-2.0, -2.0, math.nan, math.nan]
    windows = []
    for w in range(2):
        seg = losses[2 * w : 2 * w + 3]
        progress = (seg[0] - seg[1]) + gamma * (seg[1] - seg[2])
        g = grounded[2 * w : 2 * w + 2]
        g_mean = (g[0] + gamma * g[1]) / (1 + gamma)
        total = progress + (lambda_gt * g_mean if math.isfinite(g_mean) else 0.0)
        info = {"losses": seg, "reward/progress": progress, "reward/total": total, "reward/grounded": g_mean}
        windows.append(window_terms(info, hold, reward=total))
    assert math.isnan(windows[1][2])
    got = decision_return(windows, "discounted_grounded", gamma**hold)
    assert got == pytest.approx(paper_return(losses, grounded, 0, 4, gamma, lambda_gt))
    no_score = [[w[0], w[1], math.nan] for w in windows]  # no window measured one: G_lp alone
    assert decision_return(no_score, "discounted_grounded", gamma**hold) == pytest.approx(
        decision_return(windows, "discounted", gamma**hold)
    )


def test_bandit_and_hint_copy_and_pickle():
    """Their __new__ picks the per-band wrapper from the spaces; copy and pickle call __new__(cls)
    alone, which raised TypeError (a controller could not be snapshotted or sent to a worker)."""
    import copy
    import pickle

    from controllers.hint import HintController

    for cls in (BanditController, HintController):
        for bands in ((), ("B1", "B2", "B3")):
            obs_space = spec.observation_space(bands)
            controller = cls(obs_space, spec.action_space(max(1, len(bands))))
            obs = obs_space.sample()
            for twin in (copy.deepcopy(controller), pickle.loads(pickle.dumps(controller))):
                assert type(twin) is type(controller) and np.array_equal(twin.act(obs), controller.act(obs))


def test_a_very_sure_starting_beta_builds():
    """init_concentration past about 1420 overflowed math.expm1 when the controller was built."""
    for concentration in (1000.0, 1500.0, 1e6):
        controller = make(BetaReinforceController, BetaReinforceConfig(init_concentration=concentration))
        beta = controller.policy(torch.as_tensor(progress_obs(0.0)).unsqueeze(0))
        total = float(beta.concentration1 + beta.concentration0)
        assert total == pytest.approx(concentration, rel=1e-6)
