"""atesd.tasks.math: the loaders (GSM8K, benchmarks, OPSD, field mapping), segmentation, exact teacher
prompts on real rows, bad-row handling, and the task's grading hooks."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from atesd.exposure import MATH_FORMAT, PromptBuilder
from atesd.tasks.math import (
    BENCHMARKS,
    STUDENT_INSTRUCTION,
    MathDataConfig,
    MathTask,
    load_benchmark,
    load_problems,
    segment,
)

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
    assert task.skipped == 2 and len(task.train) == 2
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
    (tmp_path / "rows.parquet").write_bytes(b"PAR1\x00\x01PAR1")
    (tmp_path / "rows.csv").write_text("problem,answer\n1 + 1?,2\n")
    (tmp_path / "array.json").write_text(json.dumps(rows))
    (tmp_path / "indented.json").write_text(json.dumps(rows, indent=2))
    for name, what in (("rows.parquet", "a .parquet file"), ("rows.csv", "a .csv file"),
                       ("array.json", "a JSON array"), ("indented.json", "a JSON array")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"{name}: {what}; only JSON Lines .* is read") as err:
            load_problems(MathDataConfig(source=str(tmp_path / name)))
        assert "\n" not in str(err.value)
    lines = write_jsonl(tmp_path / "lines.json", rows)  # JSON Lines named .json still reads
    assert [p.answer for p in load_problems(MathDataConfig(source=str(lines)))[0]] == ["2", "4"]
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
