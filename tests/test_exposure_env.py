import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the envs)
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.progress import discounted_progress
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
        assert reward == pytest.approx(info["reward/progress"] + 0.1 * info["reward/grounded"])
        assert term == (i == 1) and not trunc
    assert obs[0] == 1.0 and obs[1] > 0  # progress, EMA alpha
    assert set(info["eval"]) == {f"accuracy/{b}" for b in ("C3", "B2", "M22")}
    assert info["score"] == pytest.approx(np.mean(list(info["eval"].values())))


def test_reset_restores_the_warm_started_student_and_seeds_reproduce(engine):
    env = TeacherExposureEnv(ExposureEnvConfig(hold_steps=2, total_steps=4), engine=engine)
    initial = {k: v.clone() for k, v in engine.student.state_dict().items()}
    runs = []
    for _ in range(2):
        env.reset(seed=5)
        assert all(torch.equal(v, initial[k]) for k, v in engine.student.state_dict().items())
        runs.append([env.step(np.array([0.5], dtype=np.float32))[1] for _ in range(2)])
    assert runs[0] == runs[1]


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
