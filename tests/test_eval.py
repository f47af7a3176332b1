"""The evaluation metrics against hand-computed values and brute force, and recipes/eval.py end to end."""

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import recipes.eval as ev
from atesd.builder import build_backend
from atesd.eval_records import generate, problem_record, sample_record
from atesd.evaluation import Vote, average_at_k, format_rate, majority_vote, pass_at_k, summarize
from atesd.exposure import ExposureConfig, PromptBuilder
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


def test_eval_main_writes_its_files_and_repeats_under_a_seed(tiny_model, tokenizer, tmp_path, monkeypatch):
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
    listed = sorted(p.name for p in first.iterdir())  # inputs.json: the model folder's files, for a resume
    assert listed == [".lock", "config.json", "inputs.json", "problems.jsonl", ev.SUMMARY]

    # the random model solves nothing (every metric 0): a sampler that answers every third prompt with
    # its reference solution makes the summary's agreement with the lines' counts tell
    eval_cfg = ev.resolve_config(ev.parse_args(_args(tmp_path / "model", tmp_path / "runs", seed=3)))
    task = ev.load_task(eval_cfg)
    builder = PromptBuilder(tokenizer, task.prompt_format, ExposureConfig(student_thinking=True))
    gold = {tuple(builder.encode(builder.student_prompt(p))): p.solution
            for problems in task.eval_sets().values() for p in problems}  # fmt: skip

    def some_solved(backend, tok, prompts, params, batch_size, generator, on_batch=None):
        out = generate(backend, tok, prompts, params, batch_size, generator, on_batch)
        return [dataclasses.replace(r, text=gold[tuple(p)]) if k % 3 == 0 else r
                for k, (p, r) in enumerate(zip(prompts, out, strict=True))]  # fmt: skip

    monkeypatch.setattr(ev, "generate", some_solved)
    lines, summary = _read(main(_args(tmp_path / "model", tmp_path / "runs", seed=5)))
    counts = [r["c"] for r in lines]
    assert counts == [sum(s["correct"] for s in r["samples"]) for r in lines]
    assert 0 < sum(counts) < 4 * len(lines) and len(set(counts)) > 1  # some solved, not all, unevenly
    avg = sum(r["c"] / r["n"] for r in lines) / len(lines)
    assert summary["all"]["avg_at_n"] == pytest.approx(avg) == pytest.approx(summary["all"]["pass_at"]["1"])
    for name, metrics in summary["sets"].items():
        mine = [r for r in lines if r["set"] == name]
        assert metrics["avg_at_n"] == pytest.approx(np.mean([r["c"] / r["n"] for r in mine]))
        assert metrics["greedy_accuracy"] == pytest.approx(np.mean([r["greedy"]["correct"] for r in mine]))
    assert 0 < summary["all"]["greedy_accuracy"] < 1


def _reference(argv: list[str]) -> tuple[list[dict], dict]:
    """The evaluation as eval.py ran it before it went chunk by chunk (its sample_sets and grade_all):
    all n x P samples in one stream of sampler batches, then every greedy completion, graded at the
    end. Returns problems.jsonl's lines and the summary's metrics and counts."""
    cfg = ev.resolve_config(ev.parse_args(argv))
    task = ev.load_task(cfg)
    model, tokenizer = ev.load_model(cfg)
    n, max_new_tokens = cfg.sampling.resolved(cfg.synthetic)
    ks, key, batch_size = [k for k in (1, 2, 8) if k <= n], ev.answer_key(cfg), cfg.sampling.batch_size
    builder = PromptBuilder(tokenizer, task.prompt_format, ExposureConfig(student_thinking=True))
    items = [(name, i, p) for name, problems in task.eval_sets().items() for i, p in enumerate(problems)]
    prompts = [builder.encode(builder.student_prompt(p)) for _, _, p in items]
    backend = build_backend(cfg.real, model, tokenizer, cfg.sampling)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(cfg.seed).generate_state(1)[0]))
    flat = [ids for ids in prompts for _ in range(n)]
    rollouts = generate(backend, tokenizer, flat, cfg.sampling.at(max_new_tokens), batch_size, generator)
    greedy = generate(backend, tokenizer, prompts, cfg.sampling.at(max_new_tokens, True), batch_size, None)
    lines, graded_sets = [], {}
    for j, (name, i, problem) in enumerate(items):
        graded = [(r, task.verify(problem, r.text)) for r in rollouts[j * n : (j + 1) * n]]
        record = problem_record(name, i, problem, graded, ks, key)
        verdict = task.verify(problem, greedy[j].text)
        lines.append(json.loads(json.dumps(record | {"greedy": sample_record(greedy[j], verdict)})))
        graded_sets.setdefault(name, []).append(([v for _, v in graded], verdict.correct))

    def metrics(rows):
        out = summarize([v for v, _ in rows], ks, key)
        out["pass_at"] = {str(k): v for k, v in out["pass_at"].items()}
        return out | {"greedy_accuracy": float(np.mean([g for _, g in rows]))}

    summary = {name: metrics(rows) for name, rows in graded_sets.items()}
    return lines, {
        "sets": summary,
        "all": metrics([row for rows in graded_sets.values() for row in rows]),
        "completions": len(rollouts),
        "tokens": sum(r.num_tokens for r in rollouts),
        "truncated_rate": float(np.mean([not r.finished for r in rollouts])),
    }


