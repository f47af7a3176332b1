"""Distillation losses: per-position divergences between student and teacher next-token distributions.

Owns the maths (forward/reverse KL, generalized JSD, sampled-token policy gradient, pointwise clipping,
teacher top-k support, masking) and a chunked, checkpointed loss that never holds full (N, V) logits.
Knows nothing of models, tokenizers, exposure or optimisers: inputs are hidden states, head weights,
a mask and target ids. Gradient flows to the student side only; the teacher side is always detached.
Also the probe's mean NLL in chunks of rows (`mean_nll`), its head product in float32 like the loss's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

LossKind = Literal["forward_kl", "reverse_kl", "jsd", "sampled_token"]
_LOG_FLOOR = -1e30  # stands in for log 0 inside the JSD mixture: logaddexp(-inf, -inf) has a NaN gradient


@dataclass(frozen=True)
class LossConfig:
    """How the student is pulled toward the teacher at each rollout position."""

    kind: LossKind = field(
        default="forward_kl",
        metadata={
            "help": "forward_kl = KL(T||S), reverse_kl = KL(S||T), jsd (TRL generalized JSD), "
            "sampled_token (policy gradient with advantage log p_T(y) - log p_S(y))"
        },
    )
    beta: float = field(
        default=0.5, metadata={"help": "JSD mixing in [0, 1]; 0 = forward_kl, 1 = reverse_kl"}
    )
    temperature: float = field(default=1.0, metadata={"help": "both sides' logits are divided by it (> 0)"})
    clip_tau: float | None = field(
        default=None,
        metadata={
            "help": "cap each (position, vocab) summand from above at tau before summing (OPSD v3); "
            "None disables; rejected with sampled_token"
        },
    )
    top_k: int = field(
        default=0,
        metadata={
            "help": "0 = full vocabulary; k > 0 = both sides restricted to the teacher's top-k tokens "
            "and renormalised; rejected with sampled_token"
        },
    )
    chunk_size: int = field(default=1024, metadata={"help": "positions per checkpointed chunk (>= 1)"})

    def __post_init__(self) -> None:
        if self.kind not in get_args(LossKind):
            raise ValueError(f"kind must be one of {get_args(LossKind)}, got {self.kind!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.clip_tau is not None and not self.clip_tau > 0:
            raise ValueError(f"clip_tau must be None or > 0, got {self.clip_tau}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = full vocabulary), got {self.top_k}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.kind == "sampled_token" and self.clip_tau is not None:
            raise ValueError(
                "clip_tau must be None with kind='sampled_token' (there is no vocab summand to cap)"
            )
        if self.kind == "sampled_token" and self.top_k != 0:
            raise ValueError(
                "top_k must be 0 with kind='sampled_token' (the sampled token may lie outside it)"
            )


@dataclass(frozen=True)
class LossOutput:
    """The loss and detached per-valid-token diagnostics (all (n_valid,), in mask order).

    `per_token` is the divergence value (for sampled_token: log p_S(y) - log p_T(y), the sampled estimate
    of reverse KL), over the full-vocabulary temperature-scaled distributions and unclipped whatever
    top_k and clip_tau are (the loss uses the restricted, clipped terms; with clip_tau the statistics
    were those terms, which can be negative). The other stats use the same full distributions.
    The token log-probs are None when no target_ids are given.
    """

    loss: Tensor
    per_token: Tensor
    top1_disagree: Tensor
    student_max_prob: Tensor
    student_token_logprob: Tensor | None
    teacher_token_logprob: Tensor | None


def _p_log_ratio(logp_a: Tensor, logp_b: Tensor) -> Tensor:
    """Elementwise p_a * (log p_a - log p_b), exactly 0 (value and gradient) where p_a == 0, and +inf
    with zero gradient where p_a > 0 = p_b (the divergence is infinite there: `clip_tau` caps it to a
    constant, and no inf - inf reaches the backward, which made the row's gradient all NaN)."""
    support = logp_a != float("-inf")  # NaN stays in: a poisoned input must surface as a NaN loss
    infinite = support & (logp_b == float("-inf"))
    a = torch.where(support, logp_a, 0.0)  # double where: no -inf reaches the product or its backward
    b = torch.where(support & ~infinite, logp_b, 0.0)
    out = torch.where(support, a.exp() * (a - b), 0.0)
    return torch.where(infinite, float("inf"), out)


def _summands(logp_s: Tensor, logp_t: Tensor, cfg: LossConfig) -> Tensor:
    """Per-(position, vocab) divergence summands (N, V) whose row sums are the divergence."""
    if cfg.kind == "forward_kl" or (cfg.kind == "jsd" and cfg.beta == 0.0):
        return _p_log_ratio(logp_t, logp_s)
    if cfg.kind == "reverse_kl" or (cfg.kind == "jsd" and cfg.beta == 1.0):
        return _p_log_ratio(logp_s, logp_t)
    log_m = torch.logaddexp(  # (N, V) log(beta p_T + (1 - beta) p_S)
        logp_t.clamp(min=_LOG_FLOOR) + math.log(cfg.beta),
        logp_s.clamp(min=_LOG_FLOOR) + math.log(1.0 - cfg.beta),
    )
    return cfg.beta * _p_log_ratio(logp_t, log_m) + (1.0 - cfg.beta) * _p_log_ratio(logp_s, log_m)


def _token_logprob(logits: Tensor, target_ids: Tensor) -> Tensor:
    """log softmax(logits)[n, y_n] without materialising the (N, V) log-softmax."""
    return logits.gather(-1, target_ids[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)


def _scaled_terms(s: Tensor, t: Tensor, cfg: LossConfig, target_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """(loss terms with grad, detached divergence values), both (N,), from temperature-scaled fp32 logits."""
    if cfg.kind == "sampled_token":
        if target_ids is None:
            raise ValueError("kind='sampled_token' needs target_ids")
        logp_s_y = _token_logprob(s, target_ids)  # (N,)
        advantage = (_token_logprob(t, target_ids) - logp_s_y).detach()  # (N,)
        return -advantage * logp_s_y, -advantage
    if cfg.top_k > 0:
        idx = t.topk(min(cfg.top_k, t.shape[-1]), dim=-1).indices  # (N, k) teacher's support
        s, t = s.gather(-1, idx), t.gather(-1, idx)  # renormalised below by log_softmax
    summands = _summands(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), cfg)  # (N, V) or (N, k)
    value = None
    if cfg.clip_tau is not None:
        if not cfg.top_k:  # the unclipped divergence, for the statistics (top_k: `_chunk` computes it)
            value = summands.detach().sum(-1)
        summands = summands.clamp(max=cfg.clip_tau)  # capped entries get zero gradient
    terms = summands.sum(-1)  # (N,)
    return terms, terms.detach() if value is None else value


def per_token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    cfg: LossConfig,
    target_ids: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-position loss terms on a chunk of logits; differentiable w.r.t. student_logits only.

    For the divergence kinds the term is the divergence itself. For sampled_token it is the surrogate
    -A_n * log p_S(y_n) with A_n = (log p_T(y_n) - log p_S(y_n)).detach(), whose gradient is the
    sampled-token reverse-KL gradient. No temperature**2 factor is applied.

    Args:
        student_logits: (N, V) student logits, any float dtype (maths in fp32).
        teacher_logits: (N, V) teacher logits; detached here.
        cfg: The loss configuration.
        target_ids: (N,) sampled token ids; required for sampled_token.
        mask: (N,) bool; rows where it is False return exactly 0 whatever their logits hold.

    Returns:
        (N,) fp32 loss terms.
    """
    s = student_logits.float() / cfg.temperature  # (N, V)
    t = teacher_logits.detach().float() / cfg.temperature  # (N, V)
    if mask is not None:
        s = torch.where(mask[:, None], s, 0.0)
        t = torch.where(mask[:, None], t, 0.0)
        target_ids = None if target_ids is None else torch.where(mask, target_ids, 0)
    terms, _ = _scaled_terms(s, t, cfg, target_ids)
    return terms if mask is None else torch.where(mask, terms, 0.0)


def _chunk(
    s_hidden: Tensor,
    t_hidden: Tensor,
    s_head: Tensor,
    t_head: Tensor,
    target_ids: Tensor | None,
    cfg: LossConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Loss terms, divergence values and stats for one chunk of valid positions (c,)."""
    # the head product in fp32 (a no-op for fp32 inputs): bf16 logits rounded before the divergence
    # were up to 1e-2 off at a 152k vocabulary; one chunk's fp32 copy of the head is the price
    s = (s_hidden.float() @ s_head.float().T) / cfg.temperature  # (c, V)
    t = (t_hidden.float() @ t_head.float().T) / cfg.temperature  # (c, V), no grad
    terms, div = _scaled_terms(s, t, cfg, target_ids)
    with torch.no_grad():  # after the terms, so checkpoint's early-stopping recompute skips it
        s = s.detach()
        if cfg.kind != "sampled_token" and cfg.top_k > 0:  # the statistic: the full divergence
            div = _full_divergence(s, t, cfg)
        disagree = s.argmax(-1) != t.argmax(-1)  # (c,)
        max_prob = (s.amax(-1) - s.logsumexp(-1)).exp()  # (c,)
        s_lp = None if target_ids is None else _token_logprob(s, target_ids)
        t_lp = None if target_ids is None else _token_logprob(t, target_ids)
    return terms, div, disagree, max_prob, s_lp, t_lp


def _full_divergence(s: Tensor, t: Tensor, cfg: LossConfig, rows: int = 64) -> Tensor:
    """(c,) full-vocabulary, unclipped divergence of scaled logits (c, V), a few rows at a time (the
    temporaries stay small beside the chunk's own at a 152k vocabulary)."""
    parts = [
        _summands(F.log_softmax(s[i : i + rows], -1), F.log_softmax(t[i : i + rows], -1), cfg).sum(-1)
        for i in range(0, s.shape[0], rows)
    ]
    return torch.cat(parts) if parts else s.new_zeros(0)


def _select_valid(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor, target_ids: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Valid rows only, so padding costs nothing and its garbage never reaches a gradient."""
    if mask.shape != student_hidden.shape[:1] or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool of shape {tuple(student_hidden.shape[:1])}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    idx = mask.nonzero().squeeze(1).to(student_hidden.device)  # (n_valid,), where the rows are
    tgt = None if target_ids is None else target_ids.index_select(0, idx)
    return student_hidden.index_select(0, idx), teacher_hidden.detach().index_select(0, idx), tgt


def _assemble(parts: list[tuple], s_hidden: Tensor, target_ids: Tensor | None) -> LossOutput:
    """Token-mean loss and concatenated diagnostics from per-chunk outputs."""
    n_valid = s_hidden.shape[0]
    if n_valid == 0:  # the empty selection's sum is an exact 0 with a grad path, even if padding is NaN
        empty = s_hidden.new_zeros(0, dtype=torch.float32).detach()
        token_lp = None if target_ids is None else empty
        return LossOutput(s_hidden.sum().float() * 0.0, empty, empty.bool(), empty, token_lp, token_lp)
    loss = torch.stack([p[0].sum() for p in parts]).sum() / n_valid
    cols = list(zip(*parts, strict=True))
    cat = [None if col[0] is None else torch.cat(col).detach() for col in cols[1:]]
    return LossOutput(loss, *cat)


def chunked_distill_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    student_head: Tensor,
    teacher_head: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    target_ids: Tensor | None = None,
) -> LossOutput:
    """Token-mean distillation loss over valid positions, chunked and checkpointed.

    Logits (hidden @ head.T, computed in fp32 whatever the inputs' dtype) exist for one chunk at a
    time; backward recomputes them, so peak memory is O(chunk_size * V) rather than O(N * V).

    Args:
        student_hidden: (N, H) student final hidden states, with grad.
        teacher_hidden: (N, H) teacher final hidden states; detached here.
        student_head: (V, H) student output embedding (no bias).
        teacher_head: (V, H) teacher output embedding; detached here (may be the same tensor).
        mask: (N,) bool, True at positions that count.
        cfg: The loss configuration.
        target_ids: (N,) sampled token ids; required for sampled_token, optional otherwise.

    Returns:
        LossOutput; loss is 0 with a grad path when no position is valid.
    """
    s_h, t_h, tgt = _select_valid(student_hidden, teacher_hidden, mask, target_ids)
    t_head = teacher_head.detach()
    use_ckpt = torch.is_grad_enabled() and (s_h.requires_grad or student_head.requires_grad)
    parts = []
    for lo in range(0, s_h.shape[0], cfg.chunk_size):
        hi = lo + cfg.chunk_size
        args = (s_h[lo:hi], t_h[lo:hi], student_head, t_head, None if tgt is None else tgt[lo:hi], cfg)
        parts.append(checkpoint(_chunk, *args, use_reentrant=False) if use_ckpt else _chunk(*args))
    return _assemble(parts, s_h, tgt)


def naive_distill_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    student_head: Tensor,
    teacher_head: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    target_ids: Tensor | None = None,
) -> LossOutput:
    """Reference for `chunked_distill_loss` (same arguments and outputs): all valid positions' (n, V)
    fp32 logits at once, no checkpointing. For tests and the memory benchmark."""
    s_h, t_h, tgt = _select_valid(student_hidden, teacher_hidden, mask, target_ids)
    return _assemble([_chunk(s_h, t_h, student_head, teacher_head.detach(), tgt, cfg)], s_h, tgt)


LOGIT_FLOATS = 1 << 26  # float32 logits a probe chunk may hold at once (256 MiB)


def mean_nll(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of `targets` under the logits `hidden @ head.T`, in chunks of rows that hold
    at most LOGIT_FLOATS logits (a real vocabulary over a probe of long solutions would otherwise
    build tens of GB at once); one chunk computes exactly the one-call mean. The product is taken in
    float32, as the loss takes it: in bfloat16 the NLL moved by 5e-4 where float32 moved by 8e-5, noise
    larger than a window's progress."""
    rows = max(1, LOGIT_FLOATS // head.shape[0])
    head = head.float()  # the same tensor in a float32 model; one copy per call in a 16-bit one
    if hidden.shape[0] <= rows:
        return float(torch.nn.functional.cross_entropy(hidden.float() @ head.T, targets))
    total = 0.0
    for start in range(0, hidden.shape[0], rows):
        logits = hidden[start : start + rows].float() @ head.T
        total += float(
            torch.nn.functional.cross_entropy(logits, targets[start : start + rows], reduction="sum")
        )
    return total / hidden.shape[0]
