"""atesd.tasks.math and atesd.tasks.sources: the loaders (GSM8K, benchmarks, OPSD, field mapping),
segmentation, exact teacher prompts on real rows, bad-row handling, and the task's grading hooks."""

import dataclasses
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from atesd.exposure import MATH_FORMAT, PromptBuilder
from atesd.grading import grade
from atesd.tasks.base import action_band, action_bands
from atesd.tasks.math import (
    STUDENT_INSTRUCTION,
    MathDataConfig,
    MathTask,
    load_benchmark,
    load_problems,
    segment,
)
from atesd.tasks.sources import BENCHMARKS, resolve_source

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INSTR = "\n\nSolve the problem step by step, and write your final answer inside \\boxed{}."
NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
BETTY = (
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her "
    "parents. How much more money does Betty need to buy the wallet?"
)
REF_OPEN = "\n\nA reference solution, shown to you for guidance:\n"
ANS_OPEN = "\n\nThe reference's final answer is: "
TRANSITION = "\n\nNow write your own step-by-step solution to the problem above."


def data_file(name: str) -> Path:
    if not (DATA / name).is_file():
        pytest.skip(f"{name} is not in {DATA} (shared data absent)")
    return DATA / name


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def gsm8k_head():
    data_file("gsm8k_train.jsonl")
    return load_problems(MathDataConfig(source="gsm8k", data_dir=str(DATA), max_rows=3))[0]


def test_gsm8k_rows_segment_into_their_solution_lines(gsm8k_head):
    natalia, weng, betty = gsm8k_head
    assert INSTR == "\n\n" + STUDENT_INSTRUCTION
    assert natalia.question == NATALIA + INSTR
    assert natalia.steps == (
        "Natalia sold 48/2 = 24 clips in May.\n",
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n",
    )
    assert (natalia.answer, natalia.final, natalia.band) == ("72", "\\boxed{72}", "gsm8k")
    assert weng.steps[0] == "Weng earns 12/60 = $0.2 per minute.\n" and weng.answer == "10"
    assert len(betty.steps) == 3 and betty.answer == "5"
    assert betty.solution.endswith("= $5 more.\n\\boxed{5}")


def test_gsm8k_answers_lose_thousands_separators():
    problems, _ = load_problems(MathDataConfig(source=str(data_file("gsm8k_train.jsonl")), max_rows=400))
    answers = {p.answer for p in problems}
    assert all("," not in a for a in answers) and "1080" in answers  # '#### 1,080' in the file


def test_exact_teacher_content_at_alpha_0_half_1(gsm8k_head, tokenizer):
    builder = PromptBuilder(tokenizer, MATH_FORMAT)
    natalia, _, betty = gsm8k_head
    step1 = "Natalia sold 48/2 = 24 clips in May.\n"
    step2 = "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
    head = NATALIA + INSTR + REF_OPEN
    assert builder.teacher_content(natalia, 0.0) == head + ANS_OPEN + "72" + TRANSITION
    assert builder.teacher_content(natalia, 0.5) == head + step1 + ANS_OPEN + "72" + TRANSITION
    assert builder.teacher_content(natalia, 1.0) == head + step1 + step2 + ANS_OPEN + "72" + TRANSITION
    b1 = "In the beginning, Betty has only 100 / 2 = $50.\n"
    b2 = "Betty's grandparents gave her 15 * 2 = $30.\n"
    b3 = "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.\n"
    head = BETTY + INSTR + REF_OPEN
    assert builder.teacher_content(betty, 0.0) == head + ANS_OPEN + "5" + TRANSITION
    assert builder.teacher_content(betty, 0.5) == head + b1 + ANS_OPEN + "5" + TRANSITION
    assert builder.teacher_content(betty, 1.0) == head + b1 + b2 + b3 + ANS_OPEN + "5" + TRANSITION
    assert builder.student_prompt(betty).count(BETTY + INSTR) == 1


def test_aime_rows_load_with_empty_steps():
    data_file("aime24.jsonl")
    task = load_benchmark("aime24", DATA)
    ((band, problems),) = task.eval_sets().items()
    assert band == "aime24" and len(problems) == 30 and task.train == [] and task.probe_set() == []
    first = problems[0]
    assert first.steps == () and first.answer == "204" and first.final == "\\boxed{204}"
    assert first.question.startswith(
        "Every morning Aya goes for a $9$-kilometer-long walk"
    ) and first.question.endswith(INSTR)
    assert first.meta["line"] == 1
    assert task.verify(first, "... so the total is $\\boxed{204}$.").correct
    verdict = task.verify(first, "... so the total is $\\boxed{205}$.")
    assert not verdict.correct and verdict.path_valid and verdict.predicted == "205"
    assert not task.verify(first, "a long answer that never boxes anything, " * 3).path_valid
    with pytest.raises(ValueError, match="no training problems"):
        task.sample(np.random.default_rng(0), 1)
    by_path = load_benchmark(str(data_file("hmmt25.jsonl")))
    assert (
        list(by_path.eval_sets()) == ["hmmt25"]
        and by_path.eval_sets()["hmmt25"][2].answer == "\\frac{1}{576}"
    )
    assert set(BENCHMARKS) == {"aime24", "aime25", "hmmt25"}


def test_segment_keeps_separators():
    text = "First line.\nSecond one. Still two!\n\n  Third para\nlast"
    for unit, n in (("paragraph", 2), ("line", 4), ("sentence", 5)):
        steps = segment(text, unit)
        assert "".join(steps) == text and len(steps) == n and all(s.strip() for s in steps)
    assert segment("Only one\n\n", "paragraph") == ("Only one\n\n",)
    assert segment("", "line") == ()


def test_opsd_format_and_field_mapping(tmp_path):
    solution = "Add them.\n\nSo 2 + 3 = 5.\n\nThe answer is $\\boxed{5}$."
    opsd = write_jsonl(tmp_path / "opsd.jsonl", [{"problem": "What is 2 + 3?", "solution": solution}])
    (p,), skipped = load_problems(MathDataConfig(source=str(opsd), format="opsd"))
    assert skipped == 0
    assert p.steps == ("Add them.\n\n", "So 2 + 3 = 5.\n\n", "The answer is $") and p.final == "\\boxed{5}$."
    assert p.solution == solution and p.answer == "5" and p.band == "opsd"
    rows = [
        {"q": "What is 2 + 3?", "sol": "Add.\nGet 5.", "ans": 5},
        {"q": "Name 7.", "sol": "It is \\boxed{7}"},
    ]
    custom = write_jsonl(tmp_path / "custom.jsonl", rows)
    cfg = MathDataConfig(
        source=str(custom),
        format="fields",
        question_field="q",
        solution_field="sol",
        segment="line",
        band="mine",
    )
    (b,), skipped = load_problems(replace(cfg, skip_bad_rows=True))  # row 1 boxes nothing: no answer
    assert skipped == 1 and b.answer == "7" and b.steps == ("It is ",) and b.final == "\\boxed{7}"
    assert b.question == "Name 7." + INSTR and b.band == "mine"
    (a,), skipped = load_problems(replace(cfg, answer_field="ans", skip_bad_rows=True))  # row 2 has no "ans"
    assert skipped == 1 and a.answer == "5" and a.steps == ("Add.\n", "Get 5.\n") and a.final == "\\boxed{5}"
    assert a.solution == "Add.\nGet 5.\n\\boxed{5}"


