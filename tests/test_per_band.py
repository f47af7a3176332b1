"""The per-band action: one alpha per difficulty band, in the mock env, the real env, every
controller, run.py's logs and bench.py's specs."""

import copy
import dataclasses
import json

import numpy as np
import pytest
from _helpers import assert_same_state
from gymnasium.utils.env_checker import check_env

import recipes.bench as bench
import recipes.run as run
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.logging import read_jsonl
from atesd.state import load_state, save_state
from atesd.tasks.base import action_band, action_bands
from controllers import CONTROLLERS
from controllers.base import run_episode
from controllers.fixed import FixedConfig, FixedController
from controllers.shared import SharedDecisions
from envs import spec
from envs.exposure_env import ExposureEnvConfig, TeacherExposureEnv
from envs.mock_env import MIX_OPTIMA, MockConfig, MockExposureEnv


def mix(**kw) -> MockExposureEnv:
    return MockExposureEnv(MockConfig(variant="mix", action="per_band", total_steps=100, **kw))


# ---- the mock -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mix", "rising"])
def test_the_mock_per_band_passes_the_gymnasium_checker(variant):
    env = MockExposureEnv(MockConfig(variant=variant, action="per_band"))
    check_env(env, skip_render_check=True)
    k = 2 if variant == "mix" else 1
    assert env.action_space.shape == (k,) and env.observation_space.shape == (6 + k,)
    assert spec.observation_names(env.bands)[6:] == tuple(f"rollout_accuracy/{b}" for b in env.bands)


def test_one_group_per_band_is_the_global_action():
    """A single-group variant under the per-band action is the same env as under the global one."""
    a = MockExposureEnv(MockConfig(action="per_band"))
    b = MockExposureEnv(MockConfig())
    a.reset(seed=3), b.reset(seed=3)
    for alpha in (0.2, 0.9, 0.5):
        oa, ra, *_ = a.step(np.array([alpha], dtype=np.float32))
        ob, rb, *_ = b.step(np.array([alpha], dtype=np.float32))
        assert ra == rb and np.array_equal(oa[:6], ob)


def test_the_per_band_optimum_beats_every_single_alpha_on_the_mix():
    """What the per-band action is for: on the mix the two groups' optima (0.8 easy, 0.3 hard) held
    together end above the best of a 21-point grid of single alphas."""

    def final(action):
        env = mix(noise=0.0)
        env.reset(seed=0)
        done = False
        while not done:
            _, _, done, _, info = env.step(np.asarray(action, dtype=np.float32))
        return info["score"]

    best_single = max(final([a, a]) for a in np.linspace(0, 1, 21))
    assert final(list(MIX_OPTIMA)) > best_single + 0.02


def test_two_per_band_mocks_with_one_seed_give_one_rollout():
    runs = []
    for _ in range(2):
        env = mix()
        env.reset(seed=11)
        runs.append([env.step(np.array([0.6, 0.2], dtype=np.float32))[:2] for _ in range(5)])
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(*runs))


def test_a_wrong_per_band_action_is_refused():
    env = mix()
    env.reset(seed=0)
    for bad, message in (([0.5], "one alpha per band"), ([0.5, 1.5], "in \\[0, 1\\]"),
                         ([0.5, np.nan], "finite")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            env.step(np.array(bad, dtype=np.float32))
    with pytest.raises(ValueError, match="action must be one of"):
        MockConfig(action="per_problem")


# ---- every controller ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_every_controller_acts_per_band_and_its_state_round_trips(name, tmp_path):
    """A state saved mid-episode and loaded into a controller built with another seed is the same
    state, and that twin continues the episode (no reset between) with the same per-band actions."""
    env = mix()
    cls, cfg_cls = CONTROLLERS[name]
    cfg = cfg_cls()
    controller = cls(env.observation_space, env.action_space, cfg)
    result = run_episode(env, controller, seed=1)
    assert result.steps == 20 and len(result.final_info["alpha"]) == 2
    cut, actions = {}, []

    def on_step(step, t):  # a second episode, cut after 8 steps: the state and the env kept there
        actions.append(t.action)
        if step == 8:
            save_state(controller.state_dict(), tmp_path / "state")
            cut.update(env=copy.deepcopy(env), obs=t.next_obs.copy())

    run_episode(env, controller, seed=2, on_step=on_step)
    assert len(actions) == 20 and all(a.shape == (2,) and env.action_space.contains(a) for a in actions)
    other_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1) if hasattr(cfg, "seed") else cfg
    twin = cls(env.observation_space, env.action_space, other_cfg)
    saved = load_state(tmp_path / "state")
    twin.load_state_dict(saved)
    assert_same_state(load_state(tmp_path / "state"), twin.state_dict())
    twin_actions = []
    run_episode(cut["env"], twin, start=(cut["obs"], 8), on_step=lambda _, t: twin_actions.append(t.action))
    assert len(twin_actions) == 12
    assert all(np.array_equal(a, b) for a, b in zip(actions[8:], twin_actions, strict=True))


