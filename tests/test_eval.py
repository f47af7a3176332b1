"""The evaluation metrics against hand-computed values and brute force, and recipes/eval.py end to end."""

import itertools
import json
import math

import pytest

from atesd.evaluation import Vote, average_at_k, format_rate, majority_vote, pass_at_k, summarize
from atesd.models import save_pretrained
from atesd.tasks.base import Verdict
from recipes.eval import main


def _verdict(correct: bool, predicted: str | None, answer_correct: bool | None = None) -> Verdict:
    ok = correct if answer_correct is None else answer_correct
    return Verdict(correct=correct, answer_correct=ok, path_valid=correct, predicted=predicted)


# ---- pass@k -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 1 - math.comb(3, 2) / math.comb(5, 2)),  # 1 - 3/10 = 0.7
        (5, 0, 3, 0.0),  # nothing correct
        (5, 4, 2, 1.0),  # n - c = 1 < k: every pair holds a correct sample
        (5, 5, 5, 1.0),
        (12, 3, 4, 1 - math.comb(9, 4) / math.comb(12, 4)),  # 1 - 126/495
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_brute_force_over_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 10, 500) == pytest.approx(1 - math.comb(990, 500) / math.comb(1000, 500))


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---- Average@k, majority vote, format rate ----------------------------------------------------
def test_average_at_k_by_hand():
    assert average_at_k([[True, False, False, True], [True, True, True, True]]) == pytest.approx(0.75)
    # unequal sample counts: each problem weighs the same, (1 + 1/3) / 2
    assert average_at_k([[True], [False, False, True]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        average_at_k([[True], []])


def test_majority_vote_by_hand():
    assert majority_vote(["3", "5", " 3", None], [True, False, True, False]) == Vote("3", 2, True)
    assert majority_vote(["5", None, "5", "3"], [False, False, False, True]) == Vote("5", 2, False)
    # a tie goes to the answer seen first, in either order
    assert majority_vote(["5", "3", "3", "5"], [False, True, True, False]) == Vote("5", 2, False)
    assert majority_vote(["3", "5", "5", "3"], [True, False, False, True]) == Vote("3", 2, True)
    # no extractable answer: no vote, counted wrong
    assert majority_vote([None, None], [False, False]) == Vote(None, 0, False)
    # a normalising key merges equal answers written differently
    assert majority_vote(["x", "y", "X"], [False, True, False], key=str.lower) == Vote("x", 2, False)
    # ... but answers the grader tells apart stay apart, in any order (gold 0.1: 10% right, 10 wrong)
    key = lambda a: a.rstrip("%")  # noqa: E731  (a normaliser that drops percent signs)
    assert majority_vote(["10", "10%", "10%"], [False, True, True], key=key) == Vote("10", 2, True)
    assert majority_vote(["10%", "10", "10"], [True, False, False], key=key) == Vote("10", 2, False)
    with pytest.raises(ValueError):
        majority_vote(["3"], [True, False])


def test_format_rate_by_hand():
    verdicts = [
        _verdict(True, "3"),
        _verdict(False, "4"),  # wrong but extractable
        _verdict(False, None),  # nothing to grade
        Verdict(correct=False, answer_correct=False, path_valid=True, predicted=None),  # a valid path
    ]
    assert format_rate(verdicts) == pytest.approx(0.75)
    assert math.isnan(format_rate([]))


def test_summarize_by_hand():
    verdicts = [
        [_verdict(True, "1"), _verdict(False, "2"), _verdict(True, "1")],  # c = 2, majority "1" right
        [_verdict(False, None), _verdict(False, "7"), _verdict(False, None)],  # c = 0, majority "7" wrong
    ]
    out = summarize(verdicts, [1, 2, 3, 4])
    assert out["problems"] == 2 and out["n"] == 3
    assert out["avg_at_n"] == pytest.approx((2 / 3 + 0) / 2)
    assert list(out["pass_at"]) == [1, 2, 3]  # k = 4 > n left out
    assert out["pass_at"][2] == pytest.approx((1 + 0) / 2)  # n - c = 1 < 2 for the first problem
    assert out["maj_at_n"] == pytest.approx(0.5)
    assert out["answer_avg_at_n"] == out["avg_at_n"]  # here the answer alone decides
    assert out["format_rate"] == pytest.approx(4 / 6)
    # a right answer on an invalid path: wrong for Average@n, right for the vote (tie: first seen)
    out = summarize([[_verdict(False, "1", answer_correct=True), _verdict(False, "2")]], [1])
    assert (out["avg_at_n"], out["answer_avg_at_n"], out["maj_at_n"]) == (0.0, 0.5, 1.0)


# ---- recipes/eval.py --------------------------------------------------------------------------
def _args(model_dir, out_dir, seed: int) -> list[str]:
    return [
        "--model", str(model_dir), "--seed", str(seed), "--pass-k", "1,2,8", "--greedy",
        "--set", f"out_dir={out_dir}", "--set", "real.task.chain_lengths=[0,3]",
        "--set", "real.task.bag_sizes=[0,2]", "--set", "real.task.bands=[[3,0],[0,2]]",
        "--set", "real.task.eval_size=3", "--set", "real.task.probe_size=2",
        "--set", "sampling.samples=4", "--set", "sampling.max_new_tokens=12",
        "--set", "sampling.batch_size=5",
    ]  # fmt: skip


def _read(run_dir):
    lines = [json.loads(line) for line in (run_dir / "problems.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    for volatile in ("seconds", "run_dir"):
        summary.pop(volatile)
    return lines, summary


def test_eval_main_writes_its_files_and_repeats_under_a_seed(tiny_model, tokenizer, tmp_path):
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    first = main(_args(tmp_path / "model", tmp_path / "runs", seed=3))
    again = main(_args(tmp_path / "model", tmp_path / "runs", seed=3))
    other = main(_args(tmp_path / "model", tmp_path / "runs", seed=4))
    assert len({first, again, other}) == 3 and first.name.startswith("eval__synthetic__")
    config = json.loads((first / "config.json").read_text())
    assert config["resolved"] == {"samples": 4, "max_new_tokens": 12} and config["pass_k"] == [1, 2, 8]

    lines, summary = _read(first)
    assert [(r["set"], r["index"]) for r in lines] == [(s, i) for s in ("C3", "B2") for i in range(3)]
    for r in lines:
        assert {"id", "band", "question", "gold", "n", "c", "pass_at", "majority", "greedy"} <= set(r)
        assert r["n"] == len(r["samples"]) == 4 and r["c"] == sum(s["correct"] for s in r["samples"])
        assert set(r["pass_at"]) == {"1", "2"}  # 8 > n left out
        assert all(len(s["text"]) <= 12 and s["num_tokens"] <= 12 for s in r["samples"])
        for s in r["samples"]:
            assert {"text", "predicted", "correct", "answer_correct", "has_answer", "finished"} <= set(s)
    assert set(summary["sets"]) == {"C3", "B2"} and summary["completions"] == 2 * 3 * 4
    for metrics in (*summary["sets"].values(), summary["all"]):
        assert {"problems", "n", "avg_at_n", "pass_at", "maj_at_n", "format_rate", "greedy_accuracy"} <= set(
            metrics
        )
    avg = sum(r["c"] / r["n"] for r in lines) / len(lines)
    assert summary["all"]["avg_at_n"] == pytest.approx(avg) == pytest.approx(summary["all"]["pass_at"]["1"])

    assert _read(again) == (lines, summary)  # the same seed: the same samples, grades and metrics
    texts = [s["text"] for r in lines for s in r["samples"]]
    assert texts != [s["text"] for r in _read(other)[0] for s in r["samples"]]


def test_eval_rejects_bad_input_in_one_line(tmp_path, capsys):
    for argv, message in (
        (["--set", "sampling.sample=3"], "did you mean 'sampling.samples'"),
        (["--task", "nope"], "unknown data source 'nope'"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--set", f"out_dir={tmp_path}"])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []  # no husk directory


def test_eval_reads_a_jsonl_with_the_real_data_settings(tmp_path):
    """eval.py takes `real.data.*` as run.py does: another JSONL's field names, another instruction."""
    import recipes.eval as ev
    from atesd import config as cfglib

    rows = tmp_path / "qa.jsonl"
    rows.write_text(
        json.dumps({"q": "What is 2+2?", "a": "4"}) + "\n" + json.dumps({"q": "1+1?", "a": "2"}) + "\n"
    )
    overrides = [f"task={rows}", "real.data.format=fields", "real.data.question_field=q",
                 "real.data.answer_field=a", "real.data.instruction=Answer in a box."]  # fmt: skip
    task = ev.load_task(cfglib.load(ev.EvalConfig, None, overrides))
    (problems,) = task.eval_sets().values()
    assert [p.answer for p in problems] == ["4", "2"]
    assert all(p.question.endswith("Answer in a box.") for p in problems)