def test_bad_rows_name_file_and_line_or_are_counted(tmp_path, caplog):
    good = {"problem": "What is 1 + 1?", "answer": "2"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "", "{not json", {"problem": "no answer field"}, good])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: "):
        load_problems(MathDataConfig(source=str(path)))
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        task = MathTask.from_config(MathDataConfig(source=str(path), skip_bad_rows=True))
    assert task.skipped == 2 and task.skipped_lines == [3, 4] and len(task.train) == 2
    assert any(
        "skipped 2 bad rows" in r.getMessage() and "bad.jsonl" in r.getMessage() for r in caplog.records
    )
    missing = write_jsonl(tmp_path / "missing.jsonl", [good, {"problem": "x?"}])
    with pytest.raises(ValueError, match=r"missing\.jsonl, line 2: missing field 'answer'"):
        load_problems(MathDataConfig(source=str(missing), format="benchmark"))
    unboxed = write_jsonl(tmp_path / "unboxed.jsonl", [{"problem": "x?", "solution": "no box here"}])
    with pytest.raises(ValueError, match=r"unboxed\.jsonl, line 1: no \\boxed"):
        load_problems(MathDataConfig(source=str(unboxed), format="opsd"))


def test_held_out_sets_sampling_and_hooks(tmp_path):
    rows = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}.\n#### {i + 1}"} for i in range(40)
    ]
    path = write_jsonl(tmp_path / "toy_gsm8k.jsonl", rows)
    task = MathTask.from_config(MathDataConfig(source=str(path), eval_size=10, probe_size=5, seed=3))
    evals, probe = task.eval_sets()["toy_gsm8k"], task.probe_set()
    assert (len(evals), len(probe), len(task.train)) == (10, 5, 25)
    assert not {p.question for p in evals + probe} & {p.question for p in task.train}
    assert [p.meta["line"] for p in evals] == sorted(p.meta["line"] for p in evals)
    again = MathTask.from_config(MathDataConfig(source=str(path), eval_size=10, probe_size=5, seed=3))
    assert again.eval_sets() == task.eval_sets()
    draw = task.sample(np.random.default_rng(0), 8)
    assert draw == task.sample(np.random.default_rng(0), 8) and len(set(draw)) == 8
    p = task.train[0]
    completion = "Let me think. " + p.steps[0] + "So it is $\\boxed{" + p.answer + "}$."
    assert task.verify(p, completion).correct and task.reasoning(completion).endswith("So it is $")
    bare = task.verify(p, p.answer)  # a one-line completion without a box gives no answer
    assert not bare.correct and bare.predicted is None and not bare.path_valid
    with pytest.raises(NotImplementedError, match="path-matched"):
        task.path_matched(p, completion)


def test_hf_source_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"\[eval\]"):
        load_benchmark("someone/some_math_set")
    with pytest.raises(ImportError, match=r"HuggingFaceH4/aime_2024.*\[eval\]"):
        load_benchmark("aime24")
    with pytest.raises(FileNotFoundError, match="no aime24.jsonl in data_dir /nonexistent"):
        load_benchmark("aime24", data_dir="/nonexistent")  # a mistyped folder is not a download
    with pytest.raises(FileNotFoundError):
        load_benchmark("missing.jsonl")
    with pytest.raises(ValueError, match="unknown data source"):
        load_benchmark("not_a_source")


def test_config_is_validated():
    with pytest.raises(ValueError, match="format"):
        MathDataConfig(format="csv")
    with pytest.raises(ValueError, match="question_field"):
        MathDataConfig(format="fields", answer_field="a")
    with pytest.raises(ValueError, match="segment"):
        MathDataConfig(segment="word")