def test_learners_move_each_band_on_its_own():
    """beta_reinforce's K Betas and the per-band bandit learn different alphas for the two groups
    (easy optimum 0.8, hard 0.3): after 20 runs each one's easy alpha is above its hard alpha."""
    for name in ("beta_reinforce", "bandit"):
        env = mix()
        cls, cfg_cls = CONTROLLERS[name]
        controller = cls(env.observation_space, env.action_space, cfg_cls())
        alphas = []
        for run_i in range(20):
            result = run_episode(env, controller, seed=run_i)
            alphas.append(result.final_info["alpha"])
        easy, hard = np.mean(alphas[-5:], axis=0)
        assert easy > hard + 0.1, (name, easy, hard)


def test_fixed_takes_one_alpha_per_band_and_refuses_a_wrong_count():
    env = mix()
    fixed = FixedController(env.observation_space, env.action_space, FixedConfig(alphas=(0.8, 0.3)))
    assert fixed.act(env.reset(seed=0)[0]).tolist() == pytest.approx([0.8, 0.3])
    broadcast = FixedController(env.observation_space, env.action_space, FixedConfig(alpha=0.6))
    assert broadcast.act(env.reset(seed=0)[0]).tolist() == pytest.approx([0.6, 0.6])
    with pytest.raises(ValueError, match="has 3 values; the action has 2"):
        FixedController(env.observation_space, env.action_space, FixedConfig(alphas=(0.1, 0.2, 0.3)))


def test_shared_decisions_broadcast_every_bands_alpha():
    """Under torchrun rank 0 decides and every rank trains at its alphas: all K of them."""
    env, sent = mix(), []
    main = SharedDecisions(
        FixedController(env.observation_space, env.action_space, FixedConfig(alphas=(0.8, 0.3))),
        True, lambda x: sent.append(x) or x, size=2,
    )  # fmt: skip
    obs = env.reset(seed=0)[0]
    assert main.act(obs).tolist() == pytest.approx([0.8, 0.3])
    received = iter(sent)  # another rank: its own controller's choice is never used
    other = SharedDecisions(
        FixedController(env.observation_space, env.action_space, FixedConfig(alpha=0.5)),
        False, lambda x: next(received), size=2,
    )  # fmt: skip
    assert other.act(obs).tolist() == pytest.approx([0.8, 0.3])
    with pytest.raises(ValueError, match="gave 2 alphas for an action of 1"):
        SharedDecisions(main.controller, True, float, size=1).act(obs)


# ---- the real env -------------------------------------------------------------------------
@pytest.fixture
def engine(tiny_model, tokenizer, small_task):
    cfg = EngineConfig(batch_size=4, lr=1e-3, sampling=SamplingConfig(max_new_tokens=16))
    return DistillEngine(tiny_model, tokenizer, small_task, cfg)


def test_every_training_problem_gets_an_evaluation_band(small_task):
    bands = action_bands(small_task)
    assert bands == tuple(small_task.eval_sets())
    problems = small_task.sample(np.random.default_rng(0), 200)
    assert {action_band(small_task, p) for p in problems} <= set(bands)
    for band, evals in small_task.eval_sets().items():  # an evaluation problem keeps its own band
        assert {action_band(small_task, p) for p in evals} == {band}


