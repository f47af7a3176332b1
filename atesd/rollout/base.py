"""The one rollout interface: prompts (token ids) in, completions (token ids) out.

Backends own how tokens are sampled (our KV-cache loop, vLLM); they know nothing of tasks,
exposure or losses. Randomness comes only from the explicit `torch.Generator` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: temperature == 0 means greedy (argmax); top_k == 0 and top_p == 1 disable those."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RolloutBatch:
    """Completions for a batch of prompts, in prompt order.

    completion_ids[i] holds the sampled tokens of prompt i, including the EOS token when one was
    produced (finished[i] is then True) and nothing after it.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    finished: list[bool]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


class RolloutBackend(Protocol):
    """Anything that turns prompts into completions.

    `owns_weights` says whether the backend samples from its own copy of the weights (vLLM) rather
    than from the student module itself (our HF sampler); the engine calls `sync_weights()` after
    every change to the student's weights, a no-op for a backend that does not own a copy.
    """

    owns_weights: bool

    def sync_weights(self) -> None: ...

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None
    ) -> RolloutBatch: ...
