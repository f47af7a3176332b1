"""Rollout backends: prompts (token ids) in, completions (token ids) out.

`HFSampler` is our KV-cache sampler for any `transformers` causal LM; the vLLM backend is an optional
extra (`atesd[vllm]`) imported only when asked for. Backends know nothing of tasks or losses.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from atesd.rollout.base import RolloutBackend, RolloutBatch, SamplingParams
from atesd.rollout.hf import HFSampler

BackendName = Literal["hf", "vllm"]

__all__ = ["BackendName", "HFSampler", "RolloutBackend", "RolloutBatch", "SamplingParams", "make_backend"]


def make_backend(
    name: BackendName, model: nn.Module, eos_token_ids: list[int], pad_token_id: int
) -> RolloutBackend:
    """Builds the rollout backend called `name`.

    Args:
        name: "hf" (our sampler, CPU or GPU) or "vllm" (optional extra, not available yet).
        model: the `transformers` causal LM to sample from.
        eos_token_ids: ids that end a completion.
        pad_token_id: id used for padding.

    Returns:
        A `RolloutBackend`.

    Raises:
        ImportError: "vllm" without the `atesd[vllm]` extra installed.
        NotImplementedError: "vllm" with it installed (the backend comes later).
        ValueError: an unknown name.
    """
    if name == "hf":
        return HFSampler(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id)
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "the 'vllm' backend needs the optional extra: pip install 'atesd[vllm]'"
            ) from err
        raise NotImplementedError("the 'vllm' rollout backend (extra 'atesd[vllm]') is not implemented yet")
    raise ValueError(f"backend name must be one of 'hf', 'vllm', got {name!r}")
