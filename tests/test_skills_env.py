"""The held-out exposure env (envs/skills_env.py): the Gymnasium contract, seeding, and the
mechanisms its docstring states (adaptive exposure pays; the paper's reward is lured past the
optimum; an exposure-neutral grounded score is not)."""

import copy
import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
import recipes.bench as bench
from atesd.config import ConfigError
from envs import spec
from envs.skills_env import PROFILES, SkillChainConfig, SkillChainEnv


def act(alpha: float) -> np.ndarray:
    return np.array([alpha], dtype=np.float32)


def final_competence(env: SkillChainEnv, policy, seed: int = 0) -> float:
    env.reset(seed=seed)
    done = False
    while not done:
        _, _, done, _, info = env.step(act(policy(env)))
    return info["score"]


@pytest.mark.parametrize("profile", PROFILES)
def test_gymnasiums_checker_passes_and_ids_name_the_profiles(profile):
    env = gym.make(f"atesd/SkillChain-{profile}-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    assert env.unwrapped.cfg.profile == profile
    assert env.unwrapped.observation_names == spec.OBS_NAMES
    _, info = env.reset(seed=0)
    _, _, _, _, info = env.step(act(0.5))
    assert set(spec.INFO_KEYS) <= set(info) and len(info["losses"]) == 6


def test_a_misspelt_setting_is_named_with_the_nearest_one():
    """`--env-set lambda=1` (gymnasium.make's keywords) said only that a constructor got an unexpected
    keyword argument; the mock env's keywords the same."""
    with pytest.raises(
        ValueError, match=r"SkillChainEnv has no setting 'lambda'; did you mean 'lambda_gt'\? "
    ):
        gym.make("atesd/SkillChain-wall-v0", **{"lambda": 1})
    with pytest.raises(
        ValueError, match=r"MockExposureEnv has no setting 'trap_revrt'; did you mean 'trap_revert'"
    ):
        gym.make("atesd/MockExposure-v0", trap_revrt=0.2)
    with pytest.raises(ValueError, match="pass either cfg or keyword overrides, not both"):
        SkillChainEnv(SkillChainConfig(), skills=3)


def test_a_profiles_id_takes_a_cfg_of_its_profile_and_refuses_another():
    """`cfg=` was refused with "pass either cfg or keyword overrides" (the id's own profile keyword
    collided with it), and `profile=` silently replaced the profile the id names."""
    env = gym.make("atesd/SkillChain-wall-v0", cfg=SkillChainConfig(profile="wall", skills=4))
    assert (env.unwrapped.cfg.profile, env.unwrapped.cfg.skills) == ("wall", 4)
    assert gym.make("atesd/SkillChain-forget-v0", skills=4).unwrapped.cfg.profile == "forget"
    for given in ({"cfg": SkillChainConfig()}, {"profile": "ramp"}):
        with pytest.raises(ValueError, match="SkillChain-wall-v0 is the 'wall' profile, but profile 'ramp'"):
            gym.make("atesd/SkillChain-wall-v0", **given)


def test_same_seed_same_rollout_and_seeds_differ():
    def rollout(seed):
        env, out = SkillChainEnv(profile="forget"), []
        env.reset(seed=seed)
        for alpha in np.linspace(0.1, 0.9, 40):
            obs, reward, *_ = env.step(act(alpha))
            out.append((obs.tolist(), reward))
        return out

    assert rollout(3) == rollout(3) and rollout(3) != rollout(4)


def test_bad_config_and_actions_raise():
    with pytest.raises(ValueError, match="profile must be one of"):
        SkillChainConfig(profile="cliff")
    with pytest.raises(ValueError, match="memory must be in"):
        SkillChainConfig(memory=1.0)
    with pytest.raises(ValueError, match="either cfg or keyword"):
        SkillChainEnv(SkillChainConfig(), profile="wall")
    env = SkillChainEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(act(1.5))


@pytest.mark.parametrize("name", ["lambda_gt", "rate", "distraction", "memorise", "noise", "learn_noise"])
def test_an_infinite_constant_is_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be finite and "):
        SkillChainConfig(**{name: math.inf})


def test_the_emas_start_at_fixed_values_not_at_their_first_measurements():
    """As the Starting State section says: one window at alpha 1 gives ema_alpha 1 - 0.9^H."""
    env = SkillChainEnv()
    obs, _ = env.reset(seed=0)
    assert obs[1] == 0.0 and obs[4] == 1.0 and obs[5] == np.float32(0.4)
    obs, *_ = env.step(act(1.0))
    assert obs[1] == pytest.approx(1 - 0.9**5) == pytest.approx(0.40951)


def greedy(env: SkillChainEnv) -> float:
    """The alpha whose two windows raise competence most (a one-state lookahead on a copy)."""
    scores = []
    for alpha in np.linspace(0.0, 1.0, 21):
        trial = copy.deepcopy(env)
        for _ in range(2):
            if trial.steps_done < trial.cfg.total_steps:
                trial.step(act(alpha))
        scores.append((trial.competence(), alpha))
    return float(max(scores)[1])


@pytest.mark.parametrize("profile", PROFILES)
def test_an_exposure_that_follows_the_student_beats_every_fixed_one(profile):
    """Why this env can tell adaptive exposure from fixed: the best exposure moves with the frontier."""
    env = SkillChainEnv(profile=profile)
    best_fixed = max(final_competence(env, lambda e, a=a: a) for a in np.linspace(0.0, 1.0, 11))
    assert final_competence(env, greedy) > best_fixed + 0.1


def test_the_papers_reward_is_lured_past_the_optimum_and_a_neutral_grounded_score_is_not():
    """Mid-run, the lookahead return (two windows, gamma^H) of the paper's reward (positive drops, the
    teacher's grounded score at lambda 0.1) peaks above the alpha that maximises competence; with the
    student's grounded score dominating (lambda 1) it peaks within 0.1 of that alpha, and so does the
    default reward (the change of the student's grounded score, lambda 30)."""

    def peaks(cfg: SkillChainConfig) -> tuple[float, float]:
        env = SkillChainEnv(cfg)
        env.reset(seed=0)
        for _ in range(14):
            env.step(act(0.6))
        grid, returns, competence = np.linspace(0.0, 1.0, 21), [], []
        for alpha in grid:
            trial = copy.deepcopy(env)
            rewards = [trial.step(act(alpha if k == 0 else 0.6))[1] for k in range(4)]
            returns.append(rewards[0] + cfg.gamma**cfg.hold_steps * rewards[1])
            competence.append(trial.competence())
        return float(grid[int(np.argmax(returns))]), float(grid[int(np.argmax(competence))])

    paper = dict(lambda_gt=0.1, grounded_by="teacher", grounded_change=False)
    lured, best = peaks(SkillChainConfig(noise=0.0, learn_noise=0.0, **paper))
    assert lured >= best + 0.3
    level = dict(lambda_gt=1.0, grounded_by="student", grounded_change=False)
    neutral, best = peaks(SkillChainConfig(noise=0.0, learn_noise=0.0, **level))
    assert abs(neutral - best) <= 0.1
    peak, best = peaks(SkillChainConfig(noise=0.0, learn_noise=0.0))  # the default: its change
    assert abs(peak - best) <= 0.1


def test_bench_runs_it_by_id_with_env_keywords(tmp_path):
    out = bench.main(["--env", "atesd/SkillChain-wall-v0", "--env-set", "lambda_gt=1", "--env-set",
                      "grounded_by=student", "--env-set", "learn_noise=0", "--controllers",
                      "fixed:alpha=0.5,random", "--baseline", "random", "--seeds", "2", "--set",
                      "plots=false", "--set", "episodes=2", "--out", str(tmp_path)])  # fmt: skip

    record = json.loads((out / "results.json").read_text())
    assert record["env_kwargs"] == {"lambda_gt": 1, "grounded_by": "student", "learn_noise": 0}
    # the keywords reached each unit's env: without learning noise a fixed alpha learns the same
    # whatever the seed, to what the env built with them reaches (the default env's noise does not)
    kw = {"profile": "wall", "lambda_gt": 1.0, "grounded_by": "student"}
    fixed_final = final_competence(SkillChainEnv(**kw, learn_noise=0.0), lambda env: 0.5)
    noisy_finals = [final_competence(SkillChainEnv(**kw), lambda env: 0.5, seed=s) for s in range(4)]
    assert all(abs(f - fixed_final) > 1e-6 for f in noisy_finals)
    fixed_units = [u for u in record["units"] if u["controller"] == "fixed:alpha=0.5"]
    assert len(fixed_units) == 2
    assert all(u["final"] == pytest.approx(fixed_final, abs=1e-12) for u in fixed_units)
    summary = record["summary"]["atesd/SkillChain-wall-v0"]
    assert set(summary) == {"fixed:alpha=0.5", "random"}
    assert all(len(u["runs"]) == 2 and u["runs"][-1] == u["final"] for u in record["units"])
    fixed = [u for u in record["units"] if u["controller"] == "fixed:alpha=0.5"]
    assert summary["fixed:alpha=0.5"]["run1_mean"] == pytest.approx(np.mean([u["runs"][0] for u in fixed]))
    with pytest.raises(ConfigError, match="could not be built from --env-set"):
        bench.plan(bench.build_parser().parse_args(["--env", "atesd/SkillChain-v0", "--env-set", "rate=-1"]))
    with pytest.raises(ConfigError, match="--env-set applies to envs given by Gymnasium id"):
        bench.plan(bench.build_parser().parse_args(["--env", "mock", "--env-set", "rate=1"]))


def test_mastery_stays_in_the_unit_interval_under_a_fast_rate():
    env = SkillChainEnv(rate=0.9, learn_noise=0.3, distraction=0.0)
    env.reset(seed=1)
    for _ in range(8):
        _, _, terminated, _, info = env.step(np.array([1.0], dtype=np.float32))
        assert (
            np.all((env.unwrapped.mastery >= 0.0) & (env.unwrapped.mastery <= 1.0)) and info["score"] <= 1.0
        )
        if terminated:
            break


def test_sizes_must_be_whole_numbers():
    """A float H or skill count (`--env-set hold_steps=2.5`) passed every range check and failed at
    the first step with numpy's TypeError, after bench's up-front check had let it through."""
    from envs.mock_env import MockExposureEnv

    for make, kwargs, name in (
        (SkillChainEnv, {"hold_steps": 2.5, "total_steps": 5}, "hold_steps"),
        (SkillChainEnv, {"total_steps": 200.0}, "total_steps"),
        (SkillChainEnv, {"skills": 3.5}, "skills"),
        (MockExposureEnv, {"hold_steps": 2.5, "total_steps": 5}, "hold_steps"),
        (MockExposureEnv, {"hold_steps": True, "total_steps": 5}, "hold_steps"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be a whole number"):
            make(**kwargs)
    assert SkillChainEnv(hold_steps=np.int64(5), total_steps=np.int64(200)).reward_spec.hold_steps == 5