@pytest.mark.parametrize("batch_size", [5, 3, 1])  # chunks of 5 + 1, 3 + 3 and 1 x 6 problems (n = 4)
def test_eval_chunk_by_chunk_equals_one_stream_over_all_samples(tiny_model, tokenizer, tmp_path, monkeypatch,
                                                                 batch_size):  # fmt: skip
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    args = [
        *_args(tmp_path / "model", tmp_path / "runs", seed=3),
        "--set",
        f"sampling.batch_size={batch_size}",
    ]
    want_lines, want = _reference(args)
    lines, summary = _read(main(args))
    assert lines == want_lines
    assert {k: summary[k] for k in want} == want
    # the test can tell: chunks that split a sampler batch (n = 4 samples of 1 problem per call) draw
    # other samples from the same generator
    monkeypatch.setattr(ev, "chunk_problems", lambda n, batch_size: 1)
    split = _read(main(args))[0]
    texts = [[s["text"] for s in r["samples"]] for r in lines]
    assert (batch_size == 1) == (texts == [[s["text"] for s in r["samples"]] for r in split])


def _our_lines(stderr: str) -> str:
    """stderr without the progress bars of HF's weight loading and saving."""
    return "\n".join(line for line in stderr.strip().splitlines() if "it/s]" not in line and line.strip())


def _stop_at(monkeypatch, call: int, stop: type[BaseException]) -> None:
    """Make eval.py's `call`-th sampler call (from 1: chunk 1's samples, its greedy completions,
    chunk 2's samples ...) raise `stop`, as a Ctrl-C or a CUDA OOM would."""
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise stop("stopped by the test")
        return generate(*args, **kwargs)

    monkeypatch.setattr(ev, "generate", stopping)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, torch.OutOfMemoryError])
def test_eval_resume_after_a_stop_equals_an_uninterrupted_run(tiny_model, tokenizer, tmp_path, monkeypatch,
                                                              capsys, stop):  # fmt: skip
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    args = _args(tmp_path / "model", tmp_path / "runs", seed=3)  # 6 problems, chunks of 5 + 1
    _stop_at(monkeypatch, 3, stop)  # chunk 1 written, stopped while sampling chunk 2
    with pytest.raises(SystemExit if stop is KeyboardInterrupt else stop) as exc:
        main(args)
    (run_dir,) = (tmp_path / "runs").iterdir()
    err = _our_lines(capsys.readouterr().err)
    line = (
        f"5 of 6 problems done, kept in {run_dir}; continue with: python recipes/eval.py --resume {run_dir}"
    )
    assert err == (f"interrupted: {line}" if stop is KeyboardInterrupt else line)
    assert stop is not KeyboardInterrupt or exc.value.code == 130
    kept = [".lock", "config.json", "inputs.json", "problems.jsonl", ev.STATE]
    assert sorted(p.name for p in run_dir.iterdir()) == kept
    written = (run_dir / "problems.jsonl").read_text().splitlines(keepends=True)
    assert len(written) == 5
    with (run_dir / "problems.jsonl").open("a") as fh:  # a line past the saved state, and a torn one
        fh.write(written[0] + '{"set": "B2", "ind')
    monkeypatch.undo()

    assert main(["--resume", str(run_dir)]) == run_dir
    listed = sorted(p.name for p in run_dir.iterdir())
    assert listed == [".lock", "config.json", "inputs.json", "problems.jsonl", "summary.json"]
    assert _read(run_dir) == _read(main(args))


