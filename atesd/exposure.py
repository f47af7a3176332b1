"""Teacher exposure: how much of the reference the teacher sees, and the prompts of both roles.

reveal(alpha) = the first floor(alpha * m) of the reference's m segments (steps, or tokens in the
token-level mode), and the final answer is always shown. Teacher prompt = question + revealed
reference + answer + a fixed transition instruction; student prompt = question only. Both are
rendered with the tokenizer's own chat template. This module knows nothing of models or losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from atesd.tasks.base import Problem, PromptFormat

MATH_FORMAT = PromptFormat(
    reference_open="\n\nA reference solution, shown to you for guidance:\n",
    answer_open="\n\nThe reference's final answer is: ",
    transition="\n\nNow write your own step-by-step solution to the problem above.",
)


@dataclass(frozen=True)
class ExposureConfig:
    """What the teacher sees."""

    unit: Literal["step", "token"] = field(
        default="step", metadata={"help": "reveal whole reference steps, or reference tokens"}
    )
    reference: Literal["own", "other", "path_matched"] = field(
        default="own",
        metadata={
            "help": "own: the problem's reference; other: another problem's reference (control); "
            "path_matched: the reference re-ordered to follow the student's own path (control, "
            "tasks with path_matched only)"
        },
    )
    solved_alpha: float | None = field(
        default=None,
        metadata={
            "help": "per-outcome exposure (GHPO-style): rollouts the verifier accepts are scored at this "
            "alpha and the others at the controller's; None (default): the controller's alpha for all"
        },
    )
    student_thinking: bool = field(default=False, metadata={"help": "enable_thinking for the student prompt"})
    teacher_thinking: bool = field(default=True, metadata={"help": "enable_thinking for the teacher prompt"})

    def __post_init__(self) -> None:
        a = self.solved_alpha
        if a is not None and not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
            raise ValueError(f"ExposureConfig.solved_alpha must be None or in [0, 1], got {a!r}")


def num_revealed(alpha: float, num_segments: int) -> int:
    """floor(alpha * m), robust to float noise (alpha=0.7, m=10 reveals 7), a float32 alpha too.

    Env actions are float32, and np.float32(0.7) is 0.699999988 as a double: an alpha that a float32
    holds exactly is read as the shortest decimal that float32 prints (0.7), so it reveals 7 of 10
    steps, not 6. An alpha of a double's precision is taken as it is."""
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    single = np.float32(alpha)
    if float(single) == alpha:
        alpha = float(str(single))
    return min(num_segments, math.floor(alpha * num_segments + 1e-9))


class PromptBuilder:
    """Renders student and teacher prompts for one tokenizer and task format."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, cfg: ExposureConfig | None = None
    ):
        self.tokenizer, self.fmt, self.cfg = tokenizer, fmt, cfg or ExposureConfig()

    def reveal(self, reference: Problem, alpha: float) -> str:
        """The revealed part of the reference's reasoning (the answer is added separately)."""
        if self.cfg.unit == "step":
            return "".join(reference.steps[: num_revealed(alpha, len(reference.steps))])
        ids = self.tokenizer("".join(reference.steps), add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids[: num_revealed(alpha, len(ids))])

    def teacher_content(self, problem: Problem, alpha: float, reference: Problem | None = None) -> str:
        """The teacher's user message; `reference` defaults to the problem itself."""
        ref = reference or problem
        fmt = self.fmt
        return (
            problem.question
            + fmt.reference_open
            + self.reveal(ref, alpha)
            + fmt.answer_open
            + ref.answer
            + fmt.transition
        )

    def student_prompt(self, problem: Problem) -> str:
        return self._render(problem.question, self.cfg.student_thinking)

    def teacher_prompt(self, problem: Problem, alpha: float, reference: Problem | None = None) -> str:
        return self._render(self.teacher_content(problem, alpha, reference), self.cfg.teacher_thinking)

    def _render(self, content: str, thinking: bool) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=thinking,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of an already rendered prompt (the template placed any special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
