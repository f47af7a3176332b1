"""Length buckets and continuations over the scoring pass's cache compute what one padded forward computes."""

import itertools
import math

import numpy as np
import pytest
import torch

from atesd.batching import completion_hidden, completion_hidden_with_continuations, length_buckets
from atesd.engine import Batch, DistillEngine, EngineConfig
from atesd.models import enable_checkpointing

ONE_FORWARD = 10**9  # an overhead no bucket can pay for: one padded forward, the reference


def rows(seed: int, n: int, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, vocab, rng.integers(1, 20)).tolist() for _ in range(n)]
    completions = [rng.integers(1, vocab, rng.integers(1, 40)).tolist() for _ in range(n)]
    return prompts, completions


def padded_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_is_the_cheapest_grouping(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, rng.integers(1, 8)).tolist()
    overhead = int(rng.choice([0, 5, 30, 200]))
    groups = length_buckets(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = min(  # every split of the sorted rows into contiguous groups
        padded_cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, overhead)
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert padded_cost(groups, lengths, overhead) == best


def test_length_buckets_extremes():
    assert length_buckets([5, 50, 5, 50], ONE_FORWARD) == [[0, 1, 2, 3]]
    assert length_buckets([5, 50, 5, 50], 0) == [[0, 2], [1, 3]]
    assert length_buckets([], 10) == []


def test_bucketed_hidden_and_gradients_equal_one_padded_forward(tiny_model):
    prompts, completions = rows(0, 12, tiny_model.config.vocab_size)
    h_ref, t_ref = completion_hidden(tiny_model, prompts, completions, 0, overhead=ONE_FORWARD)
    (g_ref,) = torch.autograd.grad(h_ref.square().sum(), [tiny_model.model.layers[0].mlp.up_proj.weight])
    h, t = completion_hidden(tiny_model, prompts, completions, 0, overhead=0)
    (g,) = torch.autograd.grad(h.square().sum(), [tiny_model.model.layers[0].mlp.up_proj.weight])
    assert len(length_buckets([len(p) + len(c) for p, c in zip(prompts, completions)], 0)) > 1
    assert torch.equal(t, t_ref)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("grad", [False, True])
def test_continuations_equal_a_forward_of_their_own(tiny_model, attn, grad):
    tiny_model.config._attn_implementation = attn
    vocab = tiny_model.config.vocab_size
    prompts, completions = rows(1, 10, vocab)
    rng = np.random.default_rng(2)
    conts = []  # cuts at 0, at the end and between; one- and many-token continuations; rows without one
    for i, c in enumerate(completions):
        k = [0, len(c), int(rng.integers(0, len(c) + 1))][i % 3]
        conts.append(None if i % 4 == 3 else (k, rng.integers(1, vocab, 1 + i % 3).tolist()))
    with torch.set_grad_enabled(grad):
        hidden, targets, (c_hidden, c_targets) = completion_hidden_with_continuations(
            tiny_model, prompts, completions, 0, conts, overhead=30
        )
        ref_hidden, ref_targets = completion_hidden(tiny_model, prompts, completions, 0)
        seqs = [p + c[: x[0]] for p, c, x in zip(prompts, completions, conts) if x is not None]
        ref_c, ref_ct = completion_hidden(tiny_model, seqs, [x[1] for x in conts if x is not None], 0)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, ref_targets) and torch.equal(c_targets, ref_ct)
    torch.testing.assert_close(c_hidden, ref_c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [7, 20])  # the whole sequence within the window, and past it