@pytest.mark.parametrize(
    ("stop", "call"), [(KeyboardInterrupt, 1), (KeyboardInterrupt, 2), (RuntimeError, 1)]
)
def test_eval_stopped_before_any_problem_leaves_no_directory(tiny_model, tokenizer, tmp_path, monkeypatch,
                                                              capsys, stop, call):  # fmt: skip
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    _stop_at(monkeypatch, call, stop)  # call 2: chunk 1 sampled, stopped in its greedy completions
    with pytest.raises(SystemExit if stop is KeyboardInterrupt else stop) as exc:
        main(_args(tmp_path / "model", tmp_path / "runs", seed=3))
    assert not (tmp_path / "runs").exists()  # the directory, and the runs/ made for it
    err = _our_lines(capsys.readouterr().err)
    if stop is KeyboardInterrupt:
        assert exc.value.code == 130 and err == "interrupted: stopped by Ctrl-C before any problem was done"
    else:
        assert err == ""


def _stopped_after_3(tiny_model, tokenizer, tmp_path, monkeypatch) -> tuple[list[str], Path]:
    """An evaluation (seed 3) stopped by Ctrl-C after its third chunk: its argv and directory."""
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    args = _args(tmp_path / "model", tmp_path / "runs", seed=3)
    _stop_at(monkeypatch, 3, KeyboardInterrupt)
    with pytest.raises(SystemExit):
        main(args)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    return args, run_dir


def test_eval_resume_refuses_another_config_and_what_it_cannot_continue(tiny_model, tokenizer, tmp_path,
                                                                         monkeypatch, capsys):  # fmt: skip
    args, run_dir = _stopped_after_3(tiny_model, tokenizer, tmp_path, monkeypatch)
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    def refused(argv: list[str], code: int = 2) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = _our_lines(capsys.readouterr().err)
        assert exc.value.code == code and "\n" not in err, err
        return err

    seed4 = _args(tmp_path / "model", tmp_path / "runs", seed=4)
    for argv, keys in (
        (seed4, "seed"),
        ([*args, "--set", "sampling.batch_size=4"], "sampling.batch_size"),
        ([*args, "--set", "real.task.eval_size=4", "--pass-k", "1"], "pass_k, real.task.eval_size"),
        (["--seed", "4"], "seed"),  # a flag alone goes on top of DIR's config: only its key differs
    ):
        err = refused([*argv, "--resume", str(run_dir)])
        assert f"the given config differs from the evaluation's in {keys};" in err, err
    err = refused(["real.engine.lr=3e-4", "--resume", str(run_dir)])  # read by no evaluation, resumed too
    assert "real.engine.lr: eval.py does not read real.engine.*" in err, err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept  # a refusal touches nothing
    husk = tmp_path / "husk"  # a directory whose evaluation finished no chunk (as a crash leaves none)
    husk.mkdir()
    (husk / "config.json").write_bytes(kept["config.json"])
    assert "nothing to resume (no sampling_state.json: no problem was done)" in refused(
        ["--resume", str(husk)]
    )
    assert "not an eval.py directory" in refused(["--resume", str(tmp_path / "nope")])
    assert not (tmp_path / "nope").exists()
    from recipes._rundir import run_lock

    with run_lock(run_dir):  # as a live evaluation holds it: a second one would append to its files
        assert "is being evaluated by another process (pid " in refused(["--resume", str(run_dir)])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept
    # other weights at the model's path: the results mixed two models (inputs.json, as run.py's)
    weights = tmp_path / "model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + bytes(4))
    err = refused(["--resume", str(run_dir)])
    assert f"real.hf.name_or_path {tmp_path / 'model'}" in err and "changed since the run started" in err, err
    weights.write_bytes(original)

    # the command that started it, with --resume: out_dir changes no result
    elsewhere = tmp_path / "elsewhere"
    assert main([*args, "--set", f"out_dir={elsewhere}", "--resume", str(run_dir)]) == run_dir
    assert not elsewhere.exists() and (run_dir / "summary.json").exists()
    finished = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["--resume", str(run_dir)]) == run_dir  # exit 0
    assert (
        f"{run_dir} is finished (summary.json holds its results); nothing to resume"
        in capsys.readouterr().out
    )
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == finished


