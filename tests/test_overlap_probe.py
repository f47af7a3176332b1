"""`run_window` measures each probe beside the next rollout on a CPU: the same updates and numbers
as stepping one update at a time, with modes and thread counts left as they were."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.models import TinyModelConfig, build_tiny_qwen3


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _engine(tokenizer, task, **kw) -> DistillEngine:
    cfg = TinyModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    model = build_tiny_qwen3(tokenizer, cfg)
    engine_cfg = EngineConfig(batch_size=8, lr=1e-3, sampling=SamplingConfig(max_new_tokens=24), **kw)
    return DistillEngine(model, tokenizer, task, engine_cfg)


def _numbers(window) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(s).items() if not k.endswith("_s")} for s in window.steps]


def test_overlapped_windows_equal_serial_steps(tokenizer, small_task, two_threads):
    runs = {}
    for overlap in (True, False):
        engine = _engine(tokenizer, small_task, overlap_probe=overlap)
        assert engine.overlaps_probe() is overlap
        windows = [engine.run_window(a, 3) for a in (0.5, 1.0)]
        runs[overlap] = (
            [_numbers(w) for w in windows],
            [w.losses for w in windows],
            dict(engine.stats.values),
            engine.last_probe_nll,
            {k: v.clone() for k, v in engine.student.state_dict().items()},
        )
        assert engine.student.training and torch.get_num_threads() == 2
    (steps, losses, ema, last, weights), serial = runs[True], runs[False]
    assert steps == serial[0] and losses == serial[1] and ema == serial[2] and last == serial[3]
    assert all(torch.equal(v, serial[4][k]) for k, v in weights.items())
    assert all(s["probe_nll"] == s["probe_nll"] for w in steps for s in w)  # every probe measured (no NaN)


def test_a_window_of_one_update_and_the_conditions(tokenizer, small_task, two_threads):
    engine = _engine(tokenizer, small_task)
    assert len(engine.run_window(0.5, 1).steps) == 1
    assert not _engine(tokenizer, small_task, probe_every=2).overlaps_probe()
    torch.set_num_threads(1)
    assert not engine.overlaps_probe()  # one free core: nothing to overlap on


def test_a_failing_probe_propagates_and_restores_modes_and_threads(
    tokenizer, small_task, two_threads, monkeypatch
):
    engine = _engine(tokenizer, small_task)
    engine.run_window(0.5, 2)

    def broken() -> float:
        raise RuntimeError("probe failed")

    monkeypatch.setattr(engine, "probe_nll", broken)
    with pytest.raises(RuntimeError, match="probe failed"):
        engine.run_window(0.5, 2)
    assert engine.student.training and torch.get_num_threads() == 2


def test_an_engine_with_its_second_thread_still_copies(tokenizer, small_task, two_threads):
    import copy

    engine = _engine(tokenizer, small_task)
    engine.run_window(0.5, 2)  # the second thread exists now
    twin = copy.deepcopy(engine)
    assert twin._side_thread is None and engine._side_thread is not None
    assert len(twin.run_window(0.5, 2).steps) == 2
