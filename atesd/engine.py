"""DistillEngine: on-policy self-distillation at a given teacher exposure alpha.

One `step(alpha)` = sample problems, let the student roll out (student prompt), let the teacher
score the same tokens (teacher prompt with the reference revealed at alpha), take one optimiser
step on the chunked distillation loss, and measure the training-state statistics (mismatch,
confidence, grounded score, probe NLL and their EMAs). `run_window(alpha, H)` holds alpha for H
steps. The engine knows nothing of Gymnasium or controllers; it sees models only through the HF API.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.batching import completion_hidden, completion_hidden_with_continuations
from atesd.distributed import (
    Dist,
    gather_state,
    gathered,
    is_sharded,
    on_meta,
    scatter_state,
    shard_layers,
    sharded_copy,
)
from atesd.exposure import ExposureConfig, PromptBuilder
from atesd.losses import LossConfig, LossOutput, chunked_distill_loss
from atesd.models import eos_token_ids, head_problem, is_peft
from atesd.rollout import BACKENDS, BackendName, RolloutBackend, SamplingParams, make_backend
from atesd.rollout.vllm import VLLMConfig
from atesd.stats import EMAStats, StepStats, WindowStats
from atesd.tasks.base import Problem, Task, action_band
from atesd.teacher import Teacher, TeacherConfig

Exposure = float | Mapping[str, float]  # one alpha for every problem, or one per band
GroundedBy = Literal["teacher", "teacher_fixed", "student"]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Batch:
    """Problems, their student prompts (ids), the sampled completions (ids) and decoded texts."""

    problems: list[Problem]
    prompts: list[list[int]]
    completions: list[list[int]]
    texts: list[str]


def _dropout_free(model: torch.nn.Module) -> bool:
    """Whether training mode computes what eval mode does, so a training forward can stand in for an
    eval one: no dropout layer with p > 0 and no config setting that draws noise in training (any
    `*dropout*`, `*pdrop*` or `*jitter*` above 0: attention or hidden dropout, a MoE router's
    jitter; a noise setting named otherwise is not seen)."""
    settings = model.config.get_text_config(decoder=True).to_dict()
    noisy = [
        k for k, v in settings.items()
        if any(w in k for w in ("dropout", "pdrop", "jitter")) and isinstance(v, (int, float)) and v > 0
    ]  # fmt: skip
    layers = (m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd))
    return not noisy and all(p == 0 for p in layers)


def _one_torch_thread(fn: Callable[[], Any]) -> Any:
    """fn() with this thread's torch (OpenMP) thread count at 1: the count is per thread."""
    torch.set_num_threads(1)
    return fn()


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_steps` non-finite losses in a row."""


def _own_copies(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Give `optimizer` copies of its state's tensors that share memory with any tensor of `state` (a
    loaded state it must not change in place)."""
    from atesd.state import arrays_of

    given = {t.untyped_storage().data_ptr() for t in arrays_of(state) if isinstance(t, torch.Tensor)} - {0}
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            local = value.to_local() if is_sharded(value) else value
            if isinstance(local, torch.Tensor) and local.untyped_storage().data_ptr() in given:
                per_param[key] = value.clone()


def cpu_copy(state: Any, memo: dict[Any, torch.Tensor] | None = None, tensors: bool = True) -> Any:
    """A deep copy of a nested state with every tensor copied to the CPU (the same values in memory met
    twice, as tied weights are, copied once: one tensor in the copy). Loading it back copies into the
    live tensors wherever they are. `memo` maps `atesd.state.view_key` (or `id` where it has none) to
    the copy: a caller may seed it with tensors it made for this snapshot alone, kept as they are.
    `tensors=False`: the containers copied, the tensors themselves kept (not copied)."""
    from atesd.state import view_key

    memo = {} if memo is None else memo
    if isinstance(state, torch.Tensor) and not tensors:
        return state
    if isinstance(state, torch.Tensor):
        # by storage and view, not id: module.state_dict() gives a tied embed_tokens / lm_head as two
        # tensor objects over one storage, and the copy held (and a checkpoint wrote) the head twice
        key = view_key(state) or id(state)
        if key not in memo:
            memo[key] = state.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(state, dict):
        out = type(state)((k, cpu_copy(v, memo, tensors)) for k, v in state.items())
        if hasattr(state, "_metadata"):  # a module's state dict carries its version metadata
            out._metadata = copy.deepcopy(state._metadata)
        return out
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return type(state)(*(cpu_copy(v, memo, tensors) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v, memo, tensors) for v in state)
    return copy.deepcopy(state)


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


def _interleave(shards: list[list[bool]], n: int) -> list[bool]:
    """Undo the sharding `items[rank::world]`: the items in their order, from every rank's shard."""
    out: list[bool] = [False] * n
    world = len(shards)
    for rank, shard in enumerate(shards):
        out[rank::world] = shard
    return out


class DistillEngine:
    """Student, teacher, optimiser, sampler and statistics of one distillation run."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        cfg: EngineConfig | None = None,
        sampler: RolloutBackend | None = None,
        probe: list[Problem] | None = None,
        dist: Dist | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """`device`: where the model trains (default: where its parameters are). Under FSDP
        (`fsdp` under torchrun) a model handed over on the CPU is moved there one decoder layer at a
        time as it is sharded, its teacher copy likewise, so building the engine never puts a whole
        model on the device (the rollouts gather the student's layers later); otherwise it is moved
        there whole."""
        self.cfg = cfg or EngineConfig()
        why = head_problem(model)
        if why is not None:  # the sampler uses the model's own forward: training would be off-policy
            raise ValueError(
                f"the engine computes the student's and teacher's logits as hidden @ lm_head.weight.T, "
                f"which this model's are not: {why}"
            )
        if self.cfg.exposure.reference == "other" and self.cfg.batch_size < 2:
            raise ValueError(  # the control would silently be the problem's own reference
                "exposure.reference=other shows each problem another problem's reference from its batch: "
                f"it needs batch_size >= 2 (per process), got {self.cfg.batch_size}"
            )
        self.dist = dist or Dist.single()  # under torchrun: shards, averaged gradients and statistics
        self.student, self.tokenizer, self.task = model, tokenizer, task
        self.sharded = self.cfg.fsdp and self.dist.active
        moves = device is not None  # a model placed by its caller (offloaded, dispatched) stays put
        device = torch.device(device) if moves else next(model.parameters()).device
        fill = False  # whether rank 0's weights fill other ranks' skeletons (below)
        if self.sharded:
            if is_peft(model):
                raise ValueError(
                    "engine.fsdp shards a full fine-tune; a LoRA student's frozen base is replicated "
                    "(plain data parallel): set real.lora.rank=0 or engine.fsdp=false"
                )
            # ranks other than rank 0 may hand over a skeleton on the meta device (the builder's, so
            # that a node's host memory holds the checkpoint once): rank 0's weights fill every rank's
            skeletons = self.dist.gather_objects((on_meta(model), moves))  # (skeleton, device given) each
            if skeletons[0][0] or any(meta and not placed for meta, placed in skeletons):
                raise ValueError(
                    "under engine.fsdp a skeleton on the meta device is filled from rank 0's weights: rank 0 "
                    "must hand over the weights, and a skeleton's rank the device to train on (device=)"
                )
            fill = any(meta for meta, _ in skeletons)
            # a frozen or EMA copy is taken before the student is sharded, one layer at a time
            self.teacher = Teacher(
                model, self.cfg.teacher, lambda m: sharded_copy(m, self.dist, device, fill=fill)
            )
            shard_layers(model, self.dist, device, fill=fill)
        else:
            if on_meta(model):
                raise ValueError(
                    "the model is a skeleton on the meta device (no weights): only engine.fsdp under "
                    "torchrun fills one, from rank 0's weights"
                )
            if moves:
                model.to(device)  # no-op where it is already
            self.teacher = Teacher(model, self.cfg.teacher)
        # the student's grounded score can ride in the update's forward (fixed for the run: dropout
        # and noise settings are the model's own)
        self._student_rides = not self.sharded and _dropout_free(model)
        self.builder = PromptBuilder(tokenizer, task.prompt_format, self.cfg.exposure)
        if sampler is None:
            sampling = self.cfg.sampling
            eos = eos_token_ids(model, tokenizer)
            sampler = make_backend(sampling.backend, model, eos, tokenizer.pad_token_id,
                                   compile=sampling.compile, vllm=sampling.vllm)  # fmt: skip
        self.sampler = sampler  # a backend with its own copy of the weights is synced after every change
        if fill:  # it was built over a skeleton (vLLM's push skipped it): now every rank has rank 0's weights
            sampler.sync_weights()
        params: list = [p for p in model.parameters() if p.requires_grad]
        if self.sharded:  # CUDA's foreach kernels refuse a mix of sharded and plain tensors: a group each
            groups = ([p for p in params if is_sharded(p)], [p for p in params if not is_sharded(p)])
            params = [{"params": g} for g in groups if g]
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.reseed(self.cfg.seed)
        self.stats = EMAStats(self.cfg.stats_decay)
        self.num_steps = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.probe = probe if probe is not None else task.probe_set()
        self.last_probe_nll: float | None = None
        self._probe_ids: tuple[list[list[int]], list[list[int]]] | None = None
        self._side_thread: ThreadPoolExecutor | None = None  # `_beside`'s second thread, made when first used

    # ---- one student update -----------------------------------------------------------------
    def step(self, alpha: Exposure) -> StepStats:
        """One on-policy distillation update at exposure alpha (a number, or one per band: a dict
        band -> alpha, a problem's band as `action_band` names it), its probe NLL measured after it."""
        stats, _ = self._train(alpha)
        return self._probed(stats)

    def _train(
        self, alpha: Exposure, beside_rollout: Callable[[], Any] | None = None
    ) -> tuple[StepStats, Any]:
        """The update without its probe (`probe_nll` NaN, not yet in the EMAs: `_probed` completes it).
        `beside_rollout`, when given, runs on a second thread while the student samples (it must read
        the weights the rollout reads and write nothing they use); its result is returned too."""
        t_start = time.perf_counter()
        problems = self.task.sample(self.rng, self.cfg.batch_size)
        if beside_rollout is None:
            batch, beside = self.rollout(problems), None
        else:
            batch, beside = self._beside(lambda: self.rollout(problems), beside_rollout)
        t_rollout = time.perf_counter()
        out, grounded, t_teacher = self.batch_loss(batch, alpha)
        # under torchrun the update is the pooled batch's token mean (a rank's mean weighted by its
        # tokens), as one process with every rank's rows would take; 1.0 in one process
        share, num_tokens = self.dist.token_share(int(out.per_token.numel()))
        if self.dist.all_true(bool(torch.isfinite(out.loss))):  # one rank's non-finite loss skips all
            grad_norm = self._update(out.loss * share if share != 1.0 else out.loss)  # NaN: skipped
        else:
            grad_norm = math.nan
            self._count_nonfinite()
        skipped = not math.isfinite(grad_norm)
        if skipped:  # measures no g (METHOD §3), also where only the gradient was not finite: a window
            grounded = math.nan  # of skipped updates is credited no grounded term, not noise on one state
        t_update = time.perf_counter()
        self.num_steps += 1
        per_token = out.per_token.float()
        verdicts = [self.task.verify(p, t) for p, t in zip(batch.problems, batch.texts)]
        alphas = [self.alpha_of(alpha, p) for p in batch.problems]
        band_accuracy = self._band_accuracy(alpha, batch.problems, verdicts)
        # the batch statistics over ranks under torchrun: token means pooled (weighted by each rank's
        # tokens), per-problem means averaged (equal batches), quantiles the mean of the ranks'
        stats_all = self.dist.mean([
            float(out.loss.detach()) * share, float(out.top1_disagree.float().mean()) * share,
            float(per_token.mean()) * share, float(torch.quantile(per_token, 0.9)),
            float(torch.quantile(per_token, 0.99)), float(out.student_max_prob.mean()) * share,
            float(out.student_token_logprob.mean()) * share, grounded,
            float(np.mean([v.correct for v in verdicts])), float(np.mean(alphas)),
        ])  # fmt: skip
        loss, mismatch, div_mean, div_p90, div_p99, confidence, logprob, grounded, accuracy, mean_alpha = (
            stats_all
        )
        stats = StepStats(
            step=self.num_steps,
            alpha=mean_alpha if isinstance(alpha, Mapping) else float(alpha),
            loss=loss,
            skipped=skipped,
            grad_norm=grad_norm,
            num_tokens=num_tokens,
            mismatch_top1=mismatch,
            divergence_mean=div_mean,
            divergence_p90=div_p90,
            divergence_p99=div_p99,
            confidence=confidence,
            sampled_logprob=logprob,
            grounded=grounded,
            probe_nll=math.nan,
            rollout_accuracy=accuracy,
            rollout_s=t_rollout - t_start,
            teacher_s=t_teacher - t_rollout,
            update_s=t_update - t_teacher,
            probe_s=0.0,
            total_s=t_update - t_start,
            band_accuracy=band_accuracy,
        )
        return stats, beside

    def _probed(self, stats: StepStats, measured: tuple[float, float] | None = None) -> StepStats:
        """`stats` with the probe NLL of the weights after its update, folded into the EMAs.

        `measured` = (nll, seconds) when the probe already ran beside the next rollout (its seconds are
        then not part of `total_s`); otherwise it runs now (every `probe_every` steps, else NaN)."""
        if measured is None:
            every = self.cfg.probe_every
            if every and stats.step % every == 0:
                measured = self._timed_probe()
            else:  # not measured after this update: the last probe is of older weights
                measured, self.last_probe_nll = (math.nan, 0.0), None
            total = stats.total_s + measured[1]
        else:
            total = stats.total_s
        stats = dataclasses.replace(stats, probe_nll=measured[0], probe_s=measured[1], total_s=total)
        self.stats.update(stats)
        return stats

    def _timed_probe(self) -> tuple[float, float]:
        t = time.perf_counter()
        nll = self.probe_nll()
        return nll, time.perf_counter() - t

    def overlaps_probe(self) -> bool:
        """Whether `run_window` measures each probe beside the next rollout: on a CPU with at least two
        torch threads, in one process, with our sampler on the student's own weights, a probe every step
        (the rollout of a small model keeps one core busy and leaves the other idle)."""
        return (
            self.cfg.overlap_probe
            and self.cfg.probe_every == 1
            and not self.dist.active
            and not self.sampler.owns_weights
            and self.student.device.type == "cpu"
            and torch.get_num_threads() >= 2
            and not any(getattr(m, "_hf_hook", None) for m in self.student.modules())  # offloading hooks
        )

    def __getstate__(self) -> dict:
        """Copies and pickles leave the second thread behind (a copy makes its own when it needs one)."""
        return self.__dict__ | {"_side_thread": None}

    def _beside(self, main: Callable[[], Any], side: Callable[[], Any]) -> tuple[Any, Any]:
        """main() here and side() on the engine's second thread at once, one torch thread each, the
        student in eval mode for both (neither toggles modes under the other); returns both results."""
        threads = torch.get_num_threads()
        modes = [m.training for m in self.student.modules()]
        self.student.eval()
        torch.set_num_threads(1)
        if self._side_thread is None:
            self._side_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atesd-probe")
        future = self._side_thread.submit(_one_torch_thread, side)
        try:
            result = main()
        finally:
            futures_wait([future])  # never leave it running on the weights the caller changes next
            torch.set_num_threads(threads)
            for module, mode in zip(self.student.modules(), modes, strict=True):
                module.training = mode
        return result, future.result()

    def alpha_of(self, alpha: Exposure, problem: Problem) -> float:
        """The exposure of `problem`: `alpha` itself, or its band's entry (KeyError names the band)."""
        if not isinstance(alpha, Mapping):
            return float(alpha)
        band = action_band(self.task, problem)
        if band not in alpha:
            raise KeyError(f"no alpha for band {band!r}: the per-band exposure has {sorted(alpha)}")
        return float(alpha[band])

    def _band_accuracy(self, alpha: Exposure, problems: list[Problem], verdicts: list) -> dict[str, float]:
        """Per-band alpha only: each band's rollout accuracy in this batch (over the ranks under
        torchrun: solved and drawn counts summed), for the bands drawn."""
        if not isinstance(alpha, Mapping):
            return {}
        bands = list(alpha)
        solved = [
            sum(v.correct for p, v in zip(problems, verdicts) if action_band(self.task, p) == b)
            for b in bands
        ]
        drawn = [sum(action_band(self.task, p) == b for p in problems) for b in bands]
        means = self.dist.mean([float(x) for x in solved + drawn])  # ratios of means = ratios of sums
        solved_m, drawn_m = means[: len(bands)], means[len(bands) :]
        return {b: s / d for b, s, d in zip(bands, solved_m, drawn_m) if d > 0}

    def rollout(self, problems: list[Problem], generator: torch.Generator | None = None) -> Batch:
        """Student prompts and sampled completions for `problems` (the training sampler by default)."""
        prompts = [self.builder.encode(self.builder.student_prompt(p)) for p in problems]
        with self._sampling():
            result = self.sampler.generate(prompts, self.cfg.sampling.params(), generator or self.sample_gen)
        texts = self.tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
        return Batch(problems, prompts, result.completion_ids, texts)

    def _sampling(self) -> contextlib.AbstractContextManager:
        """FSDP: hold the layers whole while our sampler runs on this rank alone (its rollouts end at
        other lengths than other ranks'); a backend with its own copy of the weights (vLLM) needs none."""
        return contextlib.nullcontext() if self.sampler.owns_weights else gathered(self.student)

    def batch_loss(self, batch: Batch, alpha: Exposure) -> tuple[LossOutput, float, float]:
        """Distillation loss of `batch` at alpha (student with grad), the grounded score, and the
        time the teacher's passes ended."""
        teacher_prompts = self.teacher_prompts(batch.problems, alpha, batch.texts)
        pad = self.tokenizer.pad_token_id
        by = self.cfg.grounded_by if self.cfg.grounded else None
        grounded = math.nan
        # the paper's grounded score rides in the scoring pass where the reasoning is a token prefix
        # of the rollout (the gold answer fed after it over the pass's cache); the student's rides in
        # the update's forward, which runs the weights that made the rollout on its own prompt, where
        # training mode computes what eval mode does (no dropout). The other rows, and every row under
        # FSDP (each rank the same forwards), get a forward of their own
        ride = by == "teacher" and not self.sharded
        ride_student = by == "student" and self._student_rides
        reasoning, riding, _ = self._grounded_rows(batch) if ride or ride_student else self._unridden(batch)
        with self.teacher.scoring() as teacher_model:
            t_hidden, targets, ridden = completion_hidden_with_continuations(
                teacher_model, teacher_prompts, batch.completions, pad, riding if ride else None
            )
            t_head = teacher_model.get_output_embeddings().weight
            if by == "teacher":
                grounded = self._grounded(teacher_model, teacher_prompts, batch, reasoning, riding, ridden)
            elif by == "teacher_fixed":  # the same forward at one exposure for every window
                fixed = self.teacher_prompts(
                    batch.problems, self.cfg.grounded_alpha, batch.texts, per_outcome=False
                )
                grounded = self._grounded(teacher_model, fixed, batch, reasoning, riding, None)
        if by == "student" and not ride_student:
            was_training = self.student.training
            self.student.eval()
            with torch.no_grad():
                grounded = self._grounded(self.student, batch.prompts, batch, reasoning, riding, None)
            self.student.train(was_training)
        t_teacher = time.perf_counter()
        self.student.train()
        s_hidden, _, s_ridden = completion_hidden_with_continuations(
            self.student, batch.prompts, batch.completions, pad, riding if ride_student else None
        )
        if ride_student:
            grounded = self._grounded(self.student, batch.prompts, batch, reasoning, riding, s_ridden)
        s_head = self.student.get_output_embeddings().weight
        mask = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
        out = chunked_distill_loss(
            s_hidden, t_hidden, s_head, t_head, mask, self.cfg.loss, target_ids=targets
        )
        return out, grounded, t_teacher

    def run_window(self, alpha: Exposure, hold_steps: int) -> WindowStats:
        """Hold alpha for `hold_steps` updates; losses l_0..l_H are the probe NLL around them.

        The same updates and numbers as `hold_steps` calls of `step`; where `overlaps_probe()`, the
        probe after each update but the last is measured while the next update's rollout samples."""
        if hold_steps < 1:
            raise ValueError(f"hold_steps must be >= 1, got {hold_steps}")
        if not self.cfg.probe_every:  # never measured (then every step's probe is NaN too)
            start = math.nan
        else:
            start = self.last_probe_nll if self.last_probe_nll is not None else self.probe_nll()
        if not self.overlaps_probe():
            steps = [self.step(alpha) for _ in range(hold_steps)]
        else:  # the probe after update t runs beside the rollout of update t + 1 (same weights)
            steps, (pending, _) = [], self._train(alpha)
            for _ in range(hold_steps - 1):
                stats, measured = self._train(alpha, beside_rollout=self._timed_probe)
                steps.append(self._probed(pending, measured))
                pending = stats
            steps.append(self._probed(pending))  # the window's last probe: nothing left to hide it behind
        mean = float(np.mean(list(alpha.values()))) if isinstance(alpha, Mapping) else float(alpha)
        return WindowStats(alpha=mean, steps=steps, probe_before=start)

    def teacher_prompts(
        self, problems: list[Problem], alpha: Exposure, texts: list[str], per_outcome: bool = True
    ) -> list[list[int]]:
        """Teacher prompt ids per problem under the configured reference mode (each at its band's
        alpha when `alpha` is per band; a solved rollout at `exposure.solved_alpha` when that is set
        and `per_outcome`)."""
        mode = self.cfg.exposure.reference
        if mode == "own":
            refs = problems
        elif mode == "other":  # a derangement: each problem gets its neighbour's reference
            refs = problems[1:] + problems[:1]
        else:
            refs = [self.task.path_matched(p, t) for p, t in zip(problems, texts)]
        solved = self.cfg.exposure.solved_alpha if per_outcome else None
        alphas = [self.alpha_of(alpha, p) for p in problems]
        if solved is not None:
            alphas = [
                solved if t and self.task.verify(p, t).correct else a
                for a, p, t in zip(alphas, problems, texts)
            ]
        return [
            self.builder.encode(self.builder.teacher_prompt(p, a, r))
            for p, a, r in zip(problems, alphas, refs)
        ]

    def _update(self, loss: torch.Tensor) -> float:
        """Backward, clip, step; a non-finite gradient skips the step (and counts)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.dist.average_gradients(params)  # no-op in one process
        grad_norm = self.dist.clip_grad_norm(params, self.cfg.grad_clip)  # sharded parameters too
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite()
            return grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # not held through the next rollout (a model's size)
        self.teacher.update()
        self.sampler.sync_weights()
        self.nonfinite_in_row = 0
        return grad_norm

    def _count_nonfinite(self) -> None:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        log.warning("non-finite loss or gradient: update skipped (%d in a row)", self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} non-finite losses in a row; lower the learning rate or check the "
                "model "
                f"(engine.max_nonfinite_steps={self.cfg.max_nonfinite_steps})"
            )

    # ---- state --------------------------------------------------------------------------------
    # the parts of `state_dict` that under FSDP are whole tensors on rank 0 and empty on the other ranks,
    # which `load_state_dict` reads on rank 0 alone (a checkpoint's need not be read elsewhere)
    RANK0_PARTS = ("student", "teacher", "optimizer")

    def state_dict(self) -> dict:
        """Everything that carries state: student and teacher weights, optimiser, RNGs, statistics."""
        if self.sharded:  # whole tensors on rank 0's CPU, none elsewhere (a collective: every rank calls it)
            student, optimizer = gather_state(self.student, self.optimizer)
            teacher = gather_state(self.teacher.copy)[0] if self.teacher.copy is not None else {}
            weights = {"student": student, "teacher": teacher, "optimizer": optimizer}
        else:
            weights = {"student": self._student_state(), "teacher": self.teacher.state_dict(),
                       "optimizer": self.optimizer.state_dict()}  # fmt: skip
        return cpu_copy(  # a snapshot (the env's reset state, a checkpoint) holds no GPU memory
            weights
            | {
                "rng": self.rng.bit_generator.state,
                "sample_gen": self.sample_gen.get_state(),
                "eval_gen": self.eval_gen.get_state(),
                # dropout (LoRA's, a model's own) draws from torch's global generators
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "stats": self.stats.state_dict(),
                "counters": [self.num_steps, self.nonfinite_in_row, self.nonfinite_total],
                "last_probe_nll": self.last_probe_nll,
            }
        )

    def _student_state(self) -> dict[str, torch.Tensor]:
        """The student's weights; under LoRA only what trains (the adapters): the frozen base is the
        checkpoint it was loaded from, so snapshots and checkpoints need not hold a copy of it."""
        state = self.student.state_dict()
        if not is_peft(self.student):
            return state
        trainable = {name for name, p in self.student.named_parameters() if p.requires_grad}
        return type(state)((k, v) for k, v in state.items() if k in trainable)

    def _load_student(self, weights: dict[str, torch.Tensor]) -> None:
        if not is_peft(self.student):
            self.student.load_state_dict(weights)
            return
        trainable = {name for name, p in self.student.named_parameters() if p.requires_grad}
        unknown = set(weights) - set(self.student.state_dict())
        if unknown:
            raise ValueError(f"the state holds weights this student has not: {sorted(unknown)[:3]}")
        missing = trainable - set(weights)
        if missing:
            raise ValueError(f"the state lacks adapter weights of this student: {sorted(missing)[:3]}")
        self.student.load_state_dict(weights, strict=False)  # a state with the base too loads it as well

    def load_state_dict(self, state: dict) -> None:
        own = self.sample_gen.get_state().numel()
        if state["sample_gen"].numel() != own:  # a CUDA generator's state is 16 bytes, a CPU one's 5,056
            raise ValueError(
                "the state's samplers ran on another kind of device than this engine's "
                f"({self.sample_gen.device}): a run resumes on the kind of device it ran on (real.device)"
            )
        # `state` must stay as it is (the env's reset snapshot is loaded again at every reset). The
        # weights are copied into the live tensors; the optimiser adopts tensors already of its
        # parameters' device and dtype, so its part is copied first (the whole state was: one more copy
        # of the student and teacher, 66 GB of host memory at every reset of an 8B full fine-tune)
        if self.sharded:  # rank 0's whole tensors in; every rank keeps its shard
            # the distributed loaders rearrange the dicts they are given, so the containers are copied,
            # not the tensors (a deep copy doubled each rank's host memory while it resumed: weights,
            # teacher and moments, 4 models' worth). The weights are copied into the shards; the
            # optimiser keeps some of rank 0's tensors as its own (the step counts; on a CPU device the
            # replicated parts' moments too), which its steps would change in place: those alone are
            # copied (tests/test_distributed_load.py checks)
            given = cpu_copy(state, tensors=False)
            scatter_state(self.student, given["student"], self.optimizer, given["optimizer"])
            if self.teacher.copy is not None:
                scatter_state(self.teacher.copy, given["teacher"])
            _own_copies(self.optimizer, state["optimizer"])
        else:
            self._load_student(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.rng.bit_generator.state = state["rng"]
        self.sample_gen.set_state(state["sample_gen"])
        self.eval_gen.set_state(state["eval_gen"])
        if "torch_rng" in state:  # (a state from before the global generators were kept: as it was)
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_initialized():  # as many as this process sees
                for index, cuda_state in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(cuda_state, index)
        self.stats.load_state_dict(state["stats"])
        self.num_steps, self.nonfinite_in_row, self.nonfinite_total = state["counters"]
        self.last_probe_nll = state["last_probe_nll"]
        self.sampler.sync_weights()

    def rank_state(self) -> dict:
        """What differs between torchrun ranks: this rank's problem stream and sampling generator
        (weights, optimiser and statistics are identical on every rank)."""
        return {"rng": copy.deepcopy(self.rng.bit_generator.state), "sample_gen": self.sample_gen.get_state()}

    def load_rank_state(self, state: dict) -> None:
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.sample_gen.set_state(torch.as_tensor(state["sample_gen"], dtype=torch.uint8))

    def reseed(self, seed: int) -> None:
        """Fresh problem stream and sampling generators from `seed` (weights untouched), and torch's
        global generators (dropout draws from them: LoRA's, a model's own) seeded from it too, so that
        a run does not depend on what the process ran before it."""
        data_seq, sample_seq, eval_seq, global_seq = np.random.SeedSequence(seed).spawn(4)
        if self.dist.active:  # own problems and samples per rank; eval_gen shared (`_rank_eval_generator`)
            data_seq, sample_seq, global_seq = np.random.SeedSequence([seed, self.dist.rank]).spawn(3)
        torch.manual_seed(int(global_seq.generate_state(1)[0]))  # the CPU's and every CUDA device's
        self.rng = np.random.default_rng(data_seq)
        device = next(self.student.parameters()).device  # samplers draw on the model's device
        self.sample_gen = torch.Generator(device=device).manual_seed(int(sample_seq.generate_state(1)[0]))
        self.eval_gen = torch.Generator(device=device).manual_seed(int(eval_seq.generate_state(1)[0]))

    # ---- measurements -----------------------------------------------------------------------
    def _grounded_rows(
        self, batch: Batch
    ) -> tuple[list[list[int]], list[tuple[int, list[int]] | None], None]:
        """`_grounded`'s arguments before the scoring pass: each row's reasoning ids (its rollout
        without its own final answer), and for the rows whose reasoning is a token prefix of the
        rollout the continuation to ride in that pass (its length, the gold answer)."""
        reasoning, riding = [], []
        for problem, text, completion in zip(batch.problems, batch.texts, batch.completions):
            ids = self.builder.encode(self.task.reasoning(text))
            final = self.builder.encode(problem.final)
            reasoning.append(ids)
            prefix = len(ids) <= len(completion) and completion[: len(ids)] == ids and final
            riding.append((len(ids), final) if prefix else None)
        return reasoning, riding, None

    def _unridden(self, batch: Batch) -> tuple[list[list[int]], list[None], None]:
        """`_grounded`'s arguments for a forward of its own over every row."""
        reasoning = [self.builder.encode(self.task.reasoning(text)) for text in batch.texts]
        return reasoning, [None] * len(reasoning), None

    @torch.no_grad()
    def _grounded(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        batch: Batch,
        reasoning: list[list[int]],
        riding: list[tuple[int, list[int]] | None],
        ridden: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> float:
        """Mean log-prob `model` (the teacher, or the student for grounded_by=student) assigns to the
        reference final answer appended after the student's reasoning (its own final answer removed)
        behind `prompts`, pooled over the answer tokens: the rows that rode in the scoring pass
        (`ridden`) and a forward for the rest."""
        parts = [ridden] if ridden is not None else []
        rest = [i for i, r in enumerate(riding) if r is None]
        if rest:
            seqs = [prompts[i] + reasoning[i] for i in rest]
            finals = [self.builder.encode(batch.problems[i].final) for i in rest]
            parts.append(completion_hidden(model, seqs, finals, self.tokenizer.pad_token_id))
        hidden = torch.cat([h for h, _ in parts])
        targets = torch.cat([t for _, t in parts])
        head = model.get_output_embeddings().weight.float()  # float32 logits, as the loss's and the probe's
        logp = torch.log_softmax(hidden.float() @ head.T, dim=-1)
        return float(logp.gather(1, targets[:, None]).mean())

    @torch.no_grad()
    def probe_nll(self) -> float:
        """Student NLL per token of the held-out reference solutions (the tracked loss l); NaN for a
        task without a probe set (no references, or `probe_size=0`)."""
        if not self.probe:
            self.last_probe_nll = math.nan
            return math.nan
        if self._probe_ids is None:  # the probe set is fixed: encode it once
            self._probe_ids = (
                [self.builder.encode(self.builder.student_prompt(p)) for p in self.probe],
                [self.builder.encode(p.solution) + [self.tokenizer.eos_token_id] for p in self.probe],
            )
        prompts, solutions = self._probe_ids
        was_training = self.student.training
        self.student.eval()
        hidden, targets = completion_hidden(self.student, prompts, solutions, self.tokenizer.pad_token_id)
        nll = mean_nll(hidden, self.student.get_output_embeddings().weight, targets)
        self.student.train(was_training)
        self.last_probe_nll = nll
        return nll

    @torch.no_grad()
    def evaluate(
        self, k: int = 0, temperature: float | None = None, teacher_alpha: float | None = None
    ) -> dict[str, float]:
        """Greedy accuracy per band and, with k > 0, Average@k over k samples at `temperature`
        (default `cfg.eval.temperature`; top-p, top-k and the length limit from `cfg.eval`).

        With `teacher_alpha`, the student model answers from the *teacher's* prompt at that exposure
        instead: how well the model reads a reference revealed at alpha (teacher quality).

        Under torchrun a collective: every rank calls it, evaluates its shard of each band and
        returns the whole evaluation (`_evaluate`).
        """
        with self._sampling():
            return self._evaluate(
                k, self.cfg.eval.temperature if temperature is None else temperature, teacher_alpha
            )

    def _evaluate(self, k: int, temperature: float, teacher_alpha: float | None) -> dict[str, float]:
        """Under torchrun each rank evaluates every world_size-th problem of each band (its shard) and
        the verdicts are gathered back into the band's order, so every rank returns the same numbers as
        one process would from those verdicts, for 1 / world_size of the sampling and grading."""
        world, rank = (self.dist.world_size, self.dist.rank) if self.dist.active else (1, 0)
        generator = self.eval_gen if world == 1 or k == 0 else self._rank_eval_generator()
        ev = self.cfg.eval
        limit = ev.max_new_tokens or self.cfg.sampling.max_new_tokens
        greedy_params = dataclasses.replace(self.cfg.sampling.params(greedy=True), max_new_tokens=limit)
        params = SamplingParams(temperature, ev.top_k, ev.top_p, limit)
        bands = self.task.eval_sets()
        local: dict[str, list[list[bool]]] = {}  # band -> [greedy verdicts, then one list per sample]
        for band, problems in bands.items():
            mine = list(problems)[rank::world]
            if not mine:  # fewer problems than ranks
                local[band] = [[] for _ in range(1 + k)]
                continue
            if teacher_alpha is None:
                prompts = [self.builder.encode(self.builder.student_prompt(p)) for p in mine]
            else:  # over the whole band, then this rank's: exposure.reference=other reads neighbours
                prompts = self.teacher_prompts(list(problems), teacher_alpha, [""] * len(problems))[
                    rank::world
                ]
            runs = [self.sampler.generate(prompts, greedy_params, None)]
            runs += [self.sampler.generate(prompts, params, generator) for _ in range(k)]
            local[band] = [self._verdicts(mine, run.completion_ids) for run in runs]
        shards = self.dist.gather_objects(local) if world > 1 else [local]
        out: dict[str, float] = {}
        for band, problems in bands.items():
            runs = [_interleave([shard[band][i] for shard in shards], len(problems)) for i in range(1 + k)]
            out[f"accuracy/{band}"] = float(np.mean(runs[0]))
            if k > 0:
                out[f"avg_at_{k}/{band}"] = float(np.mean([np.mean(run) for run in runs[1:]]))
        return out

    def _rank_eval_generator(self) -> torch.Generator:
        """This rank's sampling stream for one sharded evaluation: a seed drawn from the evaluation
        generator (the same draw on every rank, so its state stays identical across ranks and in the
        checkpoint), mixed with the rank, so the ranks' samples are independent."""
        device = self.eval_gen.device
        seed = int(torch.randint(0, 2**62, (1,), generator=self.eval_gen, device=device))
        mixed = np.random.SeedSequence([seed, self.dist.rank]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator(device=device).manual_seed(int(mixed))

    def _verdicts(self, problems: list[Problem], completions: list[list[int]]) -> list[bool]:
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [bool(self.task.verify(p, t).correct) for p, t in zip(problems, texts)]

    @torch.no_grad()
    def mismatch(self, alpha: float, problems: list[Problem], generator: torch.Generator) -> dict[str, float]:
        """Student-teacher mismatch at alpha on sampled student rollouts of `problems`: mean
        per-token KL(student || teacher) and top-1 disagreement. Changes no weights."""
        batch = self.rollout(problems, generator)
        # at alpha itself: a solved rollout's `solved_alpha` is training's exposure, not this measure's
        teacher_prompts = self.teacher_prompts(problems, alpha, batch.texts, per_outcome=False)
        pad = self.tokenizer.pad_token_id
        with self.teacher.scoring() as teacher_model:
            t_hidden, targets = completion_hidden(teacher_model, teacher_prompts, batch.completions, pad)
            t_head = teacher_model.get_output_embeddings().weight
        was_training = self.student.training
        self.student.eval()
        s_hidden, _ = completion_hidden(self.student, batch.prompts, batch.completions, pad)
        self.student.train(was_training)
        mask = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
        s_head = self.student.get_output_embeddings().weight
        out = chunked_distill_loss(
            s_hidden, t_hidden, s_head, t_head, mask, LossConfig(kind="reverse_kl"), targets
        )
        return {"kl": float(out.per_token.mean()), "top1": float(out.top1_disagree.float().mean())}