def test_eval_rejects_bad_input_in_one_line(tmp_path, capsys):
    for argv, message in (
        (["--set", "sampling.sample=3"], "did you mean 'sampling.samples'"),
        (["--task", "nope"], "unknown data source 'nope'"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--set", f"out_dir={tmp_path}"])
        out, err = capsys.readouterr()
        err = _our_lines(err)
        assert exc.value.code == 2 and message in err and "\n" not in err, err
        assert "eval directory" not in out  # no directory named that is then removed
    assert list(tmp_path.iterdir()) == []  # no husk directory


def test_eval_refuses_the_training_engines_keys_it_never_read(tmp_path, capsys):
    """eval.py samples with sampling.*: a real.engine.* key (`real.engine.sampling.max_new_tokens=8`)
    was accepted and changed nothing, and --help listed them all."""
    (tmp_path / "engine.yaml").write_text("real:\n  engine:\n    batch_size: 2\n")
    for argv, message in (
        (["--set", "real.engine.sampling.max_new_tokens=8"], "real.engine.sampling.max_new_tokens: eval.py "
         "does not read real.engine.* (the training engine's settings); it samples with "
         "sampling.max_new_tokens"),
        (["real.engine.lr=3e-4"], "real.engine.lr: eval.py does not read real.engine.*"),
        (["--config", str(tmp_path / "engine.yaml")], "real.engine.batch_size: eval.py does not read"),
        (["real.data.eval_size=50"], "real.data.eval_size: eval.py does not read it (every row of a math "
         "task is evaluated; max_problems=N takes the first N of each set)"),
        (["real.task_kind=math"], "real.task_kind: eval.py does not read it"),
        (["real.data.seed=3"], "real.data.seed: eval.py does not read it (every row is evaluated"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--set", f"out_dir={tmp_path / 'out'}"])
        err = _our_lines(capsys.readouterr().err)
        assert exc.value.code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    shown = capsys.readouterr().out
    assert exc.value.code == 0 and "real.engine." not in shown and "real.data.eval_size" not in shown
    assert "sampling.max_new_tokens = 0" in shown and "real.task.eval_size = " in shown


def test_eval_reads_a_jsonl_with_the_real_data_settings(tmp_path):
    """eval.py takes `real.data.*` as run.py does: another JSONL's field names, another instruction."""
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


def test_eval_reads_the_benchmarks_own_split_not_the_training_datas(tmp_path):
    """A training config that says split train evaluating --task gsm8k_test reads gsm8k_test.jsonl
    (the split picks the data_dir file: the training split would have scored the training file)."""
    from atesd import config as cfglib

    row = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2.\n#### 2"}
    (tmp_path / "gsm8k_train.jsonl").write_text((json.dumps(row) + "\n") * 3)
    (tmp_path / "gsm8k_test.jsonl").write_text(json.dumps(row) + "\n")
    overrides = ["task=gsm8k_test", f"data_dir={tmp_path}", "real.data.source=gsm8k", "real.data.split=train"]
    (problems,) = ev.load_task(cfglib.load(ev.EvalConfig, None, overrides)).eval_sets().values()
    assert len(problems) == 1 and problems[0].meta["source"].endswith("gsm8k_test.jsonl")
    same = ["task=gsm8k", f"data_dir={tmp_path}", "real.data.source=gsm8k", "real.data.split=test"]
    (problems,) = ev.load_task(cfglib.load(ev.EvalConfig, None, same)).eval_sets().values()
    assert len(problems) == 1  # the training source itself keeps the split it was given


def test_eval_bands_and_limits_rows_as_given_for_the_task_not_as_a_training_config(tmp_path):
    """A training config's max_rows and band (another source's) evaluated 3 rows of 10 under the
    training band's name; real.data.band_field given for the task was dropped (one band)."""
    task = tmp_path / "bench.jsonl"
    task.write_text("".join(json.dumps({"problem": f"P{i}?", "answer": str(i), "level": f"L{i % 2}"}) + "\n"
                            for i in range(10)))  # fmt: skip
    (tmp_path / "train.yaml").write_text("real:\n  data:\n    source: opsd\n    max_rows: 3\n    band: mix\n")
    for argv, sizes in (
        (["--config", str(tmp_path / "train.yaml")], {"bench": 10}),
        (["--set", "real.data.band_field=level"], {"L0": 5, "L1": 5}),
        (["--set", "real.data.max_rows=4", "--set", "real.data.band=mine"], {"mine": 4}),
    ):
        cfg = ev.resolve_config(ev.parse_args(["--task", str(task), *argv]))
        sets = ev.load_task(cfg).eval_sets()
        assert {band: len(rows) for band, rows in sets.items()} == sizes, argv


def test_eval_keeps_the_split_given_for_the_task(tmp_path, monkeypatch, capsys):
    """real.data.split / hf_name given without a source are the task's: `--task gsm8k --set
    real.data.split=test` read gsm8k_train.jsonl, `--task openai/gsm8k` with split test and hf_name
    main resolved to split train and no config name."""
    from atesd.tasks import math as mathlib

    row = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2.\n#### 2"}
    (tmp_path / "gsm8k_train.jsonl").write_text((json.dumps(row) + "\n") * 3)
    (tmp_path / "gsm8k_test.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "test.yaml").write_text("task: gsm8k\nreal:\n  data:\n    split: test\n")
    for argv in (
        ["--task", "gsm8k", "--set", "real.data.split=test", "--data-dir", str(tmp_path)],
        ["--config", str(tmp_path / "test.yaml"), "--data-dir", str(tmp_path)],
    ):
        (problems,) = ev.load_task(ev.resolve_config(ev.parse_args(argv))).eval_sets().values()
        assert len(problems) == 1 and problems[0].meta["source"].endswith("gsm8k_test.jsonl"), argv
    monkeypatch.setattr(
        mathlib.MathTask, "from_config", lambda data, grade_cfg=None: data
    )  # the data it would read
    argv = ["--task", "openai/gsm8k", "--set", "real.data.split=test", "--set", "real.data.hf_name=main"]
    data = ev.load_task(ev.resolve_config(ev.parse_args(argv)))
    assert (data.source, data.split, data.hf_name) == ("openai/gsm8k", "test", "main")
    with pytest.raises(SystemExit):
        ev.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "gsm8k (its train split), gsm8k_test, opsd, an HF dataset id (owner/name) or a .jsonl" in shown


def test_eval_refuses_an_empty_resume(tmp_path, capsys):
    """`--resume ""` started a new evaluation (here: a bad task's error) instead of refusing."""
    with pytest.raises(SystemExit) as exc:
        main(["--resume", "", "--task", "nope", "--set", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--resume takes an eval directory, not an empty value" in err, err
    assert not (tmp_path / "out").exists()


def test_eval_resume_follows_its_device_advice(tiny_model, tokenizer, tmp_path, monkeypatch, capsys):
    """The device-mismatch refusal advised real.device=X, which resume_config then refused as a
    changed key; real.device given on --resume is now used (restore checks the device type)."""
    args, run_dir = _stopped_after_3(tiny_model, tokenizer, tmp_path, monkeypatch)
    state, config = run_dir / ev.STATE, run_dir / "config.json"
    kept = state.read_text()
    state.write_text(kept.replace('"device": "cpu"', '"device": "cuda"'))  # as if sampled on a GPU
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--resume", str(run_dir)])
    err = _our_lines(capsys.readouterr().err)
    assert (
        f"it was sampled on cuda, this run samples on cpu; continue it on cuda with: python "
        f"recipes/eval.py --resume {run_dir} real.device=cuda" in err
    ), err
    state.write_text(kept)
    # the evaluation's config names a device this machine lacks; the one given on --resume is used
    stored = json.loads(config.read_text())
    assert stored["real"]["device"] == "auto"
    stored["real"]["device"] = "cuda"
    config.write_text(json.dumps(stored))
    assert main(["--resume", str(run_dir), "real.device=cpu"]) == run_dir
    assert _read(run_dir) == _read(main(args))


def test_eval_reads_its_own_config_json_as_a_config(tiny_model, tokenizer, tmp_path):
    """config.json held real.engine.* and `resolved`, which --config refused: it now repeats the
    evaluation, as does an older one that holds the training engine's defaults."""
    from atesd import config as cfglib
    from atesd.builder import RealConfig

    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    first = main(_args(tmp_path / "model", tmp_path / "runs", seed=3))
    record = json.loads((first / "config.json").read_text())
    assert "engine" not in record["real"] and "resolved" in record
    again = main(["--config", str(first / "config.json")])
    assert again != first and _read(again) == _read(first)
    record["real"]["engine"] = cfglib.to_dict(RealConfig().engine)  # as older versions wrote it
    (tmp_path / "older.json").write_text(json.dumps(record))
    assert _read(main(["--config", str(tmp_path / "older.json")])) == _read(first)


def test_eval_takes_overrides_between_the_flags():
    """`--task synthetic seed=1 --greedy sampling.samples=2` was 'unrecognized arguments'."""
    cfg = ev.resolve_config(
        ev.parse_args(["--task", "synthetic", "seed=1", "--greedy", "sampling.samples=2"])
    )
    assert (cfg.task, cfg.seed, cfg.greedy, cfg.sampling.samples) == ("synthetic", 1, True, 2)


def test_eval_table_prints_brackets_as_text(monkeypatch, capsys):
    """On a terminal the caption and set names were rich markup: runs/[ablation]/final_model printed
    as runs//final_model, and a [/x] raised MarkupError."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    metrics = {"problems": 2, "avg_at_n": 0.5, "pass_at": {"1": 0.5}, "maj_at_n": 0.5, "format_rate": 1.0}
    summary = {"sampling": {"samples": 4}, "sets": {"[b]set": metrics}, "all": metrics, "completions": 8,
               "model": "runs/[ablation]/final_model", "task": "[/x]", "seconds": 1.0,
               "run_dir": "r"}  # fmt: skip
    ev.print_table(summary)
    shown = "".join(re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).split())
    assert "runs/[ablation]/final_modelon[/x]:8completions" in shown and "[b]set" in shown, shown


def test_a_set_named_all_is_not_the_overall_row():
    """A band named 'all' printed two rows labelled 'all': its own and the one over every set."""
    one = {"problems": 2, "avg_at_n": 0.5, "pass_at": {"1": 0.5}, "maj_at_n": 0.5, "format_rate": 1.0}
    every = one | {"problems": 4, "avg_at_n": 0.75}
    summary = {"sampling": {"samples": 4}, "sets": {"all": one, "hard": one}, "all": every}
    _, rows = ev.table_rows(summary)
    assert [r[:2] for r in rows] == [["all", "2"], ["hard", "2"], ["(every set)", "4"]]
    _, rows = ev.table_rows(summary | {"sets": {"hard": one}})
    assert [r[:2] for r in rows] == [["hard", "2"], ["all", "4"]]


def test_eval_names_out_dir_when_it_cannot_make_its_directory(tmp_path, capsys):
    """out_dir=<a file> said `error: [Errno 17] File exists: '<file>'`, naming no setting."""
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        with pytest.raises(SystemExit) as exc:
            main(["--set", f"out_dir={out}"])
        err = _our_lines(capsys.readouterr().err)
        assert exc.value.code == 2 and f"out_dir={out}: the eval directory cannot be made there" in err, err
        assert "give out_dir a folder" in err and "\n" not in err


def test_eval_writes_config_json_whole(tiny_model, tokenizer, tmp_path, monkeypatch):
    """config.json goes through the atomic writer (a crash leaves none or all of it), as the state
    and summary do; it was written in place with write_text."""
    save_pretrained(tiny_model, tokenizer, tmp_path / "model")
    written, write_atomic = [], ev.write_atomic

    def recording(path, text):
        written.append(path.name)
        write_atomic(path, text)

    monkeypatch.setattr(ev, "write_atomic", recording)
    run_dir = main(_args(tmp_path / "model", tmp_path / "runs", seed=3))
    assert written == ["config.json", ev.SUMMARY]
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 3


def test_eval_grading_is_configured_and_each_samples_method_recorded(tmp_path, monkeypatch):
    """The grading settings were in no config (math-verify could not be required, so without the
    [eval] extra paper numbers were string-graded, said once in the log) and problems.jsonl and
    summary.json did not say how each sample was decided (math-verify, string, timeout)."""
    import sys

    from atesd import config as cfglib
    from atesd import grading
    from atesd.eval_records import Rollout

    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"problem": "What is 1/2 + 0?", "answer": "\\frac{1}{2}"}) + "\n")
    cfg = cfglib.load(ev.EvalConfig, None, [f"task={rows}", "grading.math_verify=off", "grading.timeout_s=2"])
    task = ev.load_task(cfg)
    assert task.grade_cfg == grading.GradeConfig(timeout_s=2, math_verify="off", bare_answer_chars=0)
    (problem,) = task.eval_sets()[next(iter(task.eval_sets()))]
    right, wrong = task.verify(problem, "so \\boxed{1/2}"), task.verify(problem, "no box")
    assert (right.correct, right.method, wrong.method) == (True, "string", "no_answer")
    samples = [(Rollout("so \\boxed{1/2}", 5, True), right), (Rollout("no box", 2, True), wrong)]
    record = problem_record("qa", 0, problem, samples, [1], str.strip)
    assert [s["method"] for s in record["samples"]] == ["string", "no_answer"]
    summary = ev.summarize_records([record], ["qa"], [1], str.strip)
    assert summary["graded_by"] == {"no_answer": 1, "string": 1}
    older = {**record, "samples": [{k: v for k, v in s.items() if k != "method"} for s in record["samples"]]}
    summary = ev.summarize_records([record, older | {"index": 1}], ["qa"], [1], str.strip)  # resumed
    assert summary["graded_by"] == {"no_answer": 1, "string": 1, "unrecorded": 2}
    assert "method" not in sample_record(Rollout("x", 1, True), _verdict(True, "x"))  # a task without one
    # require: refused before any sampling where math-verify is not installed
    grading._math_verify_module.cache_clear()
    monkeypatch.setitem(sys.modules, "math_verify", None)
    try:
        with pytest.raises(grading.MathVerifyMissing, match=r"\[eval\]"):
            ev.load_task(cfglib.load(ev.EvalConfig, None, [f"task={rows}", "grading.math_verify=require"]))
    finally:
        grading._math_verify_module.cache_clear()


def test_eval_refuses_torchrun_and_a_data_dir_beside_a_path_task(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank evaluated every problem into a directory of its own (and with
    real.device=auto all on the first GPU); --data-dir beside a task given by path was ignored."""
    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"problem": "What is 2+2?", "answer": "4"}) + "\n")
    cases = [
        ({"WORLD_SIZE": "2"}, [], "eval.py runs as one process, not under torchrun (WORLD_SIZE=2)"),
        ({}, ["--task", str(rows), "--data-dir", str(tmp_path)], "data_dir (" + str(tmp_path) + ") is the "
         "folder of the named benchmarks"),
    ]  # fmt: skip
    for env, argv, message in cases:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--set", f"out_dir={tmp_path / 'out'}"])
        err = _our_lines(capsys.readouterr().err)
        assert exc.value.code == 2 and message in err and "\n" not in err, err
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not (tmp_path / "out").exists()


def test_eval_of_another_task_leaves_the_training_datas_bands(tmp_path):
    """A training config's real.data.band_field (its own data's difficulty field) made an evaluation
    on another file, without that field, refuse every row."""
    from atesd import config as cfglib

    rows = tmp_path / "qa.jsonl"
    rows.write_text(json.dumps({"problem": "What is 2+2?", "answer": "4"}) + "\n")
    overrides = [f"task={rows}", "real.data.source=train.jsonl", "real.data.band_field=level"]
    (problems,) = ev.load_task(cfglib.load(ev.EvalConfig, None, overrides)).eval_sets().values()
    assert [p.answer for p in problems] == ["4"]


def test_the_embedded_model_is_not_evaluated_on_a_math_task(tmp_path, capsys):
    """Without --model it answered gsm8k with text like "AAAA" and reported 0%."""
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--task",
                str(task),
                "--set",
                f"out_dir={tmp_path / 'runs'}",
                "--set",
                "sampling.max_new_tokens=8",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the embedded tiny model only knows the synthetic task" in err, err


def test_data_settings_on_the_synthetic_task_are_refused(tmp_path, capsys):
    """real.data.* on the synthetic task (the default) was read by nothing: `--set real.data.max_rows=5`
    evaluated every problem, and `real.data.source=rows.jsonl` the synthetic task, without a word."""
    for given in (["--set", "real.data.max_rows=5"], ["real.data.source=rows.jsonl"]):
        with pytest.raises(SystemExit) as exc:
            main([*given, "--set", f"out_dir={tmp_path}"])
        err = _our_lines(capsys.readouterr().err)
        assert (
            exc.value.code == 2
            and "sets how a math task's rows are read, but the task is the synthetic" in err
        )
        assert "\n" not in err and list(tmp_path.iterdir()) == []