def test_a_sliding_window_model_gets_continuations_right(width):
    """A sliding-window layer crops its cache and masks by the window: the 4D mask built for the
    continuations was wrong there (a crash past the window, silently other values within it), so
    such a model gets the continuations' own forward, as the sampler gets the HF decode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                      pad_token_id=0, use_sliding_window=True, sliding_window=8, max_window_layers=0,
                      layer_types=["sliding_attention", "full_attention"],
                      attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    prompts, completions = [[9, 10, 11]], [list(range(12, 12 + width - 3))]
    conts = [(len(completions[0]), [20, 21, 22, 23, 24, 25])]
    with torch.no_grad():
        _, _, (c_hidden, _) = completion_hidden_with_continuations(model, prompts, completions, 0, conts)
        ref, _ = completion_hidden(model, [prompts[0] + completions[0]], [conts[0][1]], 0)
    torch.testing.assert_close(c_hidden, ref, atol=1e-5, rtol=1e-5)


def test_a_bad_continuation_is_refused(tiny_model):
    with pytest.raises(ValueError, match="continuation"):
        completion_hidden_with_continuations(tiny_model, [[1, 2]], [[3]], 0, [(2, [4])])
    with pytest.raises(ValueError, match="continuation"):
        completion_hidden_with_continuations(tiny_model, [[1, 2]], [[3]], 0, [(1, [])])
    with pytest.raises(ValueError, match="no rows"):  # torch.cat's "expected a non-empty list" before
        completion_hidden(tiny_model, [], [], 0)


def reference_batch(engine: DistillEngine, n: int = 8) -> Batch:
    """n problems of the engine's task whose rollouts are their reference solutions."""
    problems = engine.task.sample(np.random.default_rng(0), n)
    b, eos = engine.builder, engine.tokenizer.eos_token_id
    prompts = [b.encode(b.student_prompt(p)) for p in problems]
    completions = [b.encode(p.solution) + [eos] for p in problems]
    texts = engine.tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Batch(problems, prompts, completions, texts)


def students_own_score(engine: DistillEngine, batch: Batch) -> float:
    """grounded_by=student by its definition: a forward of the student in eval mode over its own
    prompt + reasoning + gold answer."""
    b, model = engine.builder, engine.student
    seqs = [p + b.encode(engine.task.reasoning(t)) for p, t in zip(batch.prompts, batch.texts)]
    finals = [b.encode(p.final) for p in batch.problems]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hidden, targets = completion_hidden(model, seqs, finals, engine.tokenizer.pad_token_id)
        logp = torch.log_softmax(hidden @ model.get_output_embeddings().weight.T, dim=-1)
    model.train(was_training)
    return float(logp.gather(1, targets[:, None]).mean())


def separate_grounded(engine: DistillEngine, batch, alpha: float) -> float:
    """The grounded score by its definition: a teacher forward over teacher prompt + reasoning + gold."""
    prompts = engine.teacher_prompts(batch.problems, alpha, batch.texts)
    seqs = [p + engine.builder.encode(engine.task.reasoning(t)) for p, t in zip(prompts, batch.texts)]
    finals = [engine.builder.encode(p.final) for p in batch.problems]
    with engine.teacher.scoring() as model:
        hidden, targets = completion_hidden(model, seqs, finals, engine.tokenizer.pad_token_id)
        logp = torch.log_softmax(hidden @ model.get_output_embeddings().weight.T, dim=-1)
    return float(logp.gather(1, targets[:, None]).mean())


@pytest.mark.parametrize("prefix", ["every row", "no row", "some rows"])
def test_the_grounded_score_in_the_scoring_pass_is_the_defined_one(tiny_model, tokenizer, small_task, prefix):
    engine = DistillEngine(
        tiny_model, tokenizer, small_task, EngineConfig(batch_size=8, grounded_by="teacher")
    )
    batch = reference_batch(engine)
    if prefix != "every row":  # a reasoning that is not the rollout's prefix rides nowhere
        reasoning = small_task.reasoning
        skip = {t for j, t in enumerate(batch.texts) if prefix == "no row" or j % 2}
        small_task.reasoning = lambda text: ("9" + reasoning(text)) if text in skip else reasoning(text)
    try:
        riding = engine._grounded_rows(batch)[1]
        expected = {"every row": 8, "no row": 0}.get(prefix)
        assert (
            expected is None
            and 0 < sum(r is not None for r in riding) < 8
            or (sum(r is not None for r in riding) == expected)
        )
        _, grounded, _ = engine.batch_loss(batch, 0.5)
        assert grounded == pytest.approx(separate_grounded(engine, batch, 0.5), abs=1e-5)
    finally:
        small_task.__dict__.pop("reasoning", None)


def count_forwards(model) -> list[bool]:
    """Every decoder forward from now on, as its use_cache flag."""
    calls: list[bool] = []
    model.get_decoder().register_forward_hook(
        lambda _m, _a, kwargs, _o: calls.append(bool(kwargs.get("use_cache"))), with_kwargs=True
    )
    return calls


