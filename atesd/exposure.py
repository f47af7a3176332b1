"""Teacher exposure: how much of the reference the teacher sees, and the prompts of both roles.

reveal(alpha) = the first floor(alpha * m) of the reference's m segments (steps, or tokens in the
token-level mode), and the final answer is always shown. Teacher prompt = question + revealed
reference + answer + a fixed transition instruction; student prompt = question only. Both are
rendered with the tokenizer's own chat template. This module knows nothing of models or losses.
"""

from __future__ import annotations

import math
import numbers
import typing
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
        hints = typing.get_type_hints(type(self))
        for name in ("unit", "reference"):  # a misspelt one took another branch (the token cut, path_matched)
            allowed = typing.get_args(hints[name])
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ExposureConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        a = self.solved_alpha  # a number (numpy's float32 too, as num_revealed takes), not a bool
        number = isinstance(a, numbers.Real) and not isinstance(a, bool)
        if a is not None and not (number and 0.0 <= a <= 1.0):
            raise ValueError(f"ExposureConfig.solved_alpha must be None or in [0, 1], got {a!r}")


def num_revealed(alpha: float, num_segments: int) -> int:
    """floor(alpha * m), robust to float noise (alpha=0.7, m=10 reveals 7), a float32 alpha too.

    Env actions are float32, and np.float32(0.7) is 0.699999988 as a double: an alpha that is the
    float32 nearest k/m reveals k of m segments (0.7 reveals 7 of 10 steps, float32(5/6) 5 of 6, not
    one fewer); any other alpha is taken as it is (alpha * m within 1e-9 of a whole number is it)."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scaled = alpha * num_segments
    nearest = round(scaled)
    if abs(scaled - nearest) < 1e-9 or float(np.float32(nearest / num_segments)) == alpha:
        return nearest
    return math.floor(scaled)


class PromptBuilder:
    """Renders student and teacher prompts for one tokenizer and task format."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, cfg: ExposureConfig | None = None
    ):
        self.tokenizer, self.fmt, self.cfg = tokenizer, fmt, cfg or ExposureConfig()

    def reveal(self, reference: Problem, alpha: float) -> str:
        """The revealed part of the reference's reasoning (the answer is added separately). In token
        units the cut steps back to a whole character: a byte-level tokenizer splits a multi-byte
        character over tokens, and half of one decodes to U+FFFD."""
        if self.cfg.unit == "step":
            return "".join(reference.steps[: num_revealed(alpha, len(reference.steps))])
        text = "".join(reference.steps)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = num_revealed(alpha, len(ids))
        revealed = self.tokenizer.decode(ids[:n])
        while n and revealed.endswith("\ufffd") and not text.startswith(revealed):
            n -= 1
            revealed = self.tokenizer.decode(ids[:n])
        return revealed

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
