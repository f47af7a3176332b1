"""HFSampler against `model.generate` and the sampling contract, on tiny random-init decoders (CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from atesd.rollout import HFSampler, RolloutBatch, SamplingParams, make_backend
from atesd.rollout.hf import filter_logits, left_pad, sample_next

VOCAB = 32
PAD = 0
NEVER = VOCAB  # an id outside the vocabulary: never sampled, so rows run to max_new_tokens
PROMPTS = [
    [5, 9, 3],
    [7, 1, 4, 4, 8, 2, 9, 11, 6, 3, 2, 5],
    [12, 13],
    [3, 3, 9, 17, 4, 21, 8],
    [30, 2, 2, 6, 1],
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qwen3(attn: str = "sdpa", **overrides) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, tie_word_embeddings=True, max_position_embeddings=256,
        attn_implementation=attn, **overrides,
    )  # fmt: skip
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    return _qwen3()


def _hf_greedy(model: nn.Module, prompts: list[list[int]], n_new: int, eos: list[int]) -> list[list[int]]:
    """`model.generate` greedy on the left-padded batch, each row cut after its first EOS."""
    input_ids, mask = left_pad(prompts, PAD)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=mask.long(), max_new_tokens=n_new, do_sample=False,
            eos_token_id=eos, pad_token_id=PAD,
        )  # fmt: skip
    rows = []
    for row in out[:, input_ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _greedy(model: nn.Module, prompts: list[list[int]], n_new: int, eos: list[int], **kw) -> RolloutBatch:
    sampler = HFSampler(model, eos_token_ids=eos, pad_token_id=PAD, **kw)
    return sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=n_new))


def _early_eos(model: nn.Module, prompts: list[list[int]], n_new: int) -> int:
    """A token that greedy emits within 4 steps for some prompt but never for another."""
    free = _hf_greedy(model, prompts, n_new, [NEVER])
    for t in range(1, VOCAB):
        if any(t in row[:4] for row in free) and any(t not in row for row in free):
            return t
    raise AssertionError("no token fits as an early EOS for this fixture")


def test_greedy_equals_hf_generate_with_eos(model):
    eos = [_early_eos(model, PROMPTS, 16)]
    ref = _hf_greedy(model, PROMPTS, 16, eos)
    for compact_fraction in (0.0, 1.0):  # rows dropped at once, or never
        batch = _greedy(model, PROMPTS, 16, eos, compact_fraction=compact_fraction)
        assert batch.completion_ids == ref
        assert batch.finished == [row[-1] in eos for row in ref]
    assert any(batch.finished) and not all(batch.finished)


@pytest.mark.parametrize("attn", ["eager", "sdpa-sliding"])
def test_greedy_equals_hf_on_other_attention_paths(attn):
    # eager: additive 4D mask; a sliding-window config: the DynamicCache + 2D mask fallback.
    if attn == "eager":
        m = _qwen3("eager")
    else:
        m = _qwen3("sdpa", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    sampler = HFSampler(m, eos_token_ids=[NEVER], pad_token_id=PAD)
    assert sampler.mask_kind == ("eager" if attn == "eager" else None)
    eos = [_early_eos(m, PROMPTS, 12)]
    assert _greedy(m, PROMPTS, 12, eos).completion_ids == _hf_greedy(m, PROMPTS, 12, eos)


@pytest.mark.parametrize("family", ["bloom", "falcon-alibi"])
def test_alibi_models_keep_their_2d_mask_and_equal_hf(family):
    """Bloom and ALiBi Falcon build ALiBi from the mask's (batch, length) shape: a 4D mask crashed
    every padded batch."""
    from transformers import BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    if family == "bloom":
        m = BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4)).eval()
    else:
        config = FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              alibi=True)  # fmt: skip
        m = FalconForCausalLM(config).eval()
    assert HFSampler(m, eos_token_ids=[NEVER], pad_token_id=PAD).mask_kind is None
    assert _greedy(m, PROMPTS, 8, [NEVER]).completion_ids == _hf_greedy(m, PROMPTS, 8, [NEVER])


def test_greedy_equals_hf_on_llama_without_padding():
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, attn_implementation="sdpa",
    )  # fmt: skip
    m = LlamaForCausalLM(config).eval()
    prompts = [[4, 8, 15, 16], [23, 4, 2, 1], [9, 9, 9, 9]]  # equal lengths: no mask at all
    assert _greedy(m, prompts, 10, [NEVER]).completion_ids == _hf_greedy(m, prompts, 10, [NEVER])


def test_prompt_alone_equals_prompt_in_padded_batch(model):
    alone = _greedy(model, [PROMPTS[3]], 12, [NEVER]).completion_ids[0]
    batch = _greedy(model, [PROMPTS[1], PROMPTS[3], PROMPTS[2]], 12, [NEVER]).completion_ids
    assert batch[1] == alone


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    sampler = HFSampler(model, eos_token_ids=[NEVER], pad_token_id=PAD)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)

    def run(seed: int) -> list[list[int]]:
        return sampler.generate(PROMPTS, params, torch.Generator().manual_seed(seed)).completion_ids

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_sampling_draws_nothing_from_global_rng(model):
    sampler = HFSampler(model, eos_token_ids=[NEVER], pad_token_id=PAD)
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    sampler.generate(PROMPTS, params, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="Generator"):
        sampler.generate(PROMPTS, params, None)


def test_max_new_tokens_respected(model):
    for n_new in (1, 5):
        batch = _greedy(model, PROMPTS, n_new, [NEVER])
        assert [len(c) for c in batch.completion_ids] == [n_new] * len(PROMPTS)
        assert batch.finished == [False] * len(PROMPTS)
        assert batch.num_tokens == n_new * len(PROMPTS)


def test_nothing_after_eos_and_finished_flags(model):
    eos = [_early_eos(model, PROMPTS, 20), _early_eos(model, PROMPTS[::-1], 20)]
    sampler = HFSampler(model, eos_token_ids=eos, pad_token_id=PAD)
    params = SamplingParams(temperature=1.5, max_new_tokens=20)
    batch = sampler.generate(PROMPTS, params, torch.Generator().manual_seed(3))
    assert batch.prompt_ids == PROMPTS
    for completion, finished in zip(batch.completion_ids, batch.finished, strict=True):
        assert all(t not in eos for t in completion[:-1])
        assert finished == (completion[-1] in eos)
        assert finished or len(completion) == 20
    assert any(batch.finished)
    assert set(batch.timings) >= {"prefill_s", "decode_s", "total_s", "tokens_per_s"}


@pytest.mark.parametrize("params", [SamplingParams(top_k=1), SamplingParams(temperature=0.7, top_p=1e-6)])
def test_degenerate_filters_equal_greedy(model, params):
    sampler = HFSampler(model, eos_token_ids=[NEVER], pad_token_id=PAD)
    params = SamplingParams(params.temperature, params.top_k, params.top_p, max_new_tokens=10)
    sampled = sampler.generate(PROMPTS, params, torch.Generator().manual_seed(7)).completion_ids
    assert sampled == _greedy(model, PROMPTS, 10, [NEVER]).completion_ids


def test_filters_match_hf_warpers_in_hf_order():
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    params = SamplingParams(temperature=0.6, top_k=9, top_p=0.8)
    expected = TemperatureLogitsWarper(0.6)(None, logits.clone())
    expected = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(9)(None, expected))
    assert torch.equal(filter_logits(logits, params), expected)


def test_top_p_keeps_smallest_set_reaching_top_p():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    kept = filter_logits(logits, SamplingParams(top_p=0.75)).isfinite()
    assert kept.tolist() == [[False, True, False, True]]  # 0.5 + 0.3 >= 0.75; 0.5 alone is not
    hot = filter_logits(logits, SamplingParams(temperature=50.0, top_p=0.75)).isfinite()
    assert hot.sum() == 3  # temperature first: near-uniform probabilities need three tokens


def test_sampling_frequencies_follow_softmax():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = probs.log().expand(20000, -1)
    draws = sample_next(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    freqs = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freqs, probs, atol=0.015)


def test_train_eval_modes_restored(model):
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    try:
        _greedy(model, PROMPTS[:2], 3, [NEVER])
        assert model.training and model.model.layers[1].training and not model.model.layers[0].training
    finally:
        model.eval()


def test_make_backend():
    m = _qwen3()
    assert isinstance(make_backend("hf", m, eos_token_ids=[1], pad_token_id=PAD), HFSampler)
    with pytest.raises(ValueError, match="one of"):
        make_backend("nope", m, eos_token_ids=[1], pad_token_id=PAD)  # type: ignore[arg-type]


@pytest.mark.slow
def test_compiled_sampler_matches_eager_and_follows_weight_updates():
    """compile=True (opt-in) decodes the same greedy tokens, and sees in-place weight updates."""
    small = _qwen3()
    eos = [_early_eos(small, PROMPTS, 12)]
    compiled = HFSampler(small, eos_token_ids=eos, pad_token_id=PAD, compile=True)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    assert compiled.generate(PROMPTS, params).completion_ids == _hf_greedy(small, PROMPTS, 12, eos)
    with torch.no_grad():  # an optimiser step in place: no recompile needed, new weights used
        small.lm_head.weight.mul_(-1.0)
    assert compiled.generate(PROMPTS, params).completion_ids == _hf_greedy(small, PROMPTS, 12, eos)


def test_a_kv_cache_that_cannot_fit_is_refused_with_the_rows_that_fit(model, monkeypatch):
    """eval.py's paper defaults (64 rows x 38,912 new tokens) preallocated ~270 GB on a 1.7B model and
    died as a CUDA OOM traceback; the first layer now checks the whole cache against the free memory."""
    from atesd.rollout import hf

    sampler = HFSampler(model, eos_token_ids=[NEVER], pad_token_id=PAD)
    prompts, params = [[5, 6, 7], [8, 9]], SamplingParams(temperature=0.0, max_new_tokens=61)
    # 2 layers x 2 kv heads x 64 positions (3 + 61) x (16 + 16) x 4 bytes = 32,768 bytes a row
    monkeypatch.setattr(hf, "free_memory", lambda device: 40_000)
    with pytest.raises(hf.KVCacheTooLarge, match=r"2 rows x 64 positions \(2 layers\).* at most 1 rows fit"):
        sampler.generate(prompts, params)
    monkeypatch.setattr(hf, "free_memory", lambda device: 65_536)  # exactly two rows: sampled as before
    assert (
        sampler.generate(prompts, params).completion_ids
        == _greedy(model, prompts, 61, [NEVER]).completion_ids
    )
    monkeypatch.undo()
    assert hf.free_memory(torch.device("cpu")) is None  # pages are taken as written: not compared