def test_sharded_weights_get_the_same_forwards_on_every_rank(tiny_model, monkeypatch):
    """Under FSDP each forward is a collective: a rank's rows must not change how many it runs."""
    prompts, completions = rows(3, 12, tiny_model.config.vocab_size)
    calls = count_forwards(tiny_model)
    completion_hidden(tiny_model, prompts, completions, 0, overhead=0)
    assert len(calls) > 1  # buckets, unsharded
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr("atesd.batching.is_sharded", lambda p: True)
    calls.clear()
    completion_hidden(tiny_model, prompts, completions, 0, overhead=0)
    assert calls == [False]  # one padded forward
    calls.clear()
    with torch.no_grad():
        conts = [(0, [1, 2])] + [None] * 11
        completion_hidden_with_continuations(tiny_model, prompts, completions, 0, conts, 0)
    assert calls == [False, False]  # and the continuation's own forward: no pass over a cache


@pytest.mark.parametrize("by", ["teacher_fixed", "student"])
def test_an_exposure_neutral_grounded_score_does_not_move_with_alpha(tiny_model, tokenizer, small_task, by):
    cfg = EngineConfig(batch_size=8, grounded_by=by, grounded_alpha=0.25)
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    batch = reference_batch(engine)
    scores = [engine.batch_loss(batch, alpha)[1] for alpha in (0.0, 0.5, 1.0)]
    assert scores[0] == scores[1] == scores[2]
    if by == "teacher_fixed":
        assert scores[0] == pytest.approx(separate_grounded(engine, batch, 0.25), abs=1e-5)
    else:  # the student's own view: its prompt, its weights
        assert scores[0] == pytest.approx(students_own_score(engine, batch), abs=1e-5)
    paper = DistillEngine(
        tiny_model, tokenizer, small_task, EngineConfig(batch_size=8, grounded_by="teacher")
    )
    assert len({paper.batch_loss(batch, alpha)[1] for alpha in (0.0, 0.5, 1.0)}) == 3  # the paper's moves


@pytest.mark.parametrize(
    "bad", [{"grounded_by": "oracle"}, {"grounded_alpha": 1.5}, {"grounded_alpha": -0.1}]
)
def test_bad_grounded_settings_are_refused(bad):
    with pytest.raises(ValueError, match="grounded_"):
        EngineConfig(**bad)


@pytest.mark.parametrize("case", ["rides", "attention dropout", "router jitter", "gradient checkpointing"])
def test_the_students_grounded_score_rides_in_the_update_forward(tiny_model, tokenizer, small_task, case):
    """grounded_by=student reads the gold answer off the update's own forward (its cache), which runs
    the weights and prompt that made the rollout: no forward of its own, the defined value, and the
    loss and gradient of an update without a grounded score. Where training mode would compute
    otherwise (dropout) or the pass keeps no cache (checkpointing), it gets a forward of its own."""
    if case == "attention dropout":
        tiny_model.config.attention_dropout = 0.1
    if case == "router jitter":  # noise a MoE router draws in training only (read as such by name)
        tiny_model.config.router_jitter_noise = 0.5
    if case == "gradient checkpointing":
        enable_checkpointing(tiny_model)
    engine = DistillEngine(
        tiny_model, tokenizer, small_task, EngineConfig(batch_size=8, grounded_by="student")
    )
    bare = DistillEngine(tiny_model, tokenizer, small_task, EngineConfig(batch_size=8, grounded=False))
    batch = reference_batch(engine)
    assert all(r is not None for r in engine._grounded_rows(batch)[1])  # every row could ride

    def update(eng):
        tiny_model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout draws in the update's forward
        out, grounded, _ = eng.batch_loss(batch, 0.5)
        out.loss.backward()
        return out.loss.detach(), grounded, [p.grad.clone() for p in tiny_model.parameters()]

    calls = count_forwards(tiny_model)  # the student's decoder (the teacher is a copy made before)
    loss, grounded, grads = update(engine)
    rode = calls.copy()
    ref_loss, ref_grounded, ref_grads = update(bare)
    assert math.isnan(ref_grounded)
    assert torch.equal(loss, ref_loss) and all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    n_update = len(calls) - len(rode)  # the update's own forwards (length buckets)
    if case == "rides":
        assert all(rode) and len(rode) > n_update  # over the pass's cache: continuations, no new pass
    else:
        assert not any(rode) and len(rode) > n_update  # a forward of its own besides the update's
    assert grounded == pytest.approx(students_own_score(engine, batch), abs=1e-5)
