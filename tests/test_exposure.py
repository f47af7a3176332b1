import pytest

from atesd.exposure import ExposureConfig, PromptBuilder, num_revealed
from atesd.tasks.base import Problem
from atesd.tasks.synthetic import SYNTHETIC_FORMAT

PROBLEM = Problem(
    question="Q6-0-8+6|475",
    steps=("6-0=6;", "6-8=8;", "8+6=4;", "4+7=1;", "1+5=6;", "6+4=0;"),
    answer="0",
    final="A0",
    band="M33",
)


def test_exact_teacher_prompts(tokenizer):
    b = PromptBuilder(tokenizer, SYNTHETIC_FORMAT)
    assert b.student_prompt(PROBLEM) == "<|user|>Q6-0-8+6|475<|assistant|>"
    assert b.teacher_prompt(PROBLEM, 0.0) == "<|user|>Q6-0-8+6|475<|ref|><|ans|>0<|go|><|assistant|>"
    assert (
        b.teacher_prompt(PROBLEM, 0.5)
        == "<|user|>Q6-0-8+6|475<|ref|>6-0=6;6-8=8;8+6=4;<|ans|>0<|go|><|assistant|>"
    )
    assert (
        b.teacher_prompt(PROBLEM, 1.0)
        == "<|user|>Q6-0-8+6|475<|ref|>6-0=6;6-8=8;8+6=4;4+7=1;1+5=6;6+4=0;<|ans|>0<|go|><|assistant|>"
    )


def test_floor_and_bounds():
    assert [num_revealed(a, 6) for a in (0, 0.16, 0.17, 0.5, 0.99, 1)] == [0, 0, 1, 3, 5, 6]
    assert num_revealed(0.7, 10) == 7  # 0.7 * 10 = 6.999... in floats
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            num_revealed(bad, 4)


def test_token_mode_reveals_tokens(tokenizer):
    b = PromptBuilder(tokenizer, SYNTHETIC_FORMAT, ExposureConfig(unit="token"))
    # 36 reference characters = 36 tokens of the character-level tokenizer; 0.25 reveals 9
    assert b.reveal(PROBLEM, 0.25) == "6-0=6;6-8"
    assert b.reveal(PROBLEM, 1.0) == "".join(PROBLEM.steps)
    assert b.reveal(PROBLEM, 0.0) == ""


def test_other_reference_shows_another_problems_solution(tokenizer):
    other = Problem("Q1|2", ("1+2=3;",), "3", "A3", "B1")
    b = PromptBuilder(tokenizer, SYNTHETIC_FORMAT)
    assert b.teacher_content(PROBLEM, 1.0, other) == "Q6-0-8+6|475<|ref|>1+2=3;<|ans|>3<|go|>"


def test_prompts_tokenize_to_single_special_tokens(tokenizer):
    b = PromptBuilder(tokenizer, SYNTHETIC_FORMAT)
    ids = b.encode(b.teacher_prompt(PROBLEM, 0.0))
    assert len(ids) == len("Q6-0-8+6|475") + len("0") + 5  # user, ref, ans, go, assistant
    assert tokenizer.unk_token_id not in ids