BAD_ROWS = [  # (the second row, the message's telling part): what json.loads let through
    (
        '{"problem": "2+2?", "problem": "3+3?", "solution": "$\\\\boxed{4}$"}',
        "the key 'problem' is given twice",
    ),
    ('{"problem": "2+2?", "solution": "$\\\\boxed{4}$", "answer": NaN}', "NaN is not JSON"),
    ('{"problem": "2+2?", "solution": "$\\\\boxed{4}$", "answer": 1e400}', "too large for a float"),
    ('{"problem": "2+2\\ud800?", "solution": "$\\\\boxed{4}$"}', "lone surrogate"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_a_row_json_accepts_silently_is_refused_with_its_line(tmp_path, row, message):
    good = '{"problem": "1+1?", "solution": "Add.\\n\\n$\\\\boxed{2}$"}'
    path = tmp_path / "rows.jsonl"
    path.write_text(good + "\n" + row + "\n")
    with pytest.raises(ValueError, match=rf"rows.jsonl, line 2: .*{message}"):
        load_problems(MathDataConfig(source=str(path)))
    problems, skipped = load_problems(MathDataConfig(source=str(path), skip_bad_rows=True))
    assert len(problems) == 1 and skipped == 1


def test_auto_format_takes_each_rows_answer_field_else_its_box(tmp_path):
    boxed = {"problem": "Box?", "solution": "Two and one.\n\nSo $\\boxed{3}$."}
    both = {"problem": "Both?", "solution": "Four and four.\n\nSo $\\boxed{8}$.", "answer": "7"}
    bare = {"problem": "Bare?", "answer": "9"}
    blank = {"problem": "Blank?", "solution": "One.\n\n$\\boxed{1}$", "answer": " "}
    for order in ([boxed, both, bare, blank], [both, boxed, blank, bare], [bare, blank, both, boxed]):
        path = write_jsonl(tmp_path / "mixed.jsonl", order)
        problems, _ = load_problems(MathDataConfig(source=str(path)))
        answers = {p.question.removesuffix(INSTR): p.answer for p in problems}
        assert answers == {"Box?": "3", "Both?": "7", "Bare?": "9", "Blank?": "1"}, order
        steps = {p.question.removesuffix(INSTR): p.steps for p in problems}
        assert steps["Bare?"] == () and steps["Both?"] == ("Four and four.\n\n", "So $")
    neither = write_jsonl(tmp_path / "neither.jsonl", [boxed, {"problem": "x?", "solution": ""}])
    with pytest.raises(ValueError, match=r"line 2: no 'solution' or 'answer' field with text"):
        load_problems(MathDataConfig(source=str(neither)))
    with pytest.raises(ValueError, match=r"line 1: missing field 'answer'"):  # a named field is needed
        load_problems(MathDataConfig(source=str(neither), answer_field="answer"))


def test_split_picks_the_data_dir_file_of_that_split(tmp_path):
    row = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2.\n#### 2"}
    write_jsonl(tmp_path / "gsm8k_train.jsonl", [row, row])
    write_jsonl(tmp_path / "gsm8k_test.jsonl", [row])
    write_jsonl(tmp_path / "aime24.jsonl", [{"problem": "x?", "answer": "1"}])

    def read(source, split):
        problems, _ = load_problems(MathDataConfig(source=source, data_dir=str(tmp_path), split=split))
        return Path(problems[0].meta["source"]).name, len(problems)

    assert (
        read("gsm8k", None)
        == read("gsm8k", "train")
        == read("gsm8k_test", "train")
        == ("gsm8k_train.jsonl", 2)
    )
    assert read("gsm8k", "test") == read("gsm8k_test", None) == ("gsm8k_test.jsonl", 1)
    assert read("aime24", "train") == ("aime24.jsonl", 1)
    with pytest.raises(
        ValueError, match=r"aime24: split 'test' is in no data_dir file .*HuggingFaceH4/aime_2024"
    ):
        read("aime24", "test")


def test_windows_line_ends_segment_like_unix_ones(tmp_path):
    solution = "Add them.\n\nSo 2 + 3 = 5.\n\nThe answer is $\\boxed{5}$."
    gsm8k = "Two and three.\nMake 5.\n#### 5"
    rows = [{"problem": "2 + 3?", "solution": solution}, {"question": "2 + 3?", "answer": gsm8k}]
    for row, fmt in zip(rows, ("opsd", "gsm8k")):
        unix = write_jsonl(tmp_path / "unix.jsonl", [row])
        crlf = {k: v.replace("\n", "\r\n") for k, v in row.items()}
        windows = write_jsonl(tmp_path / "windows.jsonl", [crlf])
        (u,), _ = load_problems(MathDataConfig(source=str(unix), format=fmt))
        (w,), _ = load_problems(MathDataConfig(source=str(windows), format=fmt))
        assert w.steps == u.steps and len(w.steps) >= 2 and (w.answer, w.final) == (u.answer, u.final)


def test_a_reference_of_whitespace_has_no_steps(tmp_path):
    assert segment("  \n", "paragraph") == segment(" \t", "line") == segment("\n\n", "sentence") == ()
    path = write_jsonl(tmp_path / "blank.jsonl", [{"problem": "x?", "solution": "  \n\\boxed{3}"}])
    (p,), _ = load_problems(MathDataConfig(source=str(path)))
    assert p.steps == () and p.answer == "3" and p.final == "\\boxed{3}"


def test_held_out_sets_that_leave_no_training_rows_are_refused(tmp_path, caplog):
    def toy(n):
        rows = [{"problem": f"{i} + 1?", "solution": f"Add one.\n\n$\\boxed{{{i + 1}}}$"} for i in range(n)]
        return str(write_jsonl(tmp_path / f"toy{n}.jsonl", rows))

    with pytest.raises(ValueError, match=r"eval_size=0 and probe_size=64 hold out 0 and 10 of the 10 usable "
                       r"rows of toy10, leaving none for training"):  # fmt: skip
        MathTask.from_config(MathDataConfig(source=toy(10)))
    with pytest.raises(ValueError, match=r"eval_size=8 and probe_size=64 hold out 8 and 2 of the 10 .* none"):
        MathTask.from_config(MathDataConfig(source=toy(10), eval_size=8))
    assert len(MathTask.from_config(MathDataConfig(source=toy(10), eval_size=-1)).eval_sets()["toy10"]) == 10
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        task = MathTask.from_config(MathDataConfig(source=toy(100)))
    assert len(task.train) == 36 and len(task.probe_set()) == 64
    assert any(
        "hold out 0 and 64 of the 100 usable rows of toy100, leaving 36" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        task = MathTask.from_config(MathDataConfig(source=toy(200)))  # 64 of 200: no warning
    assert len(task.train) == 136 and not caplog.records


def test_files_that_are_not_json_lines_are_refused_in_one_line(tmp_path, monkeypatch):
    rows = [{"problem": "1 + 1?", "answer": "2"}, {"problem": "2 + 2?", "answer": "4"}]
    (tmp_path / "array.json").write_text(json.dumps(rows))
    (tmp_path / "indented.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "pretty.json").write_text(json.dumps(rows[0], indent=2))  # gave "line 1: Expecting ..."
    (tmp_path / "open.jsonl").write_text('\n{"problem": "1 + 1?",\n "answer": "2"}\n')
    object_ = "its first line opens a JSON object that it does not close"
    for name, what in (("array.json", "a JSON array"), ("indented.json", "a JSON array"),
                       ("pretty.json", object_), ("open.jsonl", object_)):  # fmt: skip
        with pytest.raises(ValueError, match=rf"{name}: {what}; only JSON Lines .* is read") as err:
            load_problems(MathDataConfig(source=str(tmp_path / name)))
        assert "\n" not in str(err.value)
    lines = write_jsonl(tmp_path / "lines.json", rows)  # JSON Lines named .json still reads
    assert [p.answer for p in load_problems(MathDataConfig(source=str(lines)))[0]] == ["2", "4"]
    broken = write_jsonl(tmp_path / "broken.jsonl", ['{"problem": "1 + 1?" "answer": "2"}', rows[1]])
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 1: Expecting ','"):  # a bad row, not a format
        load_problems(MathDataConfig(source=str(broken)))
    assert load_problems(MathDataConfig(source=str(broken), skip_bad_rows=True))[1] == 1
    monkeypatch.chdir(tmp_path)  # a missing relative path is a missing file, not an HF dataset id
    for name in ("data/train.json", "data/train.jsonl", "data/train.parquet", "data/train.csv"):
        with pytest.raises(FileNotFoundError, match=f"no such data file: {name}"):
            load_problems(MathDataConfig(source=name))


def test_the_length_check_reads_the_training_pool_in_tokens():
    """Training problems are most of the data and the ones sampled: a long one past the model's
    positions was not checked (only the eval and probe sets were)."""
    from atesd.builder import check_lengths
    from atesd.engine import EngineConfig
    from atesd.models import build_qwen3_style_tokenizer
    from atesd.tasks.base import Problem
    from atesd.tasks.math import MathTask

    def problem(steps: int) -> Problem:
        body = tuple(f"Step {i}: add {i} to the sum.\n\n" for i in range(steps))
        return Problem("What is the sum?", body, "1", "\\boxed{1}", "x", {})

    short, long = problem(1), problem(400)
    tokenizer, cfg = build_qwen3_style_tokenizer(), EngineConfig()
    check_lengths(tokenizer, MathTask([short], {"x": [short]}, [short]), cfg, 1024)
    with pytest.raises(ValueError, match="the model holds 1024 positions"):
        check_lengths(tokenizer, MathTask([short, long], {"x": [short]}, [short]), cfg, 1024)


def test_the_length_check_ranks_rows_by_tokens_not_characters():
    """It rendered only the 32 rows longest in characters: a row of digits (a token each in Qwen's BPE)
    shorter in characters than 32 prose rows, but longer in tokens, passed and overflowed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from atesd.builder import check_lengths
    from atesd.engine import EngineConfig, SamplingConfig
    from atesd.tasks.base import Problem
    from atesd.tasks.math import MathTask
    from atesd.tiny import QWEN3_STYLE_CHAT_TEMPLATE

    specials = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|unk|>"]
    words = [*specials, "\n", "longproseword", *"0123456789"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|unk|>")
    tokenizer.chat_template = QWEN3_STYLE_CHAT_TEMPLATE

    def problem(solution: str) -> Problem:
        return Problem("What is it?", (solution,), "1", "\\boxed{1}", "x", {})

    prose = [problem(" ".join(["longproseword"] * 40)) for _ in range(40)]  # 559 characters, 40 tokens
    digits = problem(" ".join("1234567890" * 20))  # 399 characters, 200 tokens
    assert len(digits.solution) < len(prose[0].solution)
    cfg = EngineConfig(sampling=SamplingConfig(max_new_tokens=16))
    check_lengths(tokenizer, MathTask(prose, {"x": prose[:1]}, prose[:1]), cfg, 150)
    with pytest.raises(ValueError, match="the model holds 150 positions"):
        check_lengths(tokenizer, MathTask([*prose, digits], {"x": prose[:1]}, prose[:1]), cfg, 150)


def test_the_length_error_names_what_to_change():
    """It said to raise real.model.max_position (the embedded model's, nothing to an HF checkpoint) and
    to lower the training length even when the prompt alone overflowed or the eval length set it."""
    from atesd.builder import check_lengths
    from atesd.engine import EngineConfig, EvalSettings, SamplingConfig
    from atesd.models import build_qwen3_style_tokenizer
    from atesd.tasks.base import Problem
    from atesd.tasks.math import MathTask

    p = Problem("What is the sum?", ("Add them.",), "1", "\\boxed{1}", "x", {})
    task, tokenizer = MathTask([p], {"x": [p]}, [p]), build_qwen3_style_tokenizer()
    cfg = EngineConfig(sampling=SamplingConfig(max_new_tokens=64), eval=EvalSettings(max_new_tokens=512))
    with pytest.raises(ValueError) as err:
        check_lengths(tokenizer, task, cfg, 400)  # the prompt: about 200 tokens
    message = str(err.value)
    assert "lower real.engine.eval.max_new_tokens to at most" in message
    assert "sampling.max_new_tokens" not in message and "real.model.max_position" not in message
    assert "use a model with more positions" in message
    with pytest.raises(ValueError, match="the prompt alone does not fit: raise real.model.max_position"):
        check_lengths(tokenizer, task, cfg, 8, embedded=True)


def test_float_answers_are_written_without_an_exponent(tmp_path):
    """A float's str() gave the gold answers '5e-05' (0.00005) and '2e+16' (2e16): no boxed answer
    the model writes matched them."""
    answers = (0.00005, 2e16, 3.0, -0.25, 12, "1/2")
    path = write_jsonl(
        tmp_path / "floats.jsonl", [{"problem": f"{i}?", "answer": a} for i, a in enumerate(answers)]
    )
    problems, _ = load_problems(MathDataConfig(source=str(path)))
    assert [p.answer for p in problems] == ["0.00005", "20000000000000000", "3", "-0.25", "12", "1/2"]
    assert grade("\\boxed{0.00005}", problems[0].answer).correct
    assert problems[1].final == "\\boxed{20000000000000000}"


def test_settings_a_source_would_ignore_are_refused(tmp_path):
    """split and hf_name beside a local file, data_dir beside a source that is not a named one, were
    silently ignored (split='bogus' loaded every row)."""
    path = write_jsonl(tmp_path / "mine.jsonl", [{"problem": "1 + 1?", "answer": "2"}])
    for key, value in (("split", "bogus"), ("hf_name", "main")):
        with pytest.raises(ValueError, match=rf"real\.data\.{key}='{value}' applies to HF datasets and named "
                           rf"sources, not to the local file .*mine\.jsonl: leave it unset"):  # fmt: skip
            load_problems(MathDataConfig(source=str(path), **{key: value}))
    for source in (str(path), "someone/some_set"):
        with pytest.raises(
            ValueError, match=r"real\.data\.data_dir='/x' applies to the named sources \(aime24"
        ):
            load_problems(MathDataConfig(source=source, data_dir="/x"))
    # hf_name beside a named source read from data_dir: the file was read, the name dropped unsaid
    (tmp_path / "dd").mkdir()
    write_jsonl(tmp_path / "dd" / "gsm8k_train.jsonl", [{"question": "1 + 1?", "answer": "#### 2"}])
    with pytest.raises(ValueError, match=r"real\.data\.hf_name='socratic' names a configuration on the hub"):
        load_problems(MathDataConfig(source="gsm8k", data_dir=str(tmp_path / "dd"), hf_name="socratic"))


def test_a_ragged_csv_is_one_line(tmp_path, hf_datasets):
    """pandas' ParserError came wrapped in datasets' DatasetGenerationError, not a ValueError: a
    traceback, and a run directory left behind."""
    (tmp_path / "ragged.csv").write_text("problem,answer\n1 + 1?,2\n2 + 2?,4,extra,more\n")
    with pytest.raises(ValueError, match=r"ragged\.csv: not readable as a csv file: .*Expected 2 fields"):
        load_problems(MathDataConfig(source=str(tmp_path / "ragged.csv")))


@pytest.fixture
def hf_datasets(tmp_path, monkeypatch):
    """`datasets`, caching what it converts under tmp_path (not the user's HF cache)."""
    datasets = pytest.importorskip("datasets", reason="local tables and folders are read through [eval]")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return datasets


def test_local_tables_and_folders_load_through_datasets(tmp_path, monkeypatch, hf_datasets):
    """A parquet file was refused ("convert it"), `saved_ds` was an unknown source, `./saved_ds` met
    datasets' "use load_from_disk" and `./pq_dir/` (unlike `./pq_dir`) an unknown source."""
    rows = [{"problem": f"What is {i} + 1?", "answer": i + 1, "rate": r, "level": f"Level {i % 2 + 1}"}
            for i, r in enumerate((0.00005, 2e16, 3.0, 0.25))]  # fmt: skip
    table = hf_datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "mine.parquet"))
    table.save_to_disk(str(tmp_path / "saved_ds"))
    shutil.copy(next((tmp_path / "saved_ds").glob("*.arrow")), tmp_path / "mine.arrow")
    hf_datasets.DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "pq_dir").mkdir()
    table.to_parquet(str(tmp_path / "pq_dir" / "train.parquet"))
    monkeypatch.chdir(tmp_path)
    sources = {"mine.parquet": "mine", "mine.arrow": "mine", "saved_ds": "saved_ds", "./saved_ds": "saved_ds",
               str(tmp_path / "saved_ds"): "saved_ds", "pq_dir": "pq_dir", "./pq_dir/": "pq_dir",
               "dd": "dd"}  # fmt: skip
    for source, band in sources.items():
        cfg = MathDataConfig(source=source)
        problems, _ = load_problems(cfg)
        assert [p.answer for p in problems] == ["1", "2", "3", "4"], source
        assert [p.meta["row"] for p in problems] == [1, 2, 3, 4] and cfg.band_name == band == problems[0].band
    floats, _ = load_problems(
        MathDataConfig(source="mine.parquet", answer_field="rate")
    )  # an HF row's floats
    assert [p.answer for p in floats] == ["0.00005", "20000000000000000", "3", "0.25"]
    (test,), _ = load_problems(MathDataConfig(source="dd", split="test"))
    assert test.answer == "2" and test.meta == {"source": "dd[test]", "row": 1}
    with pytest.raises(
        ValueError, match=r"dd: no split 'bogus' in this saved DatasetDict \(it holds train, test\)"
    ):
        load_problems(MathDataConfig(source="dd", split="bogus"))
    with pytest.raises(ValueError, match=r"real\.data\.split='test': saved_ds holds one saved Dataset"):
        load_problems(MathDataConfig(source="saved_ds", split="test"))
    for source, key in (("saved_ds", "hf_name"), ("mine.parquet", "split"), ("mine.arrow", "hf_name")):
        with pytest.raises(ValueError, match=rf"real\.data\.{key}='x' applies to HF datasets"):
            load_problems(MathDataConfig(source=source, **{key: "x"}))
    levels = MathTask.from_config(MathDataConfig(source="./pq_dir/", band_field="level", probe_size=0))
    assert levels.action_bands() == ("Level 1", "Level 2")  # an HF row's band field
    hf_datasets.Dataset.from_list([rows[0], {**rows[1], "answer": None}]).to_parquet("bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet, row 2: no 'solution' or 'answer' field with text"):
        load_problems(MathDataConfig(source="bad.parquet"))
    (tmp_path / "damaged.parquet").write_bytes(b"PAR1\x00\x01PAR1")
    with pytest.raises(ValueError, match=r"damaged\.parquet: not readable as a parquet file: "):
        load_problems(MathDataConfig(source="damaged.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    for source in ("mine.parquet", "saved_ds"):
        with pytest.raises(
            ImportError, match=rf"{source} needs the `datasets` package: pip install -e '\.\[eval\]'"
        ):
            load_problems(MathDataConfig(source=source))


def test_csv_and_tsv_cells_are_read_as_written(tmp_path, hf_datasets):
    """Type guessing would make '007' the number 7, '3.10' 3.1 and the answer 'None' a null."""
    (tmp_path / "rows.csv").write_text('problem,answer\n"Pad 7, three places?",007\nWhich?,None\n')
    (tmp_path / "rows.tsv").write_text("problem\tanswer\tlevel\nHow much?\t3.10\t2\nBlank level?\t1\t\n")
    problems, _ = load_problems(MathDataConfig(source=str(tmp_path / "rows.csv")))
    assert [(p.question.removesuffix(INSTR), p.answer) for p in problems] == [
        ("Pad 7, three places?", "007"),
        ("Which?", "None"),
    ]
    cfg = MathDataConfig(source=str(tmp_path / "rows.tsv"), band_field="level")
    with pytest.raises(ValueError, match=r"rows\.tsv, row 2: the band field 'level' .* is blank"):
        load_problems(cfg)
    (p,), skipped = load_problems(replace(cfg, skip_bad_rows=True))
    assert (p.answer, p.band, skipped, cfg.band_name) == ("3.10", "2", 1, "rows")


def test_band_names_drop_any_data_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    names = {"mine.json": "mine", "A.JSONL": "A", "x/b.Parquet": "b", "c.tsv": "c", "folder": "folder",
             "./folder/": "folder", ".": tmp_path.name, "someone/MATH-500": "MATH-500",
             "gsm8k": "gsm8k"}  # fmt: skip
    assert {source: MathDataConfig(source=source).band_name for source in names} == names
    assert MathDataConfig(source="mine.json", band="own").band_name == "own"


def test_auto_format_reads_the_field_names_given_and_question_rows(tmp_path):
    """format=auto with question_field and solution_field still failed to tell the format, and rows of
    `question` + `answer` (no '####') were not told at all."""
    rows = [
        {"q": "What is 2 + 3?", "sol": "Add.\n\nSo $\\boxed{5}$.", "a": "5"},
        {"q": "Name 7.", "sol": "$\\boxed{7}$", "a": "7"},
    ]
    path = str(write_jsonl(tmp_path / "custom.jsonl", rows))
    by_solution, _ = load_problems(MathDataConfig(source=path, question_field="q", solution_field="sol"))
    by_answer, _ = load_problems(MathDataConfig(source=path, question_field="q", answer_field="a"))
    assert [p.answer for p in by_solution] == [p.answer for p in by_answer] == ["5", "7"]
    assert by_solution[0].steps == ("Add.\n\n", "So $") and by_answer[0].steps == ()
    plain = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What is 2 + 3?", "answer": 5}])
    (p,), _ = load_problems(MathDataConfig(source=str(plain)))
    assert (p.question, p.answer, p.steps) == ("What is 2 + 3?" + INSTR, "5", ())
    with pytest.raises(ValueError, match=r"cannot tell the format from the fields \['a', 'q', 'sol'\]: set "
                       r"format=fields with question_field and solution_field/answer_field"):  # fmt: skip
        load_problems(MathDataConfig(source=path))


def test_rows_repeating_a_held_out_question_are_not_trained_on(tmp_path, caplog):
    """20 rows that are 5 problems four times (spaced differently), 5 held out: every held-out
    question was also in the training pool, unwarned."""
    rows = [{"problem": f"What is {i} +{' ' * (copy + 1)}1?", "answer": str(i + 1)} for copy in range(4)
            for i in range(5)]  # fmt: skip
    path = str(write_jsonl(tmp_path / "four.jsonl", rows))
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        task = MathTask.from_config(MathDataConfig(source=path, eval_size=5, probe_size=0))
    key = lambda p: " ".join(p.question.split())  # noqa: E731
    evaluated = [key(p) for p in task.eval_sets()["four"]]
    assert len(evaluated) == 5 and len(set(evaluated)) == 4  # seed 0 holds out four of the problems
    assert len(task.train) == 4 and not set(evaluated) & {key(p) for p in task.train}
    assert [r.getMessage() for r in caplog.records] == [
        "11 rows of four repeat the question of a held-out (evaluation or probe) row: left out of training",
        "1 of the 5 evaluation rows of four repeat the question of another evaluation row (each is still "
        "evaluated)",
        "eval_size=5 and probe_size=0 hold out 5 and 0 of the 20 usable rows of four (11 more repeat their "
        "questions), leaving 4 for training",
    ]
    every = MathTask.from_config(MathDataConfig(source=path, eval_size=-1))
    assert len(every.eval_sets()["four"]) == 20 and every.train == []  # each still evaluated
    same = str(write_jsonl(tmp_path / "same.jsonl", rows[::5]))
    message = r"hold out 1 and 0 of the 4 usable rows of same \(3 more repeat their questions\), leaving none"
    with pytest.raises(ValueError, match=message):
        MathTask.from_config(MathDataConfig(source=same, eval_size=1, probe_size=0))


def level_rows(n: int) -> list[dict]:
    """Problems with a reference, a MATH-style level (row i: Level i % 3 + 1) and a rate i / n."""
    return [
        {"problem": f"What is {i} + 1?", "solution": f"Add one.\n\n$\\boxed{{{i + 1}}}$",
         "level": f"Level {i % 3 + 1}", "rate": i / n}
        for i in range(n)
    ]  # fmt: skip


def test_band_field_splits_the_evaluation_sets_and_the_actions(tmp_path, caplog):
    path = str(write_jsonl(tmp_path / "levels.jsonl", level_rows(30)))
    levels = ("Level 1", "Level 2", "Level 3")
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        task = MathTask.from_config(
            MathDataConfig(source=path, band_field="level", eval_size=9, probe_size=3)
        )
    assert not caplog.records
    assert task.action_bands() == action_bands(task) == levels
    evals = task.eval_sets()
    assert list(evals) == sorted(evals) and set(evals) <= set(levels) and sum(map(len, evals.values())) == 9
    level = lambda p: f"Level {(p.meta['line'] - 1) % 3 + 1}"  # noqa: E731
    assert all(p.band == band == level(p) for band, problems in evals.items() for p in problems)
    assert len(task.train) == 18 and all(action_band(task, p) == p.band == level(p) for p in task.train)
    assert {p.band for p in task.train} == set(levels)
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        one = MathTask.from_config(MathDataConfig(source=path, band_field="level", eval_size=1, probe_size=0))
    (evaluated,) = one.eval_sets()
    assert one.action_bands() == levels  # a band with training rows but no evaluation row keeps its alpha
    unevaluated = ", ".join(b for b in levels if b != evaluated)
    assert caplog.records[-1].getMessage().endswith(f"raise eval_size to evaluate them): {unevaluated}")
    caplog.clear()
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):  # without band_field: as before
        plain = MathTask.from_config(MathDataConfig(source=path, eval_size=9, probe_size=3))
    assert (
        not caplog.records and plain.action_bands() == ("levels",) and list(plain.eval_sets()) == ["levels"]
    )
    assert {p.band for p in plain.train} == {"levels"}


def test_band_buckets_are_quantiles_of_every_row(tmp_path):
    path = str(write_jsonl(tmp_path / "rates.jsonl", level_rows(20)))  # rates 0, 0.05, .., 0.95
    task = MathTask.from_config(
        MathDataConfig(source=path, band_field="rate", band_buckets=4, eval_size=8, probe_size=0)
    )
    names = ("q1[0.00,0.24)", "q2[0.24,0.47)", "q3[0.47,0.71)", "q4[0.71,0.95]")
    assert task.action_bands() == names and list(task.eval_sets()) == sorted(task.eval_sets())
    everyone = task.train + [p for problems in task.eval_sets().values() for p in problems]
    assert len(everyone) == 20 and all(p.band == names[(p.meta["line"] - 1) // 5] for p in everyone)
    assert all(p.band == band for band, problems in task.eval_sets().items() for p in problems)

    def bands(values, k):
        rows = [{"problem": f"{i}?", "answer": "1", "d": v} for i, v in enumerate(values)]
        cfg = MathDataConfig(
            source=str(write_jsonl(tmp_path / "d.jsonl", rows)), band_field="d", band_buckets=k
        )
        return [p.band for p in load_problems(cfg)[0]]

    assert bands([3, 0, 8, "5", 1, 2, 4, 6, 7], 4) == [
        "q2[2,4)", "q1[0,2)", "q4[6,8]", "q3[4,6)", "q1[0,2)", "q2[2,4)", "q3[4,6)", "q4[6,8]", "q4[6,8]",
    ]  # fmt: skip
    many = bands(range(100), 10)
    assert (
        many[0].startswith("q01[")
        and many[-1].startswith("q10[")
        and sorted(set(many)) == sorted(set(many), key=lambda name: int(name[1:3]))
    )


def test_bad_band_values_are_bad_rows_and_ties_are_refused(tmp_path):
    def rows_with(*values):
        rows = [{"problem": f"{i}?", "answer": "1", "level": v} for i, v in enumerate(values)]
        return str(write_jsonl(tmp_path / "bands.jsonl", rows))

    def refused(source, message, **kwargs):
        with pytest.raises(ValueError, match=message):
            load_problems(MathDataConfig(source=source, band_field="level", **kwargs))

    path = rows_with("Level 1", None, " ", "Level 2")
    refused(path, r"bands\.jsonl, line 2: the band field 'level' \(real\.data\.band_field\) is null")
    with pytest.raises(
        ValueError, match=r"line 1: the band field 'difficulty' \(real\.data\.band_field\) is missing"
    ):
        load_problems(MathDataConfig(source=path, band_field="difficulty"))
    task = MathTask.from_config(
        MathDataConfig(source=path, band_field="level", skip_bad_rows=True, probe_size=0)
    )
    assert (
        task.skipped == 2 and task.skipped_lines == [2, 3] and task.action_bands() == ("Level 1", "Level 2")
    )
    refused(rows_with("Level 1", " "), r"line 2: the band field 'level' \(real\.data\.band_field\) is blank")
    refused(rows_with("Level 1", [1]), r"line 2: the band field 'level' is not text or a number: \[1\]")
    refused(rows_with("Level 1", 2), r"line 1: the band field 'level' holds 'Level 1', not a finite number: "
            r"band_buckets needs numeric values", band_buckets=2)  # fmt: skip
    refused(rows_with(*[0.5] * 9), r"bands\.jsonl: band_field 'level': its 9 values \(1 distinct\) form "
            r"one band, not band_buckets=4 quantile buckets: bucket a field whose values differ",
            band_buckets=4)  # fmt: skip
    for kwargs, message in (({"band_buckets": 2}, "band_buckets needs band_field"),
                            ({"band_buckets": -1, "band_field": "x"}, "band_buckets must be >= 0"),
                            ({"band": "b", "band_field": "level"}, "leave band unset")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            MathDataConfig(**kwargs)


def test_the_per_band_env_on_math_data_has_one_alpha_per_level(checkpoint, tmp_path):
    """A band field gives the real env's per-band action one alpha per level: math data's band was the
    source's name alone, so per_band silently became one alpha."""
    from atesd.builder import RealConfig, build_engine
    from atesd.engine import EngineConfig, EvalSettings, SamplingConfig
    from atesd.models import HFModelConfig
    from envs.exposure_env import ExposureEnvConfig, TeacherExposureEnv

    data = MathDataConfig(source=str(write_jsonl(tmp_path / "levels.jsonl", level_rows(12))),
                          band_field="level", eval_size=3, probe_size=2)  # fmt: skip
    real = RealConfig(
        task_kind="math", data=data, hf=HFModelConfig(name_or_path=str(checkpoint), dtype="float32"),
        engine=EngineConfig(batch_size=2, sampling=SamplingConfig(max_new_tokens=4),
                            eval=EvalSettings(max_new_tokens=4)),
    )  # fmt: skip
    cfg = ExposureEnvConfig(hold_steps=1, total_steps=1, action="per_band", eval_at_reset=False)
    env = TeacherExposureEnv(cfg, engine=build_engine(real, 0))
    levels = ("Level 1", "Level 2", "Level 3")
    assert env.bands == levels and env.action_space.shape == (3,)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.array([0.0, 0.5, 1.0], dtype=np.float32))
    assert terminated and info["alpha"] == [0.0, 0.5, 1.0] and len(info["band_accuracy"]) == 3
    assert set(info["eval"]) == {f"accuracy/{b}" for b in env.engine.task.eval_sets()}
    # without a band field the per-band action is one alpha, and says so
    one = RealConfig(
        task_kind="math", data=dataclasses.replace(data, band_field=None), hf=real.hf, engine=real.engine
    )
    with pytest.warns(UserWarning, match=r"per-band action on a task of one band \(levels\) is one alpha"):
        env = TeacherExposureEnv(cfg, engine=build_engine(one, 0))
    assert env.action_space.shape == (1,)


def test_auto_format_with_named_fields_reads_each_rows_solution_and_answer(tmp_path):
    """question_field + answer_field under auto read as format=fields: each row's `solution` was
    dropped (steps ()), so the teacher saw no reference."""
    rows = [
        {"problem": "What is 2 + 3?", "solution": "Add them.\n\nSo \\boxed{5}.", "final": "5"},
        {"problem": "What is 2 + 4?", "final": "6"},  # no solution: the answer alone
    ]
    path = str(write_jsonl(tmp_path / "extra.jsonl", rows))
    with_solution, bare = load_problems(MathDataConfig(source=path, question_field="problem",
                                                       answer_field="final"))[0]  # fmt: skip
    assert (with_solution.steps, with_solution.answer, with_solution.final) == (
        ("Add them.\n\n", "So "), "5", "\\boxed{5}.")  # fmt: skip
    assert (bare.steps, bare.answer) == ((), "6")
    fields = MathDataConfig(source=path, format="fields", question_field="problem", answer_field="final")
    assert [p.steps for p in load_problems(fields)[0]] == [(), ()]  # format=fields reads the named alone
    rows = [{"q": "Two?", "sol": "One and one.\n\n$\\boxed{3}$", "answer": "2"},
            {"q": "Four?", "sol": "$\\boxed{4}$"}]  # fmt: skip
    named = str(write_jsonl(tmp_path / "named.jsonl", rows))  # each row's `answer`, else the box
    by_solution, _ = load_problems(MathDataConfig(source=named, question_field="q", solution_field="sol"))
    assert [(p.answer, p.steps) for p in by_solution] == [("2", ("One and one.\n\n", "$")), ("4", ("$",))]


def test_a_named_source_is_never_the_local_file_or_folder_of_its_name(tmp_path, monkeypatch, caplog):
    """With gsm8k/train.jsonl here, source=gsm8k read that folder, while the recipes record the name
    (not a path, no hash): a resume elsewhere read the hub's openai/gsm8k."""
    row = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2.\n#### 2"}
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [row])
    write_jsonl(tmp_path / "aime24", [{"problem": "x?", "answer": "1"}])
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="atesd.tasks.sources"):
        assert resolve_source(MathDataConfig(source="gsm8k")) == ("openai/gsm8k", "main", "train")
        assert resolve_source(MathDataConfig(source="aime24")) == ("HuggingFaceH4/aime_2024", None, "train")
    assert [r.getMessage() for r in caplog.records] == [
        "real.data.source=gsm8k is the named source (openai/gsm8k), not the folder of that name here: write "
        "./gsm8k to read that",
        "real.data.source=aime24 is the named source (HuggingFaceH4/aime_2024), not the file of that name "
        "here: write ./aime24 to read that",
    ]
    write_jsonl(tmp_path / "gsm8k_train.jsonl", [row, row])
    assert resolve_source(MathDataConfig(source="gsm8k", data_dir=".")) == Path("gsm8k_train.jsonl")
    (file,), _ = load_problems(MathDataConfig(source="./aime24"))  # a path reads the file
    assert (file.answer, file.meta["source"]) == ("1", "aime24")
    assert "write ./gsm8k" in MathDataConfig.__dataclass_fields__["source"].metadata["help"]
    pytest.importorskip("datasets", reason="a folder is read through [eval]")
    (local,), _ = load_problems(MathDataConfig(source="./gsm8k"))  # and the folder
    assert (local.answer, local.band) == ("2", "gsm8k")


def test_a_folder_of_csv_files_reads_cells_as_written(tmp_path, monkeypatch, hf_datasets):
    """A folder of csv files went through datasets' type guessing: '007' became 7 and the answer 'None'
    a null (a skipped row), as a single csv file's cells did before."""
    text = "problem,answer\nWhat is 3+4?,007\nName it,None\nWhat is 1+1?,2\n"
    (tmp_path / "one.csv").write_text(text)
    folders = {"csvdir": {"train.csv": text, "test.csv": "problem,answer\nLast?,3.10\n"},
               "tsvdir": {"all.tsv": text.replace(",", "\t")},
               "two": {"a.csv": text, "b.csv": "problem,answer\nMore?,0.50\n"},
               "mixed": {"a.csv": text, "b.tsv": text.replace(",", "\t")},
               "headers": {"a.csv": text, "b.csv": "question,answer\nMore?,1\n"}}  # fmt: skip
    for folder, files in folders.items():
        (tmp_path / folder).mkdir()
        for name, content in files.items():
            (tmp_path / folder / name).write_text(content)
    monkeypatch.chdir(tmp_path)

    def answers(**kwargs):
        problems, skipped = load_problems(MathDataConfig(skip_bad_rows=True, **kwargs))
        return [p.answer for p in problems], skipped

    written = (["007", "None", "2"], 0)
    assert answers(source="one.csv") == answers(source="csvdir") == answers(source="tsvdir") == written
    assert answers(source="csvdir", split="test") == (["3.10"], 0)
    assert answers(source="two") == (["007", "None", "2", "0.50"], 0)
    (p,), _ = load_problems(MathDataConfig(source="csvdir", max_rows=1))
    assert p.meta == {"source": "csvdir[train]", "row": 1} and p.band == "csvdir"
    with pytest.raises(ValueError, match=r"^mixed: holds both \.csv and \.tsv files: keep one kind in a "):
        load_problems(MathDataConfig(source="mixed"))
    with pytest.raises(ValueError, match=r"b\.csv: its columns \(question, answer\) are not those of a\.csv "
                       r"\(problem, answer\): give a folder's files one header$"):  # fmt: skip
        load_problems(MathDataConfig(source="headers"))


def test_a_jsonl_file_whose_first_row_is_cut_short_has_one_bad_row(tmp_path):
    """A first line that opens an object and stops was taken for a pretty-printed file and the whole
    file refused, even with skip_bad_rows."""
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"problem": "What is 1+1?", "answer": 2\n{"problem": "What is 2+2?", "answer": 4}\n'
                   '{"problem": "What is 3+3?", "answer": 6}\n')  # fmt: skip
    with pytest.raises(ValueError, match=r"cut\.jsonl, line 1: Expecting ',' delimiter"):
        load_problems(MathDataConfig(source=str(cut)))
    problems, skipped = load_problems(MathDataConfig(source=str(cut), skip_bad_rows=True))
    assert [p.answer for p in problems] == ["4", "6"] and skipped == 1
    one = {"problem": "1 + 1?", "answer": "2"}
    # a first line of `{` alone (whitespace aside), or a file that is one JSON value, is pretty-printed
    pretty = {"brace.jsonl": "  {  \n" + json.dumps(one)[1:] + "\n",
              "split.jsonl": '{"problem": "1 + 1?",\n\n "answer": "2"}'}  # fmt: skip
    for name, text in pretty.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name}: its first line opens a JSON object that it does not "
                           r"close; only JSON Lines"):  # fmt: skip
            load_problems(MathDataConfig(source=str(tmp_path / name), skip_bad_rows=True))


def pass_rates(n: int = 200) -> list[float]:
    """The reviewer's rates: c / 12 over 12 samples, 35% of the rows never solved."""
    rng = np.random.default_rng(0)
    return [0.0 if i % 20 < 7 else int(rng.integers(1, 13)) / 12 for i in range(n)]


def test_tied_band_values_form_fewer_buckets_with_a_warning(tmp_path, caplog):
    """Pass rates tie (35% of the rows at 0): band_buckets=4 and 3 were refused, "do not fill .. quantile
    buckets", though USAGE suggested 4."""

    def bands(values, k):
        rows = [{"problem": f"{i}?", "answer": "1", "pass_rate": v} for i, v in enumerate(values)]
        path = str(write_jsonl(tmp_path / "rated.jsonl", rows))
        return [p.band for p in load_problems(MathDataConfig(source=path, band_field="pass_rate",
                                                             band_buckets=k))[0]]  # fmt: skip

    rates = pass_rates()
    for k, names in ((4, ["q1[0.00,0.00]", "q2(0.00,0.33)", "q3[0.33,0.67)", "q4[0.67,1.00]"]),
                     (3, ["q1[0.00,0.00]", "q2(0.00,0.58)", "q3[0.58,1.00]"]),
                     (2, ["q1[0.00,0.33)", "q2[0.33,1.00]"])):  # fmt: skip
        with caplog.at_level("WARNING", logger="atesd.tasks.math"):
            got = bands(rates, k)
        assert sorted(set(got)) == names and not caplog.records, k
        by_value = {}
        for value, band in zip(rates, got):
            by_value.setdefault(value, set()).add(band)
        assert all(len(b) == 1 for b in by_value.values())  # equal values share a bucket
        ranges = [[v for v in sorted(by_value) if band in by_value[v]] for band in names]
        assert all(low[-1] < high[0] for low, high in zip(ranges, ranges[1:]))  # in the names' order
        assert got[rates.index(0.0)] == names[0] and got[rates.index(max(rates))] == names[-1]
    # never and always solved tie: the empty bucket between 0 and 0.25 is dropped, 3 of 4 form
    with caplog.at_level("WARNING", logger="atesd.tasks.math"):
        got = bands([0.0] * 6 + [0.5, 0.75] + [1.0] * 4, 4)
    assert got == ["q1[0.00,0.00]"] * 6 + ["q2[0.25,1.00)"] * 2 + ["q3[1.00,1.00]"] * 4
    warning = caplog.records[-1].getMessage()
    assert warning.endswith(
        "rated.jsonl: band_field 'pass_rate': band_buckets=4 asked, 3 formed: its 12 values (4 distinct) tie "
        "at quantile edges (a tied value is one bucket) or leave buckets empty"
    )
    assert bands([0, 10], 4) == ["q1[0.00,2.50)", "q2[7.50,10.00]"]  # too few values: empty buckets go
    assert bands([0.001, 0.004, 0.004, 0.009], 2) == ["q1[0.001,0.004)"] + ["q2[0.004,0.009]"] * 3  # digits


def test_a_gsm8k_answer_in_any_format_gives_its_final_number(tmp_path):
    """GSM8K rows read with question_field / answer_field (or after a first row with no '#### N' line)
    took the whole worked answer as the gold answer: the teacher saw the full solution at alpha 0,
    and the rows had no steps. Its '#### N' line is now the gold answer and its lines the reference."""
    gsm = {"question": "Eggs?", "answer": "16 - 3 = <<16-3=13>>13 eggs.\n13 * 2 = 26 dollars.\n#### 26"}
    path = write_jsonl(tmp_path / "g.jsonl", [gsm])
    named = MathDataConfig(source=str(path), question_field="question", answer_field="answer")
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"question": "Plain?", "answer": "7"}, gsm])
    for cfg, index in ((named, 0), (MathDataConfig(source=str(mixed)), 1)):
        problems, _ = load_problems(cfg)
        p = problems[index]
        assert (p.answer, p.final) == ("26", "\\boxed{26}")
        assert p.steps == ("16 - 3 = 13 eggs.\n", "13 * 2 = 26 dollars.\n")
    assert load_problems(MathDataConfig(source=str(mixed)))[0][0].answer == "7"
    # beside a solution field the '#### N' line gives the answer alone; the solution stays the reference
    row = {"question": "Eggs?", "solution": "Count them.\n\n\\boxed{26}", "answer": gsm["answer"]}
    named = {"question_field": "question", "solution_field": "solution", "answer_field": "answer"}
    (p,), _ = load_problems(MathDataConfig(source=str(write_jsonl(tmp_path / "s.jsonl", [row])), **named))
    assert (p.answer, p.steps) == ("26", ("Count them.\n\n",))


