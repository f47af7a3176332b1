"""The warm start's supervised fine-tuning (SFT) of the tiny model, and its config: first pure copy
examples (the only way to produce a copy example's random digits is to read them from the reference),
then a mix of student-format, teacher-format (a random number of revealed steps) and copy examples, so
that the student has partial competence and the teacher can read full and partial references. Knows
nothing of the cache or the shipped weights (atesd.warmstart) nor of distillation; progress is reported
through a callback so that recipes can draw it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.exposure import PromptBuilder
from atesd.tasks.synthetic import ChainBagTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start of the embedded model."""

    steps: int = field(default=800, metadata={"help": "total SFT steps (>= copy_steps)"})
    copy_steps: int = field(default=150, metadata={"help": "initial steps of pure copy examples (>= 0)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step (>= 1)"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (> 0)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps (>= 0)"})
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "cosine decay floor, as a fraction of lr, in [0, 1]"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (>= 0)"})
    student_frac: float = field(
        default=0.35, metadata={"help": "share of student-format examples after copy_steps"}
    )
    teacher_frac: float = field(
        default=0.5, metadata={"help": "share of teacher-format examples (rest: copy)"}
    )
    student_max_chain: int = field(
        default=3,
        metadata={
            "help": "chains longer than this are rare in student-format examples and never computed "
            "in teacher-format ones (the teacher may only copy them): the model's competence limit"
        },
    )
    long_chain_keep: float = field(
        default=0.15,
        metadata={
            "help": "probability that a student-format example with a chain longer than "
            "student_max_chain is kept (else it becomes a teacher-format example), in [0, 1]"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the example stream"})

    def __post_init__(self) -> None:
        if self.steps < 1 or not 0 <= self.copy_steps <= self.steps:
            raise ValueError(
                f"need steps >= 1 and 0 <= copy_steps <= steps, got {self.steps}, {self.copy_steps}"
            )
        for name, ok, rule in (
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("seed", self.seed >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.long_chain_keep <= 1:
            raise ValueError(f"long_chain_keep must be in [0, 1], got {self.long_chain_keep}")
        if self.student_frac < 0 or self.teacher_frac < 0 or self.student_frac + self.teacher_frac > 1:
            raise ValueError("student_frac and teacher_frac must be >= 0 and sum to at most 1")


def sft_examples(
    task: ChainBagTask,
    builder: PromptBuilder,
    rng: np.random.Generator,
    n: int,
    copy_only: bool,
    cfg: WarmStartConfig,
) -> list[tuple[str, str]]:
    """(prompt, target) pairs in three formats.

    student: the question alone; teacher: k ~ U{0..m} revealed steps; copy: a reference of random
    digits, fully shown. An example that asks the model to *compute* a chain longer than
    `student_max_chain` (student format, or teacher format with k < L) is kept only with probability
    `long_chain_keep` (else it becomes a teacher example with the whole chain shown), in both formats
    alike, so the teacher at alpha = 0 computes about as well as the student (alpha = 0 is a no-op).
    """
    out = []
    for problem in task.sample(rng, n):
        chain, m = len(problem.meta["ops"]), len(problem.steps)
        # computing a long chain (in either format) is rare: the model's competence limit
        rare_ok = chain <= cfg.student_max_chain or rng.random() < cfg.long_chain_keep
        u = 1.0 if copy_only else rng.random()
        if u < cfg.student_frac and rare_ok:
            out.append((builder.student_prompt(problem), problem.solution))
            continue
        if u >= cfg.student_frac + cfg.teacher_frac:
            problem, k = task.copy_variant(problem, rng), m
        else:
            k = int(rng.integers(0 if rare_ok else chain, m + 1))
        out.append((builder.teacher_prompt(problem, k / m), problem.solution))
    return out


def collate_sft(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (-100 on prompt and padding)."""
    rows, labels = [], []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def lr_at(step: int, cfg: WarmStartConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * frac)))


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: ChainBagTask,
    cfg: WarmStartConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Run the SFT schedule in place; returns the loss of every step."""
    builder = PromptBuilder(tokenizer, task.prompt_format)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = collate_sft(
            tokenizer, sft_examples(task, builder, rng, cfg.batch_size, step < cfg.copy_steps, cfg)
        )
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, cfg.steps, losses[-1])
        if (step + 1) % 100 == 0:
            log.info("warm start step %d/%d loss %.4f", step + 1, cfg.steps, np.mean(losses[-100:]))
    model.zero_grad(set_to_none=True)  # hand back a model like the cached one: no stale gradients
    model.eval()
    return losses
