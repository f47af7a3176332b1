import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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


def test_an_alpha_that_rounds_to_k_over_m_reveals_k():
    """Env actions are float32: float32(5/6) is 0.833333313, float32(1/9) 0.111111112 as doubles."""
    for m in range(1, 65):
        for k in range(m + 1):
            for alpha in (np.float32(k) / np.float32(m), float(np.float32(k / m)), k / m, k * (1 / m)):
                assert num_revealed(alpha, m) == k, (k, m, alpha)
            if k:  # 1e-6 below k/m is beyond float noise: the floor
                for below in (np.float32(k / m) - np.float32(1e-6), k / m - 1e-6):
                    assert num_revealed(below, m) == k - 1, (k, m, below)
    assert num_revealed(float(np.nextafter(np.float32(0.85), np.float32(0))), 100) == 84  # not float32(0.85)
    assert num_revealed(0.6999999, 10) == 6  # a double's alpha as it is


def byte_level_tokenizer():
    """Byte-level BPE with no merges (as GPT-2's or Qwen's without their merges): a character of
    several UTF-8 bytes is several tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_token_mode_never_cuts_a_character_in_half():
    b = PromptBuilder(byte_level_tokenizer(), SYNTHETIC_FORMAT, ExposureConfig(unit="token"))
    ref = Problem("Q", ("x é ∑!",), "0", "A0", "B1")  # 1 + 1 + 2 + 1 + 3 + 1 = 9 byte tokens
    whole = ["", "x", "x ", "x ", "x é", "x é ", "x é ", "x é ", "x é ∑", "x é ∑!"]
    assert [b.reveal(ref, k / 9) for k in range(10)] == whole
    own = Problem("Q", ("a \ufffd b",), "0", "A0", "B1")  # the reference's own U+FFFD is shown
    assert all("a \ufffd b".startswith(b.reveal(own, k / 7)) for k in range(8))
    assert b.reveal(own, 5 / 7) == "a \ufffd" and b.reveal(own, 1.0) == "a \ufffd b"
