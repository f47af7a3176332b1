import dataclasses
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.progress import discounted_progress
from atesd.tasks.synthetic import ChainBagConfig
from envs import spec
from envs.exposure_env import ExposureEnvConfig, TeacherExposureEnv


@pytest.fixture
def engine(tiny_model, tokenizer, small_task):
    cfg = EngineConfig(batch_size=4, lr=1e-3, sampling=SamplingConfig(max_new_tokens=16))
    return DistillEngine(tiny_model, tokenizer, small_task, cfg)


def test_two_windows_observations_inside_the_space(engine):
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=2, total_steps=4), engine=engine)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and set(spec.INFO_KEYS) <= set(info)
    for i, alpha in enumerate((0.25, 1.0)):
        obs, reward, term, trunc, info = env.step(np.array([alpha], dtype=np.float32))
        assert env.observation_space.contains(obs) and obs.dtype == np.float32
        assert set(spec.INFO_KEYS) <= set(info) and info["alpha"] == alpha and len(info["losses"]) == 3
        assert info["reward/progress"] == pytest.approx(discounted_progress(info["losses"], 0.9))
        assert reward == pytest.approx(info["reward/progress"] + env.cfg.lambda_gt * info["reward/grounded"])
        assert term == (i == 1) and not trunc
    assert obs[0] == 1.0 and obs[1] > 0  # progress, EMA alpha
    assert set(info["eval"]) == {f"accuracy/{b}" for b in ("C3", "B2", "M22")}
    assert info["score"] == pytest.approx(np.mean(list(info["eval"].values())))


@pytest.mark.parametrize("action", ["global", "per_band"])
def test_gymnasiums_checker_passes_on_the_real_env(engine, action):
    """check_env's determinism checks compare the info of two seeded steps: wall times live beside
    info (`timings`, `step_timings`), the score carries the reset's evaluation, no key is NaN."""
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=2, total_steps=4, action=action), engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    _, info = env.reset(seed=1)
    _, _, _, _, step = env.step(env.action_space.sample())
    assert step["score"] == info["score"] and "eval" not in step  # the start's, until the next eval
    assert not any(k.startswith("time/") for k in step) and "oracle_alpha" not in step
    assert env.timings["time/window_s"] > 0 and len(env.step_timings) == 2
    assert all(k.startswith("time/") for t in env.step_timings for k in t)


