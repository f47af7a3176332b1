"""What every task gives the engine: problems with step-segmented references, and a verifier.

A task owns its problem source, the text format of a solution and how a completion is graded.
It knows nothing of models, tokenizers or exposure (exposure.py decides what the teacher sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Problem:
    """One problem.

    Attributes:
        question: the problem text the student sees.
        steps: the reference reasoning split into segments (each keeps its own separator), so
            that "".join(steps) + final is the whole reference solution.
        answer: the gold final answer (as text).
        final: how the reference writes the final answer (e.g. "A7" or "\\boxed{7}").
        band: a difficulty label used to report accuracy per difficulty.
        meta: task-specific structure (e.g. the synthetic task's chain and bag).
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    final: str
    band: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def solution(self) -> str:
        return "".join(self.steps) + self.final


@dataclass(frozen=True)
class Verdict:
    """How a completion was graded: `correct` is the headline (task-defined), the rest diagnostics."""

    correct: bool
    answer_correct: bool
    path_valid: bool
    predicted: str | None
    method: str | None = None  # how it was decided, where the task says (math: `atesd.grading.Grade`)


@dataclass(frozen=True)
class PromptFormat:
    """The fixed text around the revealed reference in the teacher's prompt."""

    reference_open: str
    answer_open: str
    transition: str


class Task(Protocol):
    """A problem source plus its grader."""

    prompt_format: PromptFormat

    def sample(self, rng: np.random.Generator, n: int) -> list[Problem]:
        """Draw n training problems."""
        ...

    def eval_sets(self) -> dict[str, list[Problem]]:
        """Fixed held-out problems per difficulty band (the same on every call)."""
        ...

    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Grade a decoded completion (special tokens removed)."""
        ...

    def reasoning(self, completion: str) -> str:
        """The completion with its final answer removed."""
        ...

    def probe_set(self) -> list[Problem]:
        """Fixed held-out problems whose reference solutions the probe NLL scores."""
        ...

    def path_matched(self, problem: Problem, completion: str) -> Problem:
        """The problem with its reference re-ordered to follow the completion's own path (the
        path-matched control); tasks without a notion of path raise NotImplementedError."""
        ...


def action_bands(task: Task) -> tuple[str, ...]:
    """The bands a per-band exposure gives one alpha each: the task's `action_bands()` where it has
    one, else its evaluation bands, in their order."""
    own = getattr(task, "action_bands", None)
    return tuple(own()) if callable(own) else tuple(task.eval_sets())


def action_band(task: Task, problem: Problem) -> str:
    """The band whose alpha a training problem gets under the per-band exposure: the task's
    `action_band(problem)` where it has one (the synthetic task maps every training shape to its
    nearest evaluation band), else the problem's own band."""
    own = getattr(task, "action_band", None)
    return own(problem) if callable(own) else problem.band
