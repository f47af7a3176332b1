import copy
import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
from atesd.progress import discounted_progress
from envs import spec
from envs.mock_env import MockConfig, MockExposureEnv


def act(alpha):
    return np.array([alpha], dtype=np.float32)


@pytest.mark.parametrize("variant", ["rising", "constant", "falling", "mix"])
def test_check_env_is_clean(variant):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(MockExposureEnv(variant=variant), skip_render_check=True)


def test_same_seed_same_200_step_rollout():
    runs = []
    for seed in (3, 3, 4):
        env, rng = gym.make("atesd/MockExposure-v0", variant="mix"), np.random.default_rng(7)
        env.reset(seed=seed)
        trace = []
        for _ in range(200):
            obs, r, term, trunc, info = env.step(act(rng.random()))
            trace.append((obs.tobytes(), r, info["score"], info["oracle_alpha"]))
            if term:
                env.reset()
        runs.append(trace)
    assert runs[0] == runs[1]
    # another seed, the same actions: other noisy observations and rewards at (almost) every step
    pairs = list(zip(runs[0], runs[2], strict=True))
    assert all(a[0] != b[0] for a, b in pairs) and sum(a[1] != b[1] for a, b in pairs) >= 190


def run_policy(env, policy, seed=0):
    obs, info = env.reset(seed=seed)
    done = False
    while not done:
        obs, r, done, _, info = env.step(act(policy(info)))
    return info["score"]


@pytest.mark.parametrize("variant", ["rising", "constant", "falling", "mix"])
def test_oracle_beats_every_fixed_alpha(variant):
    env = MockExposureEnv(variant=variant, noise=0.0)
    oracle = run_policy(env, lambda info: info["oracle_alpha"])
    fixed = [run_policy(env, lambda info, a=a: a) for a in np.linspace(0, 1, 11)]
    assert oracle >= max(fixed) - 1e-9
    if variant != "mix":
        assert oracle == pytest.approx(MockConfig().target_competence, abs=1e-6)


def test_best_exposure_rises_with_competence_and_mismatch_with_alpha():
    env = MockExposureEnv(noise=0.0)
    obs, info = env.reset(seed=0)
    optima, comps = [], []
    done = False
    while not done:
        optima.append(info["oracle_alpha"])
        obs, r, done, _, info = env.step(act(info["oracle_alpha"]))
        comps.append(info["score"])
    assert optima[0] == pytest.approx(0.3) and 0.7 < optima[-1] <= 0.8
    assert np.all(np.diff(optima) >= 0) and np.all(np.diff(comps) > 0)
    falling = MockExposureEnv(variant="falling", noise=0.0)
    assert run_policy(falling, lambda i: i["oracle_alpha"]) > 0.8
    mismatch = []
    for a in (0.0, 0.5, 1.0):
        env = MockExposureEnv()
        env.reset(seed=0)
        mismatch.append(np.mean([env.step(act(a))[4]["stats/mismatch"] for _ in range(20)]))
    assert mismatch[0] < mismatch[1] < mismatch[2]


def test_delayed_credit_trap():
    """Overexposure wins the one-step and one-window rewards, loses the lookahead return with the
    grounded term, and leaves the student less competent."""
    env = MockExposureEnv(noise=0.0)
    obs, info = env.reset(seed=0)
    for _ in range(30):
        obs, r, _, _, info = env.step(act(info["oracle_alpha"]))
    outcomes = {}
    for over in (0.0, 0.4):
        e = copy.deepcopy(env)
        _, r0, _, _, i0 = e.step(act(info["oracle_alpha"] + over))
        _, r1, _, _, i1 = e.step(act(i0["oracle_alpha"]))
        immediate = max(0.0, i0["losses"][0] - i0["losses"][1])
        outcomes[over] = (immediate, i0["reward/progress"], r0 + 0.9**5 * r1, e.competence())
    (imm0, win0, ret0, c0), (imm4, win4, ret4, c4) = outcomes[0.0], outcomes[0.4]
    assert imm4 > 1.5 * imm0 and win4 > 1.2 * win0  # a one-step learner is misled
    assert ret4 < ret0 and c4 < c0  # the discounted, grounded return is not
    # and the dip reverts: three quarters within the next window
    e = copy.deepcopy(env)
    dip = e.step(act(1.0))[4]["dip"]
    assert e.step(act(0.0))[4]["dip"] == pytest.approx(0.25 * dip, rel=0.05, abs=0.0)


def test_reward_is_the_window_progress_plus_grounded():
    for signed in (False, True):
        env = MockExposureEnv(signed_progress=signed)
        env.reset(seed=1)
        for a in (0.2, 0.9, 0.1):
            _, r, _, _, info = env.step(act(a))
            assert info["reward/progress"] == pytest.approx(discounted_progress(info["losses"], 0.9, signed))
            assert r == pytest.approx(info["reward/progress"] + env.cfg.lambda_gt * info["reward/grounded"])
            assert len(info["losses"]) == 6


def test_the_change_form_is_the_window_mean_grounded_minus_the_last_and_resumes():
    level = MockExposureEnv(lambda_gt=3.0, grounded_change=False)
    change = MockExposureEnv(lambda_gt=3.0, grounded_change=True)
    level.reset(seed=2)
    change.reset(seed=2)
    prev, infos = None, []
    for i, a in enumerate((0.2, 0.9, 0.5, 0.7)):
        lv, ch = level.step(act(a))[4], change.step(act(a))[4]
        infos.append(ch)
        assert ch["losses"] == lv["losses"]  # the same dynamics: only the reward's grounded term differs
        assert ch["reward/grounded"] == pytest.approx(0.0 if prev is None else lv["reward/grounded"] - prev)
        assert ch["reward/total"] == pytest.approx(ch["reward/progress"] + 3.0 * ch["reward/grounded"])
        prev = lv["reward/grounded"]
        if i == 1:
            saved = change.state_dict()
    resumed = MockExposureEnv(lambda_gt=3.0, grounded_change=True)
    resumed.load_state_dict(saved)
    again = resumed.step(act(0.5))[4]  # the previous window's mean came along with the state
    assert again["reward/grounded"] == infos[2]["reward/grounded"] != 0.0
    assert change.reward_spec.grounded_change and not level.reward_spec.grounded_change


