"""A lean decode step for Llama-family decoders (Qwen3, Qwen2, Llama): the HF forward's own tensor
operations, in its order, over the model's own parameters, without the modules around them.

Why: on a CPU, one decode step of a small model is a few hundred tiny kernels, and about half of its
wall time in the HF forward is Python around them (module calls, hook and output-capturing wrappers,
kwargs plumbing, the mask and rotary rebuilt every step). The decode loop calls it once per token,
so the rollout, the largest phase of a training step, is bound by that overhead on one core.

What it computes: exactly what `model(input_ids=(B, 1), attention_mask=..., cache=..., logits_to_keep=1)`
computes in transformers' sdpa path for these architectures: the same ops on the same tensors in
the same order (RMSNorm in float32 then cast, q/k norms for Qwen3, rotary from the same inverse
frequencies, sdpa with the same GQA handling, SiLU MLP), so the logits are bitwise the HF forward's
(tests/test_lean_decode.py checks `torch.equal` step by step, greedy and sampled tokens identical).
The one change of form: the rotary cos/sin of every position are computed once per rollout (the same
elementwise maths over a table) instead of once per step.

It reads the parameters at call time, so optimiser updates need nothing. `lean_unsupported` says why
a model does not qualify (LoRA wrappers, hooks, sharded weights, sliding windows, scaled rotary,
another activation or attention implementation...): the sampler then keeps the HF forward.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# architectures whose decoder layer is norm -> attention (q/k/v/o projections, optional q/k head norms,
# rotary) -> residual -> norm -> gated SiLU MLP -> residual, as in transformers' modeling code
_FAMILY = ("qwen3", "qwen2", "llama")


def lean_unsupported(model: nn.Module) -> str | None:
    """None when `LeanDecoder` computes exactly the HF decode forward of `model`, else why not."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _FAMILY:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {_FAMILY}"
    if type(model).__name__ not in {"Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"}:
        return f"{type(model).__name__} is not a plain causal LM (a LoRA or other wrapper)"
    if cfg._attn_implementation != "sdpa":
        return f"attention implementation {cfg._attn_implementation!r} (lean decoding mirrors sdpa)"
    from transformers.integrations import sdpa_attention

    if not all(hasattr(sdpa_attention, name) for name in ("pack_gqa", "use_gqa_in_sdpa")):
        return "this transformers' sdpa attention is not the one the lean step mirrors (no pack_gqa)"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ["full_attention"]):
        return "sliding-window layers"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or model.model.rotary_emb.attention_scaling != 1.0:
        return f"rotary type {rope.get('rope_type')!r} (lean decoding mirrors the default rotary)"
    if cfg.hidden_act != "silu" or getattr(cfg, "mlp_bias", False):
        return f"MLP activation {cfg.hidden_act!r} or MLP bias"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or getattr(module, "_hf_hook", None):
            return f"a forward hook on {type(module).__name__}"
        if type(module).__name__.endswith("RMSNorm") and type(module).forward.__qualname__.split(".")[0] != (
            type(module).__name__
        ):
            return f"{type(module).__name__}'s forward is replaced (a kernel from the hub)"
    for p in model.parameters():
        if type(p) is not nn.Parameter or type(p.data) is not torch.Tensor:
            return "sharded or quantised parameters"
    layers = model.model.layers
    if len(layers) < cfg.num_hidden_layers:
        return f"{len(layers)} decoder layers for num_hidden_layers={cfg.num_hidden_layers} (pruned layers)"
    for i, layer in enumerate(layers[: cfg.num_hidden_layers]):
        if layer.self_attn.layer_idx != i:  # HF writes layer k's cache slot by its layer_idx
            return f"decoder layer {i} has layer_idx {layer.self_attn.layer_idx} (pruned or reordered layers)"
        attn, mlp = layer.self_attn, layer.mlp
        linears = (
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            attn.o_proj,
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        )
        if any(type(m) is not nn.Linear for m in linears):
            return "a projection that is not a plain nn.Linear (quantised or adapted)"
    if type(model.lm_head) is not nn.Linear or type(model.model.embed_tokens) is not nn.Embedding:
        return "an embedding or output head that is not a plain nn.Embedding / nn.Linear"
    device = next(model.parameters()).device.type
    if device not in ("cpu", "cuda"):
        return f"device {device!r} (transformers chooses other attention kernels there)"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "a global forward hook"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm/Qwen3RMSNorm forward, op for op (the casts are no-ops in float32)."""
    dtype = x.dtype
    h = x if dtype == torch.float32 else x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (h if dtype == torch.float32 else h.to(dtype))


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` with rotate_half(x) = [-x2, x1]: the same products as
    [x2, x1] * [-sin1, sin2] (a sign flip is exact), so one roll replaces two slices, a negation and
    a concatenation."""
    return (x * cos) + (torch.roll(x, x.shape[-1] // 2, -1) * signed_sin)


class LeanDecoder:
    """One-token decode steps of `model` over a preallocated KV cache (see `atesd.rollout.hf`).

    Args:
        model: a plain Llama-family causal LM for which `lean_unsupported` is None.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = lean_unsupported(model)
        if reason is not None:
            raise ValueError(f"lean decoding does not support this model: {reason}")
        self.model = model
        cfg = model.config
        self.eps = cfg.rms_norm_eps
        self.layers = list(model.model.layers[: cfg.num_hidden_layers])
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.scaling = attn.scaling
        self.qk_norm = hasattr(attn, "q_norm")
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None

    def rotary_table(self, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        """cos/sin of positions 0..capacity-1: `rotary_emb.forward`'s maths, once per rollout."""
        inv_freq = self.model.model.rotary_emb.inv_freq.to(device=device, dtype=torch.float)
        positions = torch.arange(capacity, device=device)
        freqs = positions[..., None].float() * inv_freq  # (C, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (C, D)
        cos, sin = (emb.cos() * 1.0).to(dtype), (emb.sin() * 1.0).to(dtype)
        half = sin.shape[-1] // 2
        self._table = (cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1))  # cos, signed sin

    def step(
        self, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor | None, layers: list
    ) -> torch.Tensor:
        """Logits (B, V) of the next token after `token`.

        Args:
            token: (B, 1) ids fed this step.
            position: (B, 1) their positions.
            mask: (B, 1, 1, kv_len) boolean sdpa mask over the cache after this step, or None (no padding).
            layers: the cache's `_PreallocatedLayer`s, one per decoder layer, written in place.
        """
        if self._table is None:
            raise RuntimeError("call rotary_table before step")
        model = self.model
        b = token.shape[0]
        h = F.embedding(token, model.model.embed_tokens.weight)  # (B, 1, H)
        rows = position.view(-1)
        cos = self._table[0].index_select(0, rows).view(b, 1, 1, -1)  # (B, 1, 1, D)
        sin = self._table[1].index_select(0, rows).view(b, 1, 1, -1)
        shape = (b, 1, -1, self.head_dim)
        for layer, cache in zip(self.layers, layers):
            attn = layer.self_attn
            residual = h
            x = _rms_norm(h, layer.input_layernorm.weight, self.eps)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(shape)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(shape)
            if self.qk_norm:
                q = _rms_norm(q, attn.q_norm.weight, attn.q_norm.variance_epsilon)
                k = _rms_norm(k, attn.k_norm.weight, attn.k_norm.variance_epsilon)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, heads, 1, D)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            keys, values = cache.update(k, v)  # (B, kv_heads, kv_len, D) views of the buffer
            out = self._attention(q, keys, values, mask)  # (B, 1, heads, D)
            out = F.linear(out.reshape(b, 1, -1).contiguous(), attn.o_proj.weight, attn.o_proj.bias)
            h = residual + out
            residual = h
            x = _rms_norm(h, layer.post_attention_layernorm.weight, self.eps)
            mlp = layer.mlp
            x = F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                         mlp.down_proj.weight)  # fmt: skip
            h = residual + x
        h = _rms_norm(h, model.model.norm.weight, self.eps)
        return F.linear(h[:, -1:, :], model.lm_head.weight)[:, -1]  # (B, V)

    def _attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """transformers' `sdpa_attention_forward` for one query position, its GQA choice included."""
        kwargs = {}
        if self.groups > 1:
            force = os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") == "1"  # read per call, as HF does
            if force or (mask is None and keys.shape[-1] == values.shape[-1] <= 256):
                kwargs["enable_gqa"] = True
            else:  # pack the query heads of one kv head together (HF's `pack_gqa`)
                bq, nh, _, d = q.shape
                q = q.reshape(bq, nh // self.groups, self.groups, d)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, dropout_p=0.0, scale=self.scaling, is_causal=False, **kwargs
        )
        out = out.reshape(out.shape[0], -1, 1, values.shape[-1])
        return out.transpose(1, 2).contiguous()
