"""The distillation step a user would build from TRL's pieces, for `bench_speed.py --only step-vs-trl`.

One step: sample problems, HF `generate` the student's rollouts (T = 1, `top_k=0, top_p=1.0`), one
teacher forward over teacher prompt + rollout, one student forward over student prompt + rollout,
`trl`'s `GKDTrainer.generalized_jsd_loss` on the completion positions (labels -100 elsewhere) at the
beta that equals the engine's divergence, gradient clipping and AdamW. Prompts are rendered by the
same `PromptBuilder` as the engine's and the teacher is the same frozen copy of the starting weights,
so both sides compute the same thing from the same inputs; `check_same_loss` shows it on one batch.

`trl` is the optional extra `.[bench]` (pinned so that installing it leaves torch alone).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import numpy as np
import torch

from atesd.engine import Batch, DistillEngine
from atesd.rollout.hf import left_pad

INSTALL = 'pip install -e ".[bench]"  (trl, pinned; leaves your torch alone)'


def generalized_jsd_loss():
    """TRL's loss function, or a one-line error naming the extra."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError as e:
        raise SystemExit(f"step-vs-trl needs trl: {INSTALL} ({e})") from None
    return GKDTrainer.generalized_jsd_loss


def trl_beta(engine: DistillEngine) -> float:
    """The generalized-JSD beta equal to the engine's divergence (TRL: 0 = forward KL, 1 = reverse KL)."""
    loss = engine.cfg.loss
    if loss.clip_tau is not None or loss.top_k or loss.kind == "sampled_token":
        raise SystemExit(f"TRL's generalized JSD has no equivalent of this loss config: {loss}")
    return {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": loss.beta}[loss.kind]


class TRLPiecesStep:
    """Its own student (a copy of the engine's starting weights), the engine's frozen teacher weights,
    its own AdamW and problem stream: the same work as `DistillEngine.step`'s rollout, scoring and
    update, built the way TRL's GKD trainer builds it."""

    def __init__(self, engine: DistillEngine, seed: int = 0) -> None:
        self.jsd = generalized_jsd_loss()
        self.beta = trl_beta(engine)
        self.cfg, self.task, self.builder, self.tokenizer = (
            engine.cfg,
            engine.task,
            engine.builder,
            engine.tokenizer,
        )
        self.student = copy.deepcopy(engine.student).train()
        self.teacher = copy.deepcopy(engine.teacher.model).eval().requires_grad_(False)
        self.eos = sorted(engine.sampler.eos_token_ids)
        self.pad = self.tokenizer.pad_token_id
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        # the engine's own problem stream, from where it stands: both sides see the same problems
        self.rng = np.random.default_rng(seed)
        self.rng.bit_generator.state = copy.deepcopy(engine.rng.bit_generator.state)
        self.tokens = 0  # rollout tokens sampled so far (the work a step's cost scales with)
        self.phases: list[dict[str, float]] = []  # seconds per step: rollout, teacher, update

    def rollout(self, prompts: list[list[int]]) -> list[list[int]]:
        s = self.cfg.sampling
        ids, mask = left_pad(prompts, self.pad)
        self.student.eval()
        with torch.no_grad():
            out = self.student.generate(
                input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=s.temperature,
                top_k=0, top_p=1.0, max_new_tokens=s.max_new_tokens, eos_token_id=self.eos,
                pad_token_id=self.pad,
            )  # fmt: skip
        self.student.train()
        rows = out[:, ids.shape[1] :].tolist()
        return [r[: next((i + 1 for i, t in enumerate(r) if t in self.eos), len(r))] for r in rows]

    def _completion_logits(self, model, prompts, completions) -> torch.Tensor:
        """(B, L, V) logits predicting each row's completion, right-aligned (L = longest completion)."""
        ids, mask = left_pad([p + c for p, c in zip(prompts, completions)], self.pad)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        width = max(map(len, completions))
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
        return logits[:, -width - 1 : -1]

    def loss(self, prompts, teacher_prompts, completions) -> torch.Tensor:
        return self._student_loss(prompts, completions, self._teacher_logits(teacher_prompts, completions))

    def _teacher_logits(self, teacher_prompts, completions) -> torch.Tensor:
        with torch.no_grad():
            return self._completion_logits(self.teacher, teacher_prompts, completions)

    def _student_loss(self, prompts, completions, teacher_logits) -> torch.Tensor:
        student_logits = self._completion_logits(self.student, prompts, completions)
        width = student_logits.shape[1]
        labels = torch.full((len(completions), width), -100, dtype=torch.long)
        for i, c in enumerate(completions):
            labels[i, width - len(c) :] = torch.tensor(c)
        return self.jsd(student_logits, teacher_logits, labels, beta=self.beta)

    def step(self, alpha: float) -> float:
        """One update; its phases' seconds go to `phases` (the same cuts as the engine's StepStats:
        prompts and sampling; teacher prompts and the teacher's forward; the rest)."""
        t0 = time.perf_counter()
        problems = self.task.sample(self.rng, self.cfg.batch_size)
        prompts = [self.builder.encode(self.builder.student_prompt(p)) for p in problems]
        completions = self.rollout(prompts)
        self.tokens += sum(map(len, completions))
        t_rollout = time.perf_counter()
        teacher_prompts = [self.builder.encode(self.builder.teacher_prompt(p, alpha, p)) for p in problems]
        teacher_logits = self._teacher_logits(teacher_prompts, completions)
        t_teacher = time.perf_counter()
        loss = self._student_loss(prompts, completions, teacher_logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        value = float(loss.detach())
        t_update = time.perf_counter()
        self.phases.append(
            {
                "rollout_s": t_rollout - t0,
                "teacher_s": t_teacher - t_rollout,
                "update_s": t_update - t_teacher,
            }
        )
        return value


def check_same_loss(engine: DistillEngine, trl_step: TRLPiecesStep, alpha: float) -> tuple[float, float]:
    """Both losses on one batch of the engine's rollouts, before either side has trained."""
    problems = engine.task.sample(np.random.default_rng(12345), engine.cfg.batch_size)
    batch: Batch = engine.rollout(problems, torch.Generator().manual_seed(12345))
    ours = float(engine.batch_loss(batch, alpha)[0].loss.detach())
    teacher_prompts = engine.teacher_prompts(problems, alpha, batch.texts)
    theirs = float(trl_step.loss(batch.prompts, teacher_prompts, batch.completions).detach())
    return ours, theirs


def _twin_engines(engine: DistillEngine) -> dict[str, DistillEngine]:
    """Each of our kinds' engines: `window` is `engine` itself; `step` and `equal` (no probe NLL, no
    grounded score) are new engines on copies of its starting weights and on its problem stream."""
    start = copy.deepcopy(engine.student)
    rng_state = copy.deepcopy(engine.rng.bit_generator.state)

    def twin(**changes) -> DistillEngine:
        cfg = dataclasses.replace(engine.cfg, **changes)
        other = DistillEngine(copy.deepcopy(start), engine.tokenizer, engine.task, cfg)
        other.rng.bit_generator.state = copy.deepcopy(rng_state)  # the window's problem stream
        return other

    return {"window": engine, "step": twin(), "equal": twin(probe_every=0, grounded=False)}


def _timed_rounds(
    engines: dict[str, DistillEngine], trl_step: TRLPiecesStep, alpha: float, steps: int, hold: int
) -> tuple[dict[str, list[float]], dict[str, int], list, list]:
    """An untimed warm-up of every kind, then rounds of `hold` updates of each kind in turn until
    `steps` updates of each (2 rounds at least): each kind's seconds per update in each round, the
    rollout tokens each of ours sampled in the rounds, and the step stats of `window` and `equal`."""
    tokens = {"window": 0, "step": 0, "equal": 0}

    def ours(kind: str) -> list:
        e = engines[kind]
        done = [e.step(alpha) for _ in range(hold)] if kind == "step" else e.run_window(alpha, hold).steps
        tokens[kind] += sum(r.num_tokens for r in done)
        return done

    def timed(run) -> float:
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) / hold

    def trl_round() -> None:
        for _ in range(hold):
            trl_step.step(alpha)

    for kind in engines:  # warm-up: untimed, every kind
        ours(kind)
    trl_step.step(alpha)
    tokens = dict.fromkeys(tokens, 0)
    trl_step.tokens, trl_step.phases = 0, []
    times: dict[str, list[float]] = {"window": [], "trl": [], "step": [], "equal": []}
    phases, equal_phases = [], []

    def equal_round() -> None:
        equal_phases.extend(ours("equal"))

    for _ in range(max(2, -(-steps // hold))):
        t0 = time.perf_counter()
        phases += ours("window")
        times["window"].append((time.perf_counter() - t0) / hold)
        times["trl"].append(timed(trl_round))
        times["step"].append(timed(lambda: ours("step")))
        times["equal"].append(timed(equal_round))
    return times, tokens, phases, equal_phases


def step_vs_trl(engine: DistillEngine, alpha: float, steps: int, hold: int = 5) -> dict:
    """Interleaved timings per student update, in rounds until `steps` updates of each kind, each kind
    on its own copy of the starting weights and the same problem stream:

    - `window`: ours as the env runs it, a hold window (`run_window(alpha, hold)`: the probe after
      each update but the last measured beside the next rollout);
    - `trl`: `hold` TRL-pieces steps;
    - `step`: `hold` bare `DistillEngine.step` calls (every probe in line);
    - `equal`: ours computing what TRL's pieces compute, no probe NLL and no grounded score
      (`probe_every=0, grounded=False`), in a window of `hold`.

    Each round gives paired ratios (TRL's seconds per update over a kind's), reported as their mean
    with a 95% t interval over rounds, beside the means of the seconds; the rollout tokens each side
    sampled say whether the two students still write rollouts of one length."""
    from atesd.significance import mean_ci

    engines = _twin_engines(engine)
    trl_step = TRLPiecesStep(engine, seed=engine.cfg.seed)
    ours_loss, trl_loss = check_same_loss(engine, trl_step, alpha)
    times, tokens, phases, equal_phases = _timed_rounds(engines, trl_step, alpha, steps, hold)
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    ratios = {k: mean_ci(np.array(times["trl"]) / np.array(times[k])) for k in ("window", "step", "equal")}
    cuts = ("rollout_s", "teacher_s", "update_s")
    split = {k: float(np.mean([getattr(s, k) for s in phases])) for k in (*cuts, "probe_s")}
    equal_split = {k: float(np.mean([getattr(s, k) for s in equal_phases])) for k in cuts}
    trl_split = {k: float(np.mean([p[k] for p in trl_step.phases])) for k in cuts}
    updates = len(times["trl"]) * hold
    return {
        "ours_s": mean["window"], "trl_s": mean["trl"], "ratio": mean["trl"] / mean["window"],
        "ratio_ci": ratios["window"], "steps": updates, "hold": hold, "rounds": len(times["trl"]),
        "step_s": mean["step"], "step_ratio": mean["trl"] / mean["step"], "step_ratio_ci": ratios["step"],
        "equal_s": mean["equal"], "equal_ratio": mean["trl"] / mean["equal"],
        "equal_ratio_ci": ratios["equal"],
        "overlapped": engine.overlaps_probe(),
        "tokens_per_update": {k: v / updates for k, v in tokens.items()} | {"trl": trl_step.tokens / updates},
        "ours_loss": ours_loss, "trl_loss": trl_loss, "same_loss": abs(ours_loss - trl_loss) <= 1e-5,
        "beta": trl_step.beta, "ours_phases": split, "equal_phases": equal_split, "trl_phases": trl_split,
        "lean_decode": getattr(engine.sampler, "lean", None) is not None,
    }  # fmt: skip
