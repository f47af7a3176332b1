"""The distillation engine's settings: sampling, in-training evaluation, and `EngineConfig`, which
shapes a run except for its model and task (the config tree's `real.engine.*`). Validation only: the
engine (`atesd.engine.DistillEngine`) does the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from atesd.exposure import ExposureConfig
from atesd.losses import LossConfig
from atesd.rollout import BACKENDS, BackendName, SamplingParams
from atesd.rollout.vllm import VLLMConfig
from atesd.teacher import TeacherConfig

GroundedBy = Literal["teacher", "teacher_fixed", "student"]


@dataclass(frozen=True)
class SamplingConfig:
    """Student rollout sampling during training (T=1, no top-k/top-p: truly on-policy)."""

    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    top_k: int = field(default=0, metadata={"help": "top-k filter, 0 = off"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus filter in (0, 1], 1 = off"})
    max_new_tokens: int = field(default=96, metadata={"help": "longest rollout in tokens (>= 1)"})
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model forward in our sampler (~1.5x faster decode on CPU after a "
            "~30 s compile; not guaranteed bit-identical to eager)"
        },
    )
    backend: BackendName = field(
        default="hf",
        metadata={"help": "rollout backend: hf (ours, CPU or GPU) or vllm (colocated engine, extra "
                  "atesd[vllm], CUDA only, an HF checkpoint only)"},
    )  # fmt: skip
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"sampling.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.temperature <= 0:
            raise ValueError(
                f"sampling.temperature must be > 0 for on-policy training, got {self.temperature}"
            )
        self.params()  # range checks

    def params(self, greedy: bool = False) -> SamplingParams:
        t = 0.0 if greedy else self.temperature
        return SamplingParams(
            temperature=t, top_k=self.top_k, top_p=self.top_p, max_new_tokens=self.max_new_tokens
        )


@dataclass(frozen=True)
class EvalSettings:
    """How the in-training evaluation (the env's `eval`) decodes: greedy accuracy always, and with
    Average@k (`real.env.eval_k`) k draws at these settings. The student prompt is the training one
    (`exposure.student_thinking`). recipes/eval.py's defaults follow the paper's protocol instead
    (thinking on, top-p 0.95, a longer limit): docs/USAGE.md compares the two."""

    temperature: float = field(default=1.0, metadata={"help": "Average@k sampling temperature (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "Average@k nucleus filter in (0, 1], 1 = off"})
    top_k: int = field(default=0, metadata={"help": "Average@k top-k filter, 0 = off"})
    max_new_tokens: int = field(
        default=0, metadata={"help": "longest evaluation answer in tokens (0: the training rollout limit)"}
    )

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature > 0, "> 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything that shapes a distillation run except the model and task themselves."""

    batch_size: int = field(
        default=32, metadata={"help": "prompts per student update, one rollout each (>= 1)"}
    )
    lr: float = field(default=1e-4, metadata={"help": "student AdamW learning rate (> 0)"})
    weight_decay: float = field(default=0.0, metadata={"help": "student AdamW weight decay (>= 0)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (> 0)"})
    loss: LossConfig = field(default_factory=lambda: LossConfig(kind="reverse_kl"))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    stats_decay: float = field(
        default=0.9, metadata={"help": "EMA decay of the training-state statistics, [0, 1)"}
    )
    grounded: bool = field(default=True, metadata={"help": "compute the grounded score g every step"})
    grounded_by: GroundedBy = field(
        default="student",
        metadata={"help": "who scores the gold answer after the student's reasoning: teacher (the paper: "
                  "the teacher at the window's alpha, which moves with alpha by itself), teacher_fixed "
                  "(the teacher at grounded_alpha every window: exposure-neutral) or student (the "
                  "student before the update, on its own prompt: exposure-neutral)"},
    )  # fmt: skip
    grounded_alpha: float = field(
        default=0.0, metadata={"help": "the exposure grounded_by=teacher_fixed scores at, in [0, 1]"}
    )
    fsdp: bool = field(
        default=False,
        metadata={"help": "under torchrun, shard every decoder layer (weights, gradients, optimiser state) "
                  "across ranks with FSDP2, for a full fine-tune too large to replicate; not with LoRA; "
                  "ignored in one process"},
    )  # fmt: skip
    probe_every: int = field(
        default=1, metadata={"help": "measure the probe NLL every this many steps (0 = never; then NaN)"}
    )
    overlap_probe: bool = field(
        default=True,
        metadata={"help": "inside a hold window, measure the probe NLL after update t on a second CPU "
                  "thread while update t+1's rollout samples from the same weights (CPU, >= 2 torch "
                  "threads, one process, probe_every=1; both run on one torch thread each: the same "
                  "values in our fp32 checks, though a reduction may round otherwise on another thread "
                  "count; false keeps every probe in line)"},
    )  # fmt: skip
    max_nonfinite_steps: int = field(
        default=5, metadata={"help": "stop after this many non-finite losses in a row"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the problem stream and the sampling generators"})

    def __post_init__(self) -> None:
        for name, ok, rule in (
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("grad_clip", self.grad_clip > 0, "> 0"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if not 0 <= self.stats_decay < 1:
            raise ValueError(f"stats_decay must be in [0, 1), got {self.stats_decay}")
        if self.grounded_by not in get_args(GroundedBy):
            raise ValueError(f"grounded_by must be one of {get_args(GroundedBy)}, got {self.grounded_by!r}")
        if not 0 <= self.grounded_alpha <= 1:
            raise ValueError(f"grounded_alpha must be in [0, 1], got {self.grounded_alpha}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {self.probe_every}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
