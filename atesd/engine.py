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
import numbers
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd import measures
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
from atesd.engine_config import EngineConfig, EvalSettings, GroundedBy, SamplingConfig
from atesd.exposure import PromptBuilder
from atesd.losses import LossOutput, chunked_distill_loss, mean_nll
from atesd.models import dropout_free, eos_token_ids, head_problem, is_peft
from atesd.rollout import RolloutBackend, make_backend
from atesd.state import cpu_copy, own_copies
from atesd.stats import EMAStats, StepStats, WindowStats
from atesd.tasks.base import Problem, Task, action_band, action_bands
from atesd.teacher import Teacher

# the settings live in atesd.engine_config; imported from here too, as they always were
__all__ = [
    "Batch", "DistillEngine", "EngineConfig", "EvalSettings", "Exposure", "GroundedBy", "NonFiniteLossError",
    "SamplingConfig",
]  # fmt: skip

Exposure = float | Mapping[str, float]  # one alpha for every problem, or one per band

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Problems, their student prompts (ids), the sampled completions (ids) and decoded texts."""

    problems: list[Problem]
    prompts: list[list[int]]
    completions: list[list[int]]
    texts: list[str]


def _one_torch_thread(fn: Callable[[], Any]) -> Any:
    """fn() with this thread's torch (OpenMP) thread count at 1: the count is per thread."""
    torch.set_num_threads(1)
    return fn()


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_steps` non-finite losses in a row."""


def other_references(problems: list[Problem]) -> list[Problem]:
    """For each problem the next problem of the batch (cyclically) that is another problem: the
    neighbour's alone gave a problem drawn twice in a row its own reference, which the control
    `reference=other` exists to withhold. ValueError for a batch of one problem, however often drawn."""
    n, refs = len(problems), []
    for i, problem in enumerate(problems):
        other = next((problems[(i + k) % n] for k in range(1, n) if problems[(i + k) % n] != problem), None)
        if other is None:
            raise ValueError(
                "exposure.reference=other needs two different problems in a batch: this one drew a single "
                "problem (a task of one training problem?)"
            )
        refs.append(other)
    return refs


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
        fill = self._place(model, device)  # whether rank 0's weights filled other ranks' skeletons
        # the student's grounded score can ride in the update's forward (fixed for the run: dropout
        # and noise settings are the model's own)
        self._student_rides = not self.sharded and dropout_free(model)
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

    def _place(self, model: PreTrainedModel, device: str | torch.device | None) -> bool:
        """Move (or, under FSDP, shard) the student onto `device` and make the teacher; returns whether
        rank 0's weights filled other ranks' skeletons on the meta device (see `__init__`)."""
        moves = device is not None  # a model placed by its caller (offloaded, dispatched) stays put
        device = torch.device(device) if moves else next(model.parameters()).device
        fill = False
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
        return fill

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
        self.check_exposure(alpha)  # before the problem stream and the sampler move
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
        stats = self._step_stats(
            alpha, batch, out, share, grounded,
            step=self.num_steps, skipped=skipped, grad_norm=grad_norm, num_tokens=num_tokens,
            probe_nll=math.nan, rollout_s=t_rollout - t_start, teacher_s=t_teacher - t_rollout,
            update_s=t_update - t_teacher, probe_s=0.0, total_s=t_update - t_start,
        )  # fmt: skip
        return stats, beside

    def _step_stats(
        self, alpha: Exposure, batch: Batch, out: LossOutput, share: float, grounded: float, **fields: Any
    ) -> StepStats:
        """The update's statistics (over the ranks under torchrun); `fields`: the rest of `StepStats`."""
        per_token = out.per_token.float()
        verdicts = [self.task.verify(p, t) for p, t in zip(batch.problems, batch.texts)]
        alphas = [self.alpha_of(alpha, p) for p in batch.problems]
        band_accuracy = self._band_accuracy(alpha, batch.problems, verdicts)
        # the batch statistics over ranks under torchrun: token means pooled (weighted by each rank's
        # tokens), per-problem means averaged (equal batches), quantiles the mean of the ranks'; the
        # grounded score is a mean over the rank's answer tokens, pooled so too (a plain mean of the
        # ranks' means weighed a rank of short answers as one of long ones)
        if self.dist.active:
            answer_tokens = sum(len(self.builder.encode(p.final)) for p in batch.problems)
            grounded *= self.dist.token_share(answer_tokens)[0]
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
        return StepStats(
            alpha=mean_alpha if isinstance(alpha, Mapping) else float(alpha),
            loss=loss,
            mismatch_top1=mismatch,
            divergence_mean=div_mean,
            divergence_p90=div_p90,
            divergence_p99=div_p99,
            confidence=confidence,
            sampled_logprob=logprob,
            grounded=grounded,
            rollout_accuracy=accuracy,
            band_accuracy=band_accuracy,
            **fields,
        )

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

    def check_exposure(self, alpha: Exposure) -> None:
        """ValueError unless `alpha` is a number in [0, 1], or a mapping that gives every band of the
        task (`action_bands`) one: it was checked only where a teacher prompt used it, after the
        rollout had moved the engine's streams, and never for a band no row drew or where every row
        took `exposure.solved_alpha` (a NaN then reached the statistics a controller reads)."""
        values = alpha.values() if isinstance(alpha, Mapping) else [alpha]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"alpha must be a number in [0, 1], got {value!r}")
        if isinstance(alpha, Mapping):
            missing = [band for band in action_bands(self.task) if band not in alpha]
            if missing:
                raise ValueError(f"no alpha for band(s) {missing}: the per-band exposure has {sorted(alpha)}")

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
        self.check_exposure(alpha)
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
        elif mode == "other":  # each problem gets the next other problem's reference
            refs = other_references(problems)
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
            own_copies(self.optimizer, state["optimizer"])
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
        # under torchrun: own problems and samples per rank; eval_gen shared (`measures.rank_eval_generator`)
        if self.dist.active:
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
        returns the whole evaluation (`atesd.measures.evaluate_bands`).
        """
        with self._sampling():
            return measures.evaluate_bands(
                self, k, self.cfg.eval.temperature if temperature is None else temperature, teacher_alpha
            )

    def mismatch(self, alpha: float, problems: list[Problem], generator: torch.Generator) -> dict[str, float]:
        """Student-teacher mismatch at alpha on sampled student rollouts of `problems`: mean per-token
        KL(student || teacher) and top-1 disagreement (`atesd.measures.mismatch`). Changes no weights."""
        return measures.mismatch(self, alpha, problems, generator)
