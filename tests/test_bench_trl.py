"""bench_speed.py --only step-vs-trl: the TRL-pieces step computes our loss, and a missing trl is one line."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import bench_trl_step  # noqa: E402

from atesd.engine import DistillEngine, EngineConfig  # noqa: E402
from atesd.losses import LossConfig  # noqa: E402


def test_a_missing_trl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    monkeypatch.delitem(sys.modules, "trl.experimental.gkd", raising=False)
    monkeypatch.setitem(sys.modules, "trl.experimental.gkd", None)
    with pytest.raises(SystemExit, match=r"\.\[bench\]"):
        bench_trl_step.generalized_jsd_loss()


@pytest.mark.parametrize("kind, beta", [("reverse_kl", 1.0), ("forward_kl", 0.0), ("jsd", 0.3)])
def test_the_trl_pieces_step_computes_our_loss(tiny_model, tokenizer, small_task, kind, beta):
    pytest.importorskip("trl", reason="the step-vs-trl benchmark's extra: pip install -e '.[bench]'")
    cfg = EngineConfig(batch_size=6, loss=LossConfig(kind=kind, beta=0.3))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    other_kind = "forward_kl" if kind == "reverse_kl" else "reverse_kl"
    other_cfg = EngineConfig(batch_size=6, loss=LossConfig(kind=other_kind))
    other = DistillEngine(tiny_model, tokenizer, small_task, other_cfg)
    with torch.no_grad():  # move the student away from the frozen base teachers: a loss far from 0
        for p in tiny_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    trl_step = bench_trl_step.TRLPiecesStep(engine)
    assert trl_step.beta == beta
    ours, theirs = bench_trl_step.check_same_loss(engine, trl_step, 0.5)
    assert ours > 0.05 and ours == pytest.approx(theirs, rel=1e-5)
    other_ours, other_theirs = bench_trl_step.check_same_loss(other, bench_trl_step.TRLPiecesStep(other), 0.5)
    assert other_ours == pytest.approx(other_theirs, rel=1e-5)
    assert ours != pytest.approx(other_ours, rel=5e-3)  # the kinds are told apart on this batch
    before = [p.detach().clone() for p in trl_step.student.parameters()]
    loss = trl_step.step(0.5)
    assert np.isfinite(loss)
    assert any((a != p).any() for a, p in zip(before, trl_step.student.parameters()))  # it trained
    assert all((a == p).all() for a, p in zip(before, engine.student.parameters()))  # on its own copy


def test_a_loss_trl_cannot_express_is_refused(tiny_model, tokenizer, small_task):
    cfg = EngineConfig(batch_size=2, loss=LossConfig(kind="reverse_kl", clip_tau=0.05))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    with pytest.raises(SystemExit, match="no equivalent"):
        bench_trl_step.trl_beta(engine)


def test_step_vs_trl_times_windows_steps_and_trl_on_equal_counts(tiny_model, tokenizer, small_task):
    pytest.importorskip("trl", reason="the step-vs-trl benchmark's extra: pip install -e '.[bench]'")
    from atesd.engine import SamplingConfig

    cfg = EngineConfig(batch_size=4, sampling=SamplingConfig(max_new_tokens=8))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    r = bench_trl_step.step_vs_trl(engine, 0.5, steps=3, hold=2)
    assert r["steps"] == 4 and r["hold"] == 2 and r["rounds"] == 2 and r["same_loss"]  # rounds of 2
    assert r["ratio"] == pytest.approx(r["trl_s"] / r["ours_s"]) and r["step_s"] > 0 and r["lean_decode"]
    assert r["equal_ratio"] == pytest.approx(r["trl_s"] / r["equal_s"])
    low, high = r["ratio_ci"][1:]
    assert low <= r["ratio_ci"][0] <= high  # the per-round ratios' interval
    assert engine.num_steps == 2 + 2 * 2  # the window kind alone: a warm-up window, then 2 rounds
    assert set(r["tokens_per_update"]) == {"window", "step", "equal", "trl"}
    assert all(4 <= t <= 4 * 8 for t in r["tokens_per_update"].values())  # 4 rows of 1-8 tokens
    for key in ("equal_phases", "trl_phases"):  # phase by phase, at equal compute
        assert set(r[key]) == {"rollout_s", "teacher_s", "update_s"} and min(r[key].values()) > 0, r[key]
    assert sum(r["trl_phases"].values()) <= r["trl_s"] * 1.001  # cuts of the timed steps, warm-up left out


def test_the_trl_pieces_draw_the_engines_problems(tiny_model, tokenizer, small_task):
    """TRL's side drew its own problem stream (and the bare steps ran on the window's engine, 46
    updates against TRL's 21): every kind now trains its own copy of one start on one stream."""
    pytest.importorskip("trl", reason="the step-vs-trl benchmark's extra: pip install -e '.[bench]'")
    from atesd.engine import SamplingConfig

    cfg = EngineConfig(batch_size=4, sampling=SamplingConfig(max_new_tokens=8))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    trl_step = bench_trl_step.TRLPiecesStep(engine, seed=99)
    assert engine.task.sample(engine.rng, 4) == trl_step.task.sample(trl_step.rng, 4)