def nan_equal(a, b) -> bool:
    """gymnasium's data_equivalence with NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(nan_equal, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and bool(np.all(a == b))


@pytest.mark.parametrize(
    "engine_kw, env_kw",
    [
        ({}, {"eval_at_reset": False}),  # score NaN until the last window's evaluation
        ({"grounded": False}, {"lambda_gt": 0.0}),  # reward/grounded NaN
        ({"batch_size": 1}, {"action": "per_band"}),  # a band no row drew: band_accuracy NaN
    ],
)
def test_options_that_leave_a_value_unmeasured_are_deterministic_with_nan_in_info(
    tiny_model, tokenizer, small_task, engine_kw, env_kw
):
    """Under these options a value of the step info is NaN (not measured), which gymnasium's check_env
    compares as unequal to itself (the class docstring says so): two seeded runs give equal infos."""
    cfg = EngineConfig(
        **{"batch_size": 4, "lr": 1e-3, **engine_kw}, sampling=SamplingConfig(max_new_tokens=16)
    )
    env = TeacherExposureEnv(
        ExposureEnvConfig(hold_steps=1, total_steps=3, **env_kw),
        engine=DistillEngine(tiny_model, tokenizer, small_task, cfg),
    )

    def run():
        infos = [env.reset(seed=3)[1]]
        for _ in range(2):
            infos.append(env.step(np.full(env.action_space.shape, 0.5, dtype=np.float32))[4])
        return infos

    first, second = run(), run()
    assert nan_equal(first, second)
    assert any(isinstance(v, float) and math.isnan(v) for i in first[1:] for v in i.values()) or any(
        math.isnan(v) for i in first[1:] for v in i.get("band_accuracy", [])
    )


def test_the_change_form_on_the_real_env_passes_the_checker_and_round_trips(engine):
    cfg = ExposureEnvConfig(hold_steps=2, total_steps=6, lambda_gt=3.0, grounded_change=True)
    env = TeacherExposureEnv(cfg, engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    env.reset(seed=3)
    first = env.step(np.array([0.5], dtype=np.float32))[4]
    assert first["reward/grounded"] == 0.0 and env.grounded_prev is not None  # no window before it
    level = env.grounded_prev
    saved = env.state_dict()
    second = env.step(np.array([0.5], dtype=np.float32))[4]
    assert second["reward/grounded"] == pytest.approx(env.grounded_prev - level)
    assert second["reward/total"] == pytest.approx(
        second["reward/progress"] + 3.0 * second["reward/grounded"]
    )
    env.load_state_dict(saved)
    again = env.step(np.array([0.5], dtype=np.float32))[4]
    assert again["reward/grounded"] == pytest.approx(second["reward/grounded"])


def test_reset_restores_the_warm_started_student_and_seeds_reproduce(engine):
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=2, total_steps=4), engine=engine)
    initial = {k: v.clone() for k, v in engine.student.state_dict().items()}
    runs = []
    for _ in range(2):
        env.reset(seed=5)
        assert all(torch.equal(v, initial[k]) for k, v in engine.student.state_dict().items())
        runs.append([env.step(np.array([0.5], dtype=np.float32))[1] for _ in range(2)])
    assert runs[0] == runs[1]


def test_an_infinite_grounded_weight_is_refused():
    with pytest.raises(ValueError, match="lambda_gt must be finite and >= 0, got inf"):
        ExposureEnvConfig(lambda_gt=math.inf)


def test_gymnasium_make_and_invalid_input(engine):
    env = gym.make(
        "atesd/TeacherExposure-v0", engine=engine, cfg=ExposureEnvConfig(hold_steps=1, total_steps=2)
    )
    env.reset(seed=0)
    with pytest.raises(ValueError, match="alpha must be in"):
        env.step(np.array([1.5], dtype=np.float32))
    with pytest.raises(ValueError, match="probe_every"):
        bad = DistillEngine(engine.student, engine.tokenizer, engine.task, EngineConfig(probe_every=0))
        TeacherExposureEnv(engine=bad)


def test_a_task_without_reference_solutions_is_refused(tiny_model, tokenizer, small_task):
    engine = DistillEngine(tiny_model, tokenizer, small_task, EngineConfig(batch_size=2), probe=[])
    with pytest.raises(ValueError, match="probe set of reference solutions"):
        TeacherExposureEnv(engine=engine)


def test_without_the_grounded_score_the_reward_is_the_progress_alone(tiny_model, tokenizer, small_task):
    cfg = EngineConfig(batch_size=2, grounded=False, sampling=SamplingConfig(max_new_tokens=8))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    with pytest.raises(ValueError, match="needs the grounded score"):
        TeacherExposureEnv(engine=engine, cfg=ExposureEnvConfig(hold_steps=2, total_steps=4))
    env = TeacherExposureEnv(engine=engine, cfg=ExposureEnvConfig(hold_steps=2, total_steps=4, lambda_gt=0.0))
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.array([0.5], dtype=np.float32))
    assert math.isfinite(reward) and reward == info["reward/progress"]


def test_a_skipped_update_leaves_the_window_reward_finite(engine):
    """A non-finite update is skipped (up to max_nonfinite_steps in a row) and measures no grounded
    score: the window's grounded mean is over the updates that did, and the next change compares
    with the last level measured."""
    env = TeacherExposureEnv(engine=engine, cfg=ExposureEnvConfig(hold_steps=2, total_steps=6))
    env.reset(seed=0)
    calls = {"n": 0}

    def poison(module, args, output):  # NaN in the second training forward only
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 2:
                return output * float("nan")
        return output

    engine.student.model.norm.register_forward_hook(poison)
    rewards = [env.step(np.array([0.5], dtype=np.float32))[1] for _ in range(3)]
    assert engine.nonfinite_total == 1 and all(math.isfinite(r) for r in rewards), rewards


@pytest.mark.parametrize("change", [True, False])
@pytest.mark.parametrize("bad_window", [0, 1])
def test_a_window_of_skipped_updates_credits_no_grounded_term(engine, change, bad_window):
    """Every update of a window skipped as non-finite (2 in a row, under max_nonfinite_steps) measures
    no grounded score: the info keeps the NaN, the reward is the progress alone (it was NaN, which
    the run loop refuses), and the next change compares with the last window that measured one."""
    cfg = ExposureEnvConfig(hold_steps=2, total_steps=6, grounded_change=change)
    env = TeacherExposureEnv(engine=engine, cfg=cfg)
    env.reset(seed=0)
    batch_loss, bad = engine.batch_loss, {"on": False}

    def overflowing(batch, alpha):  # as an fp16 overflow: a NaN loss, and no grounded score
        out, grounded, t_teacher = batch_loss(batch, alpha)
        if bad["on"]:
            return dataclasses.replace(out, loss=out.loss * float("nan")), math.nan, t_teacher
        return out, grounded, t_teacher

    engine.batch_loss = overflowing
    levels, infos = [], []
    for w in range(3):
        bad["on"] = w == bad_window
        _, reward, *_, info = env.step(np.array([0.5], dtype=np.float32))
        assert math.isfinite(reward) and reward == info["reward/total"]
        infos.append(info)
        levels.append(env.grounded_prev)
    assert engine.nonfinite_total == 2
    bad = infos[bad_window]
    assert math.isnan(bad["reward/grounded"]) and bad["reward/total"] == bad["reward/progress"]
    after = infos[bad_window + 1]
    assert math.isfinite(after["reward/grounded"])
    if change:
        assert levels[bad_window] == (None if bad_window == 0 else levels[0])  # the level is kept
        expected = 0.0 if bad_window == 0 else levels[bad_window + 1] - levels[0]
        assert after["reward/grounded"] == pytest.approx(expected)


def test_the_engine_source_keywords_are_exclusive(engine):
    """engine=, real= and the *_cfg / cache_dir keywords each fix the engine: mixing them would drop
    some silently, so it is refused; a `real` that carries the episode (`real.env`) gives the cfg."""
    from recipes.common import RealEnvConfig

    with pytest.raises(ValueError, match=r"engine_cfg, cache_dir would be ignored beside engine="):
        TeacherExposureEnv(engine=engine, engine_cfg=EngineConfig(lr=0.5), cache_dir="/nonexistent")
    with pytest.raises(ValueError, match=r"real would be ignored beside engine="):
        TeacherExposureEnv(engine=engine, real=RealEnvConfig())
    with pytest.raises(ValueError, match=r"engine_cfg, task_cfg would be ignored beside real="):
        gym.make("atesd/TeacherExposure-v0", real=RealEnvConfig(), engine_cfg=EngineConfig(batch_size=2),
                 task_cfg=ChainBagConfig(eval_size=3))  # fmt: skip
    with pytest.raises(ValueError, match="cfg and real.env are two different episode configs"):
        TeacherExposureEnv(ExposureEnvConfig(hold_steps=1, total_steps=2), real=RealEnvConfig())


def test_the_episode_configs_fields_are_keywords_too(engine):
    """gym.make(id, eval_every=4), as the mock takes its fields (the README's hint failed: unexpected
    keyword); on top of real.env where `real` carries one; beside cfg, or unknown, refused."""
    from recipes.common import RealEnvConfig

    env = gym.make("atesd/TeacherExposure-v0", engine=engine, eval_every=4, hold_steps=2, total_steps=8)
    assert env.unwrapped.cfg == ExposureEnvConfig(eval_every=4, hold_steps=2, total_steps=8)
    episode = ExposureEnvConfig(hold_steps=1, total_steps=2, eval_at_reset=False)
    real = RealEnvConfig(env=episode)
    cfg = TeacherExposureEnv._episode_config(None, real, {"eval_every": 1})
    assert cfg == ExposureEnvConfig(hold_steps=1, total_steps=2, eval_at_reset=False, eval_every=1)
    with pytest.raises(ValueError, match=r"pass either cfg or keyword fields of it \(eval_every\)"):
        TeacherExposureEnv(ExposureEnvConfig(), engine=engine, eval_every=4)
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) eval_evry: .*eval_every"):
        gym.make("atesd/TeacherExposure-v0", engine=engine, eval_evry=4)
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        TeacherExposureEnv(engine=engine, eval_every=-1)


def test_the_episode_configs_keywords_take_their_fields_types(engine):
    """`bench.py --env-set` gives text: the real env took it as given, so signed_progress='no' switched
    the signed reward on, lambda_gt='1e-3' failed as a str, and eval_every=1.5 evaluated after windows
    3, 6 and 7. Text now takes its field's type (as the mock's keywords do), and a value of another
    type is refused by name, in every env config."""
    from envs.mock_env import MockConfig
    from envs.skills_env import SkillChainConfig

    env = TeacherExposureEnv(engine=engine, lambda_gt="1e-3", hold_steps="2", total_steps=4)
    assert env.cfg == ExposureEnvConfig(hold_steps=2, total_steps=4, lambda_gt=1e-3)
    for keywords, message in (
        ({"signed_progress": "no"}, "signed_progress must be true or false, got 'no'"),
        ({"eval_at_reset": "off"}, "eval_at_reset must be true or false, got 'off'"),
        ({"eval_every": 1.5}, "eval_every must be a whole number, got 1.5"),
        ({"eval_k": "1.5"}, "eval_k"),
        ({"gamma": "x"}, "gamma"),
    ):
        with pytest.raises(ValueError, match=message):
            TeacherExposureEnv(engine=engine, **keywords)
    for cls in (ExposureEnvConfig, MockConfig, SkillChainConfig):
        with pytest.raises(ValueError, match="signed_progress must be true or false, got 1"):
            cls(signed_progress=1)
        with pytest.raises(ValueError, match="gamma must be a number, got '0.9'"):
            cls(gamma="0.9")


def test_a_float32_alpha_reveals_the_steps_its_decimal_says():
    """float(np.float32(0.7)) is 0.699999988: an env action of 0.7 must still reveal 7 of 10 steps."""
    from atesd.exposure import num_revealed

    for alpha, m, k in ((0.7, 10, 7), (0.9, 20, 18), (0.35, 20, 7), (0.95, 40, 38), (0.75, 4, 3)):
        action = np.array([alpha], dtype=np.float32)
        assert num_revealed(spec.check_action(action), m) == num_revealed(alpha, m) == k
    assert num_revealed(0.6999999, 10) == 6  # a double's alpha as it is


def test_without_an_engine_the_env_builds_one_through_the_builder(tmp_path):
    from atesd import config as cfglib
    from atesd.builder import RealConfig

    real = cfglib.from_dict(RealConfig, {
        "task": {"chain_lengths": [0, 3], "bag_sizes": [0, 2], "bands": [[3, 0], [0, 2]], "eval_size": 4,
                 "probe_size": 2},
        "model": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1,
                  "intermediate_size": 64},
        "warmstart": {"steps": 3, "copy_steps": 1, "batch_size": 4, "warmup_steps": 1},
        "engine": {"batch_size": 2, "seed": 7, "sampling": {"max_new_tokens": 8}},
        "cache_dir": str(tmp_path),
    })  # fmt: skip
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=1, total_steps=1), real=real)
    assert env.engine.cfg.seed == 7 and env.engine.cfg.batch_size == 2
    assert env.engine.student.config.hidden_size == 32 and list(tmp_path.iterdir())  # warm start cached
    obs, _ = env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(np.array([0.5], dtype=np.float32))
    assert env.observation_space.contains(obs) and np.isfinite(reward) and terminated
    # recipes' RealEnvConfig carries the episode too (`env`): gym.make takes it from there (it ran the
    # defaults H = 5, T = 100 before)
    from recipes.common import RealEnvConfig

    episode = ExposureEnvConfig(hold_steps=1, total_steps=2, eval_at_reset=False)
    made = gym.make("atesd/TeacherExposure-v0", real=RealEnvConfig(**vars(real), env=episode))
    assert made.unwrapped.cfg == episode and made.unwrapped.engine.cfg.batch_size == 2


def test_the_real_env_refuses_steps_before_reset_and_after_the_end(engine):
    env = TeacherExposureEnv(
        ExposureEnvConfig(hold_steps=1, total_steps=1, eval_at_reset=False), engine=engine
    )
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.array([0.5], dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"state_dict\(\) before reset"):  # was AttributeError steps_done
        env.state_dict()
    env.reset(seed=0)
    assert env.step(np.array([0.5], dtype=np.float32))[2]
    with pytest.raises(RuntimeError, match="episode is over"):  # was "hold_steps must be >= 1"
        env.step(np.array([0.5], dtype=np.float32))