def test_a_nan_from_a_table_is_a_missing_value_not_the_text_nan():
    """parquet, pandas and HF datasets store a missing number as NaN (JSON Lines refuse it), which was
    read as the answer 'nan' and the band 'nan'; it is now a bad row, as null is."""
    from atesd.tasks.rows import resolve_fields, row_problem

    def problem(row, **cfg):
        data = MathDataConfig(source="rows.parquet", **cfg)
        return row_problem(row, resolve_fields(data, row), data, {}, "b")

    assert problem({"problem": "A?", "answer": 5.0, "rating": 1.0}, band_field="rating").band == "1"
    with pytest.raises(ValueError, match="no 'solution' or 'answer' field with text"):
        problem({"problem": "B?", "answer": float("nan")})
    with pytest.raises(ValueError, match="field 'answer' is null"):
        problem({"problem": "B?", "answer": float("nan")}, question_field="problem", answer_field="answer")
    with pytest.raises(ValueError, match="the band field 'rating' .* is null"):
        problem({"problem": "C?", "answer": 6.0, "rating": np.float32("nan")}, band_field="rating")
    # a NaN answer beside a solution is an absent answer: the solution's box gives it
    assert problem({"problem": "D?", "solution": "So \\boxed{4}", "answer": float("nan")}).answer == "4"


