"""Padding and position bookkeeping shared by the engine's forward passes.

Owns two facts: in a left-padded batch of prompt + completion rows, the hidden state that predicts
completion token j sits one position before it; and rows of very different lengths are cheaper in
a few forwards of similar lengths than in one padded to the longest (`length_buckets`: on CPU a
padded position costs as much as a real one). Knows nothing of losses or prompts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from atesd.distributed import is_sharded
from atesd.rollout.hf import left_pad, mask_kind

# One extra forward costs about this many padded positions of work: CPU forwards are compute-bound
# and cheap to launch; a GPU forward has a higher fixed cost and padding is nearly free
# (docs/BENCHMARKS.md, "Step speed").
BUCKET_OVERHEAD_TOKENS = {"cpu": 256, "cuda": 8192}


def length_buckets(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Row indices grouped into forwards of similar length, the grouping that minimises the padded
    positions computed plus `overhead` per forward (exact, by dynamic programming over the rows
    sorted by length). Each group lists its rows in ascending index order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of rows order[i:j]
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


def _collective(model: PreTrainedModel) -> bool:
    """FSDP-sharded weights: every forward is a collective, so each rank must run the same number of
    forwards whatever its rows: one padded forward, no continuation pass."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and any(is_sharded(p) for p in model.parameters())


def _overhead(model: PreTrainedModel, overhead: int | None) -> int:
    if _collective(model):
        return 10**18
    if overhead is not None:
        return overhead
    device = next(model.parameters()).device
    return BUCKET_OVERHEAD_TOKENS.get(device.type, BUCKET_OVERHEAD_TOKENS["cuda"])


