"""Evaluation metrics over sampled completions: Average@k, unbiased pass@k, majority vote, format rate.

Pure functions of grading outcomes (`Verdict`s, counts, extracted answers): they know nothing of
models, samplers or tasks. `recipes/eval.py` samples and grades; this module only does the maths.
Notation: a problem has n samples of which c are correct; k is the pass@k budget (k <= n).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from atesd.tasks.base import Verdict


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", eq. 1): the probability that at least one of k samples drawn without replacement from the
    n generated ones is correct,

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),

    the product form avoiding the huge binomials. It is 1 when n - c < k (every k-subset holds a
    correct sample) and 0 when c = 0.

    Args:
        n: samples generated for the problem (>= 1).
        c: how many of them are correct, 0 <= c <= n.
        k: the budget, 1 <= k <= n.

    Returns:
        pass@k in [0, 1].

    Raises:
        ValueError: counts out of range.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def average_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Average@k: the mean accuracy over each problem's samples, then the mean over problems.

    With k samples for every problem this is the overall share of correct samples (the paper's
    Average@12); with unequal counts every problem still weighs the same.

    Args:
        correct: per problem, the correctness of each of its samples (each non-empty).

    Returns:
        Average@k in [0, 1].
    """
    if not correct or any(len(row) == 0 for row in correct):
        raise ValueError("average_at_k needs at least one problem, each with at least one sample")
    return float(np.mean([np.mean(row) for row in correct]))


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over one problem's extracted answers.

    Attributes:
        answer: the winning answer, None when no sample had an extractable answer.
        count: how many samples gave it.
        correct: whether it is the right answer (the vote counts as wrong without an answer).
    """

    answer: str | None
    count: int
    correct: bool


def majority_vote(
    answers: Sequence[str | None],
    answer_correct: Sequence[bool],
    key: Callable[[str], str] = str.strip,
) -> Vote:
    """maj@n of one problem: the most frequent extracted answer among its n samples.

    Answers are equal when their `key`s are (surrounding whitespace stripped by default; a math task
    passes its normaliser) *and* they grade alike: a normal form can join answers the grader tells
    apart (`10` and `10\\%` against 0.1, `x=3` and `y=3` against x=3), and those are different
    answers, so the vote's correctness never depends on which of them came first. Samples without an
    answer (None) do not vote. A tie goes to the answer that appeared first in sample order, so the
    vote is deterministic given the samples.

    Args:
        answers: the extracted answer of each sample (None: none found).
        answer_correct: whether each sample's answer is right, aligned with `answers`.
        key: the canonical form answers are compared by.

    Returns:
        The `Vote` (its answer is the winning key).
    """
    if len(answers) != len(answer_correct):
        raise ValueError(f"{len(answers)} answers but {len(answer_correct)} correctness flags")
    counts: dict[tuple[str, bool], int] = {}  # insertion-ordered: first appearance wins ties
    for answer, correct in zip(answers, answer_correct):
        if answer is not None:
            group = (key(answer), bool(correct))
            counts[group] = counts.get(group, 0) + 1
    if not counts:
        return Vote(None, 0, False)
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal maxima
    return Vote(winner[0], counts[winner], winner[1])


def has_answer(verdict: Verdict) -> bool:
    """Whether a completion was well-formed enough to grade: a valid path or an extracted answer."""
    return verdict.path_valid or verdict.predicted is not None


def format_rate(verdicts: Iterable[Verdict]) -> float:
    """The share of samples with an extractable answer (`has_answer`), NaN for no samples."""
    flags = [has_answer(v) for v in verdicts]
    return float(np.mean(flags)) if flags else float("nan")


def summarize(
    verdicts: Sequence[Sequence[Verdict]],
    pass_ks: Sequence[int],
    key: Callable[[str], str] = str.strip,
) -> dict[str, object]:
    """Every metric of one evaluation set from its graded samples.

    Args:
        verdicts: per problem, the verdict of each of its samples (each non-empty).
        pass_ks: the pass@k budgets wanted; those above the smallest per-problem n are left out.
        key: the canonical answer form of the majority vote (see `majority_vote`).

    Returns:
        {"problems", "n" (smallest samples per problem), "avg_at_n", "pass_at" ({k: mean pass@k}),
        "maj_at_n" (share of problems whose majority answer is right), "answer_avg_at_n" (Average@n of
        the answer alone, the scale maj@n is on where `correct` asks for more), "format_rate" (over all
        samples)}.
    """
    if not verdicts or any(len(row) == 0 for row in verdicts):
        raise ValueError("summarize needs at least one problem, each with at least one sample")
    n = min(len(row) for row in verdicts)
    counts = [(len(row), sum(v.correct for v in row)) for row in verdicts]
    votes = [
        majority_vote([v.predicted for v in row], [v.answer_correct for v in row], key) for row in verdicts
    ]
    return {
        "problems": len(verdicts),
        "n": n,
        "avg_at_n": average_at_k([[v.correct for v in row] for row in verdicts]),
        "pass_at": {
            k: float(np.mean([pass_at_k(m, c, k) for m, c in counts])) for k in sorted(set(pass_ks)) if k <= n
        },
        "maj_at_n": float(np.mean([vote.correct for vote in votes])),
        "answer_avg_at_n": average_at_k([[v.answer_correct for v in row] for row in verdicts]),
        "format_rate": format_rate(v for row in verdicts for v in row),
    }
