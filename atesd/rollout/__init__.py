"""Rollout backends: prompts (token ids) in, completions (token ids) out.

`HFSampler` is our KV-cache sampler for any `transformers` causal LM; `VLLMSampler` (a colocated vLLM
engine, optional extra `atesd[vllm]`, GPU only) is imported only when asked for. Backends know
nothing of tasks or losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from atesd.rollout.base import RolloutBackend, RolloutBatch, SamplingParams
from atesd.rollout.hf import HFSampler

if TYPE_CHECKING:
    from atesd.rollout.vllm import VLLMConfig


def _hf(model, eos_token_ids, pad_token_id, *, compile=False, vllm=None, trust_remote_code=False):
    return HFSampler(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, compile=compile)


def _vllm(model, eos_token_ids, pad_token_id, *, compile=False, vllm=None, trust_remote_code=False):
    from atesd.rollout.vllm import VLLMSampler  # the optional extra, imported only when asked for

    return VLLMSampler(model, eos_token_ids, pad_token_id, vllm, trust_remote_code=trust_remote_code)


# backend name -> factory(model, eos_token_ids, pad_token_id, *, compile, vllm, trust_remote_code);
# a new backend is its module plus one line here
BACKENDS: dict[str, Callable[..., RolloutBackend]] = {"hf": _hf, "vllm": _vllm}
BackendName = str  # a key of BACKENDS

__all__ = [
    "BACKENDS",
    "BackendName",
    "HFSampler",
    "RolloutBackend",
    "RolloutBatch",
    "SamplingParams",
    "make_backend",
]


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
    """Builds the rollout backend called `name` (a key of `BACKENDS`).

    Args:
        name: "hf" (our sampler, CPU or GPU) or "vllm" (a colocated vLLM engine; extra `atesd[vllm]`).
        model: the `transformers` causal LM (or peft model) to sample from.
        eos_token_ids: ids that end a completion (`atesd.models.eos_token_ids`).
        pad_token_id: id used for padding.
        compile: torch.compile the HF sampler's forward.
        vllm: the vLLM engine's settings (defaults when None).
        trust_remote_code: passed to vLLM, as the model was loaded.

    Returns:
        A `RolloutBackend`; the engine calls its `sync_weights()` after every optimiser step.

    Raises:
        ImportError: "vllm" without the `atesd[vllm]` extra installed (the message names it).
        OSError: "vllm" without a CUDA device.
        ValueError: an unknown name, or "vllm" for a model with no hub id or directory.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend name must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return BACKENDS[name](
        model, eos_token_ids, pad_token_id, compile=compile, vllm=vllm, trust_remote_code=trust_remote_code
    )
