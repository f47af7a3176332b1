"""Rollout backends: prompts (token ids) in, completions (token ids) out.

`HFSampler` is our KV-cache sampler for any `transformers` causal LM; `VLLMSampler` (a colocated vLLM
engine, optional extra `atesd[vllm]`, GPU only) is imported only when asked for. Backends know
nothing of tasks or losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import nn

from atesd.rollout.base import RolloutBackend, RolloutBatch, SamplingParams
from atesd.rollout.hf import HFSampler

if TYPE_CHECKING:
    from atesd.rollout.vllm import VLLMConfig

BackendName = Literal["hf", "vllm"]

__all__ = ["BackendName", "HFSampler", "RolloutBackend", "RolloutBatch", "SamplingParams", "make_backend"]


def make_backend(
    name: BackendName,
    model: nn.Module,
    eos_token_ids: list[int],
    pad_token_id: int,
    *,
    compile: bool = False,
    vllm: VLLMConfig | None = None,
    trust_remote_code: bool = False,
) -> RolloutBackend:
    """Builds the rollout backend called `name`.

    Args:
        name: "hf" (our sampler, CPU or GPU) or "vllm" (a colocated vLLM engine; extra `atesd[vllm]`).
        model: the `transformers` causal LM (or peft model) to sample from.
        eos_token_ids: ids that end a completion.
        pad_token_id: id used for padding.
        compile: torch.compile the HF sampler's forward.
        vllm: the vLLM engine's settings (defaults when None).
        trust_remote_code: passed to vLLM, as the model was loaded.

    Returns:
        A `RolloutBackend`; the vLLM one also has `sync_weights()`, which the engine calls after every
        optimiser step.

    Raises:
        ImportError: "vllm" without the `atesd[vllm]` extra installed (the message names it).
        RuntimeError: "vllm" without a CUDA device.
        ValueError: an unknown name, or "vllm" for a model with no hub id or directory.
    """
    if name == "hf":
        return HFSampler(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, compile=compile)
    if name == "vllm":
        from atesd.rollout.vllm import VLLMSampler

        return VLLMSampler(model, eos_token_ids, pad_token_id, vllm, trust_remote_code=trust_remote_code)
    raise ValueError(f"backend name must be one of 'hf', 'vllm', got {name!r}")
