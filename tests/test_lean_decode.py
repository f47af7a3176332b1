"""The lean decode step (`atesd.rollout.lean`) computes bitwise the HF forward's logits, and the
sampler keeps the HF forward, saying why, for every model it does not mirror."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from atesd.rollout import HFSampler, SamplingParams
from atesd.rollout.hf import left_pad
from atesd.rollout.lean import LeanDecoder, lean_unsupported

VOCAB, PAD, NEVER = 32, 0, 32
PROMPTS = [[5, 9, 3], [7, 1, 4, 4, 8, 2, 9, 11, 6, 3, 2, 5], [12, 13], [3, 3, 9, 17, 4, 21, 8]]
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=256, attn_implementation="sdpa")  # fmt: skip


def _model(kind: str, kv_heads: int = 2, **overrides):
    torch.manual_seed(0)
    kw = SHAPE | {"num_key_value_heads": kv_heads} | overrides
    if kind == "qwen3":  # q/k head norms, tied head
        return Qwen3ForCausalLM(Qwen3Config(**kw, head_dim=16, tie_word_embeddings=True)).eval()
    if kind == "qwen2":  # q/k/v biases, untied head
        return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def _with_random_norms(model):
    """RMSNorm weights start at 1; other values make the norms' order of operations matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return model


@pytest.mark.parametrize("kind,kv_heads", [("qwen3", 2), ("qwen3", 4), ("qwen2", 2), ("llama", 1)])
@pytest.mark.parametrize("padded", [True, False])
def test_lean_step_logits_are_bitwise_the_hf_forward(kind, kv_heads, padded):
    model = _with_random_norms(_model(kind, kv_heads))
    prompts = PROMPTS if padded else [p[:2] for p in PROMPTS]
    steps = 6
    hf, lean = (HFSampler(model, [NEVER], PAD, lean=flag) for flag in (False, True))
    assert lean.lean is not None and hf.lean is None
    input_ids, mask = left_pad(prompts, PAD)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    capacity = input_ids.shape[1] + steps
    lean.lean.rotary_table(capacity, model.dtype, input_ids.device)
    caches = [s._new_cache(capacity) for s in (hf, lean)]
    decode_mask = hf._decode_mask(mask, steps) if padded else None
    with torch.inference_mode():
        logits = [
            s._forward(input_ids, mask if padded else None, positions, c) for s, c in zip((hf, lean), caches)
        ]
        assert torch.equal(logits[0], logits[1])
        token, pos = logits[0].argmax(-1), positions[:, -1]
        for step in range(steps - 1):
            pos = pos + 1
            step_mask = decode_mask[..., : input_ids.shape[1] + step + 1] if padded else None
            want = hf._forward(token[:, None], step_mask, pos[:, None], caches[0])
            got = lean.lean.step(token[:, None], pos[:, None], step_mask, caches[1].layers)
            assert torch.equal(got, want), f"step {step}: max diff {(got - want).abs().max()}"
            token = want.argmax(-1)
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_lean_sampler_draws_the_same_tokens_and_follows_weight_updates(kind):
    model = _with_random_norms(_model(kind))
    hf, lean = (HFSampler(model, [7], PAD, lean=flag) for flag in (False, True))
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_new_tokens=24)
        runs = [
            s.generate(PROMPTS, params, torch.Generator().manual_seed(3)).completion_ids for s in (hf, lean)
        ]
        assert runs[0] == runs[1]
    with torch.no_grad():  # an optimiser step in place: the lean step reads the parameters at call time
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    after = [s.generate(PROMPTS, params, torch.Generator().manual_seed(3)).completion_ids for s in (hf, lean)]
    assert after[0] == after[1] != runs[1]


def test_the_embedded_model_decodes_lean():
    from atesd.models import build_synthetic_tokenizer, build_tiny_qwen3

    tokenizer = build_synthetic_tokenizer()
    sampler = HFSampler(build_tiny_qwen3(tokenizer), [tokenizer.eos_token_id], tokenizer.pad_token_id)
    assert sampler.lean is not None, sampler.lean_reason


def _hooked():
    m = _model("qwen3")
    m.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    return m


def _pruned():
    """Layers dropped without renumbering: HF still writes each layer's cache slot by its layer_idx."""
    m = _model("qwen3", num_hidden_layers=3)
    m.model.layers = torch.nn.ModuleList([m.model.layers[0], m.model.layers[2]])
    return m  # config.num_hidden_layers stays 3: the cache keeps a slot for each layer_idx


def _quantised():
    return torch.ao.quantization.quantize_dynamic(_model("qwen3"), {torch.nn.Linear}, dtype=torch.qint8)


def _peft():
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(_model("qwen3"), peft.LoraConfig(r=2, target_modules=["q_proj"]))


@pytest.mark.parametrize(
    "build,reason",
    [
        (lambda: _model("qwen3", attn_implementation="eager"), "no preallocated sdpa cache"),
        (lambda: _model("qwen3", use_sliding_window=True, sliding_window=4, max_window_layers=1), "sdpa"),
        (lambda: _model("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
         "rotary type"),
        (lambda: _model("llama", hidden_act="gelu"), "activation"),
        (lambda: _model("llama", mlp_bias=True), "MLP bias"),
        (_hooked, "forward hook"),
        (_pruned, "decoder layers for num_hidden_layers"),
        (_quantised, "not a plain nn.Linear"),
        (_peft, "not a plain causal LM"),
    ],
)  # fmt: skip
def test_models_it_does_not_mirror_keep_the_hf_forward(build, reason):
    model = build()
    sampler = HFSampler(model, [NEVER], PAD)
    assert sampler.lean is None and reason in sampler.lean_reason
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    assert len(sampler.generate(PROMPTS, params).completion_ids) == len(PROMPTS)


def test_switched_off_and_compiled_samplers_say_so():
    model = _model("qwen3")
    assert "lean=False" in HFSampler(model, [NEVER], PAD, lean=False).lean_reason
    assert "compile" in HFSampler(model, [NEVER], PAD, compile=True).lean_reason
    with pytest.raises(ValueError, match="does not support"):
        LeanDecoder(_model("llama", hidden_act="gelu"))
    assert lean_unsupported(_model("llama")) is None