def completion_hidden(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    overhead: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict each completion token.

    Returns (hidden (N, H), targets (N,)) with N = total completion tokens, in row order, so the
    student's and the teacher's passes over different prompts line up token for token. Rows run in
    `length_buckets` (`overhead`: positions one more forward is worth; default by device).
    """
    hidden, targets, _ = completion_hidden_with_continuations(
        model, prompts, completions, pad_id, None, overhead
    )
    return hidden, targets


def completion_hidden_with_continuations(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    continuations: list[tuple[int, list[int]] | None] | None,
    overhead: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """`completion_hidden`, and for each row with a continuation (k, tokens) the hidden states that
    predict `tokens` after prompt + completion[:k], read off the same pass: the first token's
    predictor is a position of that pass, the rest come from one more forward of just `tokens` over
    its KV cache, masked to the first len(prompt) + k positions (causal attention leaves those
    unchanged). Needs an attention that takes a 4D mask (sdpa, eager), and under a gradient a pass
    that keeps its cache (no gradient checkpointing): the continuations are then read without a
    gradient (detached) from the pass the loss backpropagates through. Otherwise the continuations
    get a forward of their own over prompt + completion[:k] + tokens. FSDP-sharded
    weights get one padded forward and no continuation pass (a caller with rows that differ across
    ranks passes no continuations: see the engine's grounded score).

    Returns (hidden, targets, (cont_hidden, cont_targets) or None): the continuation tokens of the
    rows that have one, in row order.
    """
    if not prompts:  # torch.cat of no buckets said only "expected a non-empty list of Tensors"
        raise ValueError("no rows: a pass over an empty batch")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    conts = continuations or [None] * len(prompts)
    if any(c is not None and not (0 <= c[0] <= len(s) and c[1]) for c, s in zip(conts, completions)):
        raise ValueError("a continuation needs 0 <= k <= len(completion) and at least one token")
    has_conts = any(c is not None for c in conts)
    shared = has_conts and mask_kind(model) is not None and not _collective(model) and _keeps_cache(model)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    per_row: dict[int, torch.Tensor] = {}
    per_cont: dict[int, torch.Tensor] = {}
    for rows in length_buckets(lengths, _overhead(model, overhead)):
        hidden, cont = _bucket(
            model,
            [prompts[i] for i in rows],
            [completions[i] for i in rows],
            pad_id,
            [conts[i] for i in rows] if shared else None,
        )
        sizes = [len(completions[i]) for i in rows]
        per_row |= dict(zip(rows, torch.split(hidden, sizes)))
        per_cont |= {rows[j]: h for j, h in cont.items()}
    device = next(model.parameters()).device
    order = range(len(prompts))
    hidden = torch.cat([per_row[i] for i in order])
    targets = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=device)
    if not has_conts:
        return hidden, targets, None
    with_cont = [i for i in order if conts[i] is not None]
    cont_targets = torch.tensor([t for i in with_cont for t in conts[i][1]], dtype=torch.long, device=device)
    if not shared:  # a forward of their own (without a gradient, as when they ride)
        seqs = [prompts[i] + completions[i][: conts[i][0]] for i in with_cont]
        with torch.no_grad():
            cont_hidden, _ = completion_hidden(
                model, seqs, [conts[i][1] for i in with_cont], pad_id, overhead
            )
        return hidden, targets, (cont_hidden, cont_targets)
    return hidden, targets, (torch.cat([per_cont[i] for i in with_cont]), cont_targets)


def _keeps_cache(model: PreTrainedModel) -> bool:
    """Whether a forward now returns the KV cache continuations are fed over: always without a
    gradient; with one, unless gradient checkpointing (which drops the cache) is on."""
    if not torch.is_grad_enabled():
        return True
    # transformers 5 renamed is_gradient_checkpointing (the old name warns)
    name = (
        "is_activation_checkpointing"
        if hasattr(model, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    return not getattr(model, name, False)


def _cache_kwarg(decoder: torch.nn.Module) -> str:
    # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name warns on every call)
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _bucket(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    conts: list[tuple[int, list[int]] | None] | None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One padded forward: (the completion predictors (N, H), {row: continuation predictors})."""
    device = next(model.parameters()).device
    ids, mask = left_pad([p + c for p, c in zip(prompts, completions)], pad_id, device)  # (B, T), (B, T)
    mask = mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = model.get_decoder()
    want_cache = conts is not None and any(c is not None and len(c[1]) > 1 for c in conts)
    kwargs = {"use_cache": want_cache}
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
    hidden = out.last_hidden_state  # (B, T, H)
    width = ids.shape[1]
    rows, cols = [], []
    for i, c in enumerate(completions):
        first = width - len(c) - 1  # predicts completion token 0
        rows.append(torch.full((len(c),), i, dtype=torch.long, device=device))
        cols.append(torch.arange(first, first + len(c), device=device))
    picked = hidden[torch.cat(rows), torch.cat(cols)]  # (N, H)
    if conts is None or all(c is None for c in conts):
        return picked, {}
    with torch.no_grad():  # read off a pass with a gradient, the continuations take none
        second = _continue(model, decoder, out, prompts, completions, conts, pad_id) if want_cache else None
        result = {}
        for i, (c, cont) in enumerate(zip(completions, conts)):
            if cont is None:
                continue
            k, tokens = cont
            head = hidden[i, width - len(c) + k - 1][None].detach()  # after prompt + completion[:k]
            result[i] = head if len(tokens) == 1 else torch.cat([head, second[i, : len(tokens) - 1]])
    return picked, result


def _continue(model, decoder, out, prompts, completions, conts, pad_id) -> torch.Tensor:
    """Hidden states (B, F) of each row's continuation tokens, fed over the first pass's cache with a
    4D mask that hides the rest of the completion (and the padding) from them."""
    device = out.last_hidden_state.device
    width = out.last_hidden_state.shape[1]
    n_new = max(len(c[1]) for c in conts if c is not None)
    ids = torch.full((len(prompts), n_new), pad_id, dtype=torch.long, device=device)
    positions = torch.zeros((len(prompts), n_new), dtype=torch.long, device=device)
    start = torch.zeros(len(prompts), 1, dtype=torch.long, device=device)
    end = torch.zeros(len(prompts), 1, dtype=torch.long, device=device)  # rows without one see nothing old
    for i, (p, c, cont) in enumerate(zip(prompts, completions, conts)):
        if cont is None:
            continue
        k, tokens = cont
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        positions[i] = len(p) + k + torch.arange(n_new)
        start[i], end[i] = width - len(p) - len(c), width - len(c) + k
    keys = torch.arange(width + n_new, device=device)  # (W + F,)
    query = torch.arange(n_new, device=device)[:, None]  # (F, 1)
    old = (keys >= start[:, None]) & (keys < end[:, None])  # (B, 1, W + F)
    new = (keys >= width) & (keys <= width + query)  # (F, W + F): causal among the new tokens
    allowed = (old | new)[:, None]  # (B, 1, F, W + F)
    if mask_kind(model) == "eager":
        dtype = model.dtype
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    cache = {_cache_kwarg(decoder): out["cache"] if "cache" in out else out["past_key_values"]}
    return decoder(
        input_ids=ids, attention_mask=allowed, position_ids=positions, use_cache=True, **cache
    ).last_hidden_state