def test_benchmark_rows_may_name_the_question_problem_or_question(tmp_path):
    """format=benchmark refused rows keyed `question` (its docs say `problem` or `question`), and a
    file mixing the two failed at its first row of the other kind."""
    path = write_jsonl(
        tmp_path / "b.jsonl", [{"problem": "P?", "answer": "1"}, {"question": "Q?", "answer": "2"}]
    )
    for fmt in ("auto", "benchmark"):
        problems, _ = load_problems(MathDataConfig(source=str(path), format=fmt))
        assert [(p.question.split("\n")[0], p.answer) for p in problems] == [("P?", "1"), ("Q?", "2")]


def test_an_empty_source_is_refused_in_one_line():
    """Path("") is the current folder: an empty source was read as a folder of data files and failed
    inside `datasets`."""
    with pytest.raises(ValueError, match="source is empty"):
        MathDataConfig(source=" ")


def test_a_folder_of_files_with_other_columns_is_one_line(tmp_path, hf_datasets):
    """`datasets` raised its DatasetGenerationError (a CastError inside), a traceback out of eval.py."""
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"problem": "P?", "answer": "1"}])
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"question": "Q?", "answer": "2", "x": 3}])
    with pytest.raises(ValueError, match=r"d\[train\]: its files do not read as one table \(CastError"):
        load_problems(MathDataConfig(source=str(tmp_path / "d")))