def test_the_teacher_sees_each_band_at_its_own_alpha(engine):
    problems = engine.task.sample(np.random.default_rng(1), 40)
    bands = action_bands(engine.task)
    alpha = {band: (1.0 if i == 0 else 0.0) for i, band in enumerate(bands)}
    prompts = engine.teacher_prompts(problems, alpha, [""] * len(problems))
    for problem, ids in zip(problems, prompts):
        a = alpha[action_band(engine.task, problem)]
        assert ids == engine.builder.encode(engine.builder.teacher_prompt(problem, a))
    with pytest.raises(KeyError, match="no alpha for band"):
        engine.teacher_prompts(problems, {bands[0]: 0.5}, [""] * len(problems))


def test_the_real_env_per_band_acts_per_band_and_reports_each_band(engine):
    """(gymnasium's check_env on the real env: tests/test_exposure_env.py.)"""
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=2, total_steps=4, action="per_band"), engine=engine)
    repeats = []
    for _ in range(2):
        obs, _ = env.reset(seed=4)
        repeats.append((obs, env.step(np.array([0.3, 0.6, 0.9], dtype=np.float32))[:2]))
    assert np.array_equal(repeats[0][0], repeats[1][0]) and repeats[0][1][1] == repeats[1][1][1]
    assert np.array_equal(repeats[0][1][0], repeats[1][1][0])
    assert env.bands == ("C3", "B2", "M22") and env.action_space.shape == (3,)
    obs, _ = env.reset(seed=0)
    obs, _, _, _, info = env.step(np.array([0.2, 0.5, 1.0], dtype=np.float32))
    assert info["alpha"] == pytest.approx([0.2, 0.5, 1.0]) and len(info["band_accuracy"]) == 3
    assert env.observation_space.contains(obs) and obs.shape == (9,)
    assert info["stats/loss"] == info["stats/loss"]  # a real window ran


# ---- the recipes ----------------------------------------------------------------------------
def test_run_py_logs_the_per_band_alphas(tmp_path):
    run_dir = run.main(["--controller", "beta_reinforce", "--env", "mock", "mock.variant=mix",
                        "mock.action=per_band", "mock.total_steps=50", f"out_dir={tmp_path}"])  # fmt: skip
    decisions = [d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision"]
    assert len(decisions) == 10 and all(len(d["alpha"]) == 2 and len(d["beta_a"]) == 2 for d in decisions)
    assert all(len(d["oracle_alpha_after"]) == 2 for d in decisions)
    windows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "window"]
    assert {"env/alpha/easy", "env/alpha/hard"} <= set(windows[0])
    assert (run_dir / "plots" / "alpha.png").exists()
    assert json.loads((run_dir / "summary.json").read_text())["windows"] == 10
    # one band (the rising mock): its Beta a list of one as its alpha is (it was a scalar beside it)
    one = run.main(["--controller", "beta_reinforce", "--env", "mock", "mock.action=per_band",
                    "mock.total_steps=50", f"out_dir={tmp_path / 'one'}"])  # fmt: skip
    decisions = [d for d in read_jsonl(one / "decisions.jsonl") if d["kind"] == "decision"]
    assert all(len(d["alpha"]) == len(d["beta_a"]) == len(d["beta_mean"]) == 1 for d in decisions)
    assert (one / "plots" / "alpha.png").exists()


def test_bench_takes_per_band_fixed_specs(tmp_path):
    assert bench._split("fixed:alphas=[0.8,0.3],random") == ["fixed:alphas=[0.8,0.3]", "random"]
    out = bench.main(["--env", "mock", "--controllers", "fixed:alphas=[0.8,0.3],fixed:alpha=0.55",
                      "--baseline", "fixed:alpha=0.55", "--seeds", "2", "--set", "mock.variant=mix",
                      "--set", "mock.action=per_band", "--set", "plots=false",
                      "--out", str(tmp_path)])  # fmt: skip
    summary = json.loads((out / "results.json").read_text())["summary"]["mock"]
    assert summary["fixed:alphas=[0.8,0.3]"]["mean"] > summary["fixed:alpha=0.55"]["mean"]
