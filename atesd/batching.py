"""Padding and position bookkeeping shared by the engine's forward passes.

Owns one fact: in a left-padded batch of prompt + completion rows, the hidden state that predicts
completion token j sits one position before it. Knows nothing of losses or prompts.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from atesd.rollout.hf import left_pad


def completion_hidden(
    model: PreTrainedModel, prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict each completion token.

    Returns (hidden (N, H), targets (N,)) with N = total completion tokens, in row order, so the
    student's and the teacher's passes over different prompts line up token for token.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    ids, mask = left_pad([p + c for p, c in zip(prompts, completions)], pad_id, device)  # (B, T), (B, T)
    mask = mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.get_decoder()(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state  # (B, T, H)
    width = ids.shape[1]
    rows, cols = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        first = width - len(p) - len(c) + len(p) - 1  # predicts completion token 0
        rows.append(torch.full((len(c),), i, dtype=torch.long, device=device))
        cols.append(torch.arange(first, first + len(c), device=device))
    targets = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=device)
    return hidden[torch.cat(rows), torch.cat(cols)], targets  # (N, H), (N,)
