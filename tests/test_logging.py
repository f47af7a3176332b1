"""The run's logs: one key scheme from run_episode's logger hook, and MetricsLogger's resume offsets."""

from __future__ import annotations

import math

from atesd.logging import MetricsLogger, read_jsonl
from controllers import CONTROLLERS
from controllers.base import run_episode, step_metrics
from envs.mock_env import MockExposureEnv


def test_step_metrics_keep_namespaces_and_flatten_eval():
    info = {"alpha": 0.5, "reward/progress": 0.1, "stats/loss": 2.0, "losses": [1.0, 0.9], "score": 0.3,
            "eval": {"accuracy/C6": 0.25, "note": "x"}, "flag": True}  # fmt: skip
    assert step_metrics(info, 0.7) == {
        "env/alpha": 0.5, "reward/progress": 0.1, "stats/loss": 2.0, "env/score": 0.3,
        "eval/accuracy/C6": 0.25, "env/reward": 0.7,
    }  # fmt: skip


def test_the_logger_hook_gets_every_window_under_that_scheme():
    env = MockExposureEnv(total_steps=20)
    cls, cfg_cls = CONTROLLERS["beta_reinforce"]
    seen = []
    run_episode(
        env, cls(env.observation_space, env.action_space, cfg_cls()), lambda s, m: seen.append((s, m)), 0
    )
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    for _, metrics in seen:
        assert {"env/alpha", "env/reward", "reward/progress", "reward/grounded", "stats/loss"} <= set(metrics)
        assert any(k.startswith("controller/") for k in metrics)
        assert all(
            isinstance(v, float) and math.isfinite(v) for k, v in metrics.items() if k != "env/oracle_alpha"
        )


def test_truncating_to_offsets_drops_what_came_after(tmp_path):
    log = MetricsLogger(tmp_path)
    log.metric({"kind": "step", "x": 1})
    log.decision({"kind": "decision", "alpha": 0.5})
    offsets = log.offsets()
    log.metric({"kind": "step", "x": 2})
    log.decision({"kind": "decision", "alpha": 0.9})
    log.truncate(offsets)
    log.metric({"kind": "step", "x": 3})
    log.close()
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 3]
    assert [r["alpha"] for r in read_jsonl(tmp_path / "decisions.jsonl")] == [0.5]
    quiet = MetricsLogger(None)  # a non-zero torchrun rank writes nothing
    quiet.metric({"kind": "step"})
    assert quiet.offsets() == {"metrics": 0, "decisions": 0}


def test_a_resume_purges_the_tensorboard_events_it_logs_again(tmp_path, monkeypatch):
    """TensorBoard is rewound too: the windows after the checkpoint are logged again, and without a
    purge step they showed twice."""
    import atesd.logging as logging_module

    opened = []

    class Writer:
        def __init__(self, purge_step=None):
            opened.append(purge_step)

        def add_scalar(self, *args):
            pass

        def close(self):
            pass

    monkeypatch.setattr(
        logging_module, "tensorboard_writer", lambda run_dir, purge_step=None: Writer(purge_step)
    )
    log = MetricsLogger(tmp_path, tensorboard=True)
    log.metric({"kind": "window", "window": 1})
    log.truncate({"metrics": 0, "decisions": 0}, step=1)
    assert opened == [None, 1] and read_jsonl(tmp_path / "metrics.jsonl") == []