def test_info_keys_and_episode_end():
    env = MockExposureEnv(total_steps=20, hold_steps=5)
    obs, info = env.reset(seed=0)
    assert set(spec.INFO_KEYS) <= set(info)
    for i in range(4):
        obs, r, term, trunc, info = env.step(act(0.5))
        assert set(spec.INFO_KEYS) <= set(info) and env.observation_space.contains(obs)
        assert term == (i == 3) and not trunc
    assert info["steps_done"] == 20 and obs[0] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1, 1.5, np.array([0.1, 0.2])])
def test_invalid_actions_raise(bad):
    env = MockExposureEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad if isinstance(bad, np.ndarray) else act(bad))


def test_config_validation():
    with pytest.raises(ValueError, match="trap_revert"):
        MockConfig(trap_revert=1.0)
    with pytest.raises(ValueError, match="variant"):
        MockConfig(variant="zigzag")


@pytest.mark.parametrize("name", ["lambda_gt", "width", "trap_strength", "noise"])
def test_an_infinite_constant_is_refused(name):
    """inf passed the >= 0 checks and gave infinite rewards or zeroed observations."""
    with pytest.raises(ValueError, match=f"{name} must be finite and "):
        MockConfig(**{name: math.inf})


def test_the_emas_start_at_fixed_values_not_at_their_first_measurements():
    """As the Starting State section says: one window at alpha 1 gives ema_alpha 1 - 0.9^H."""
    env = MockExposureEnv()
    obs, _ = env.reset(seed=0)
    assert obs[1] == 0.0 and obs[4] == 1.0 and obs[5] == np.float32(0.45)
    obs, *_ = env.step(act(1.0))
    assert obs[1] == pytest.approx(1 - 0.9**5) == pytest.approx(0.40951)


def lookahead_return(env, alphas, mode):
    """A decision's return on a copy of `env`: alphas[0] for its window, then the rest (H = 5, L = 10)."""
    e, progress, grounded = copy.deepcopy(env), [], []
    for a in alphas:
        info = e.step(act(a))[4]
        progress.append(info["reward/progress"])
        grounded.append(info["reward/grounded"])
    if mode == "window":
        return progress[0]
    w = (0.9**5) ** np.arange(len(alphas))
    return float(w @ progress) + 0.1 * float(w @ grounded) / float(w.sum())


@pytest.mark.parametrize("history", ["oracle", 0.5, 0.85, 1.0])
@pytest.mark.parametrize("windows", [0, 20, 60])
def test_the_lookahead_return_prefers_near_the_optimum_and_the_window_reward_overexposure(history, windows):
    """The trap's stated principle, from states reached by any exposure history: the discounted,
    grounded return of a decision (its window, then one at the history's alpha) peaks within
    [alpha* - 0.05, alpha* + 0.15], while its window's progress alone peaks at least 0.25 above alpha*
    (where any overexposure is capped, so far-too-high exposure buys nothing more)."""
    env = MockExposureEnv(noise=0.0, lambda_gt=0.1, grounded_change=False)  # the paper's reward
    _, info = env.reset(seed=0)
    for _ in range(windows):
        info = env.step(act(info["oracle_alpha"] if history == "oracle" else history))[4]
    best, follow = env.oracle_alpha(), env.oracle_alpha() if history == "oracle" else history
    grid = np.linspace(0.0, 1.0, 41)
    peak = {
        mode: grid[np.argmax([lookahead_return(env, [a, follow], mode) for a in grid])]
        for mode in ("window", "discounted_grounded")
    }
    assert best - 0.05 <= peak["discounted_grounded"] <= best + 0.15, (best, peak)
    assert peak["window"] >= best + 0.25, (best, peak)


BAD_ACTIONS = [  # (action, the message's telling part): never repaired, never guessed
    (np.array([[0.5]], dtype=np.float32), "exactly one alpha"),
    (np.array(["0.5"]), "exactly one alpha"),
    ("0.5", "exactly one alpha"),
    (np.array([True]), "exactly one alpha"),
    (True, "exactly one alpha"),
    (np.array([0.5 + 0j]), "exactly one alpha"),
    (np.array([0.5, 0.5], dtype=np.float32), "exactly one alpha"),
    (np.array([np.nan], dtype=np.float32), "finite"),
    (np.array([1.5], dtype=np.float32), "in [0, 1]"),
    (-0.1, "in [0, 1]"),
]


@pytest.mark.parametrize("action,message", BAD_ACTIONS, ids=[repr(a)[:30] for a, _ in BAD_ACTIONS])
def test_a_malformed_action_is_refused(action, message):
    env = MockExposureEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        env.step(action)


def test_stepping_before_reset_or_after_the_end_is_refused():
    env = MockExposureEnv(total_steps=10)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.array([0.5], dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"state_dict\(\) before reset"):  # was AttributeError 'rooms'
        env.state_dict()
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(np.array([0.5], dtype=np.float32))[2]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(np.array([0.5], dtype=np.float32))
    env.reset(seed=1)
    env.step(np.array([0.5], dtype=np.float32))  # a new episode steps again
