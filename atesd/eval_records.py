"""Sampling and recording an evaluation: completions in batches, and the per-problem JSONL records.

`generate` runs any `RolloutBackend` over prompts in order with one generator; `problem_record`
turns one problem's graded samples into its problems.jsonl line (pass@k, majority vote, each
sample). Knows nothing of configs or recipes; the metrics maths is `atesd.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from atesd.evaluation import has_answer, majority_vote, pass_at_k
from atesd.rollout import RolloutBackend, SamplingParams
from atesd.tasks.base import Problem, Verdict


@dataclass(frozen=True)
class Rollout:
    """One decoded completion."""

    text: str
    num_tokens: int
    finished: bool


def generate(
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    params: SamplingParams,
    batch_size: int,
    generator: torch.Generator | None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Rollout]:
    """Completions of `prompts` in order, `batch_size` per sampler call, one generator throughout."""
    out: list[Rollout] = []
    for start in range(0, len(prompts), batch_size):
        batch = backend.generate(prompts[start : start + batch_size], params, generator)
        texts = tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        out += [Rollout(t, len(c), f) for t, c, f in zip(texts, batch.completion_ids, batch.finished)]
        if on_batch is not None:
            on_batch(len(out))
    return out


def sample_record(rollout: Rollout, verdict: Verdict) -> dict[str, Any]:
    """One sample's entry in problems.jsonl: its text, what was extracted and how it graded (with the
    grading method where the task gives one: math-verify, the string compare, a timeout, no answer)."""
    method = {} if verdict.method is None else {"method": verdict.method}
    return {
        "text": rollout.text,
        "predicted": verdict.predicted,
        "correct": verdict.correct,
        "answer_correct": verdict.answer_correct,
        "path_valid": verdict.path_valid,
        "has_answer": has_answer(verdict),
        **method,
        "num_tokens": rollout.num_tokens,
        "finished": rollout.finished,
    }


def problem_record(
    name: str,
    index: int,
    problem: Problem,
    samples: list[tuple[Rollout, Verdict]],
    ks: list[int],
    key: Callable[[str], str],
) -> dict[str, Any]:
    """The problems.jsonl line of one problem."""
    verdicts = [v for _, v in samples]
    n, c = len(verdicts), sum(v.correct for v in verdicts)
    vote = majority_vote([v.predicted for v in verdicts], [v.answer_correct for v in verdicts], key)
    return {
        "set": name,
        "index": index,
        "id": str(problem.meta.get("id", f"{name}/{index}")),
        "band": problem.band,
        # where a math row came from (file and 1-based line, or dataset and row): what joins back to it
        **{key: problem.meta[key] for key in ("source", "line", "row") if key in problem.meta},
        "question": problem.question,
        "gold": problem.answer,
        "n": n,
        "c": c,
        "accuracy": c / n,
        "pass_at": {str(k): pass_at_k(n, c, k) for k in ks},
        "majority": {"answer": vote.answer, "count": vote.count, "correct": vote.correct},
        "samples": [sample_record(r, v) for r, v in samples],
    }
