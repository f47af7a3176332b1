"""recipes/branch_alpha.py: its arguments and its paired summary (the runs themselves: BENCHMARKS)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import branch_alpha  # noqa: E402


def test_seeds_parse_like_bench_and_bad_input_is_one_line(tmp_path, capsys):
    assert branch_alpha.seed_list("3") == [0, 1, 2]
    assert branch_alpha.seed_list("100-102") == [100, 101, 102]
    for argv, message in (
        (["--seeds", "5-4"], "gives no seeds"),
        (["--seeds", "a"], "--seeds must be N or A-B"),
        (["--set", "alphas=[0.5,1.5]"], "in [0, 1]"),
        (["--set", "stages=[]"], "stages must be non-empty"),
        (["--set", "real.engine.lrr=1"], "did you mean"),
        (["--config", str(ROOT / "recipes/configs/ci.yaml")], "ci.yaml is a run.py config (it sets name,"),
    ):
        with pytest.raises(SystemExit) as exc:
            branch_alpha.main([*argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    (tmp_path / "afile").write_text("")  # an unusable --out fails before any training, in one line
    with pytest.raises(SystemExit) as exc:
        branch_alpha.main(["--seeds", "1", "--out", str(tmp_path / "afile" / "out")])
    assert exc.value.code == 2 and "afile" in capsys.readouterr().err


def test_the_summary_is_paired_against_the_base_branch():
    def run(start, after):
        return {"stages": {0: {"start": start, "after": dict(zip((0.5, 0.75), after))}}}

    # alpha 0.5 beats 0.75 by exactly 0.1 and 0.2 in two seeds whose starts differ a lot
    runs = [run(0.2, (0.5, 0.4)), run(0.6, (0.9, 0.7))]
    rows = {r["alpha"]: r for r in branch_alpha.summarise(runs, 0.75, [0.5, 0.75], [0])}
    assert rows[0.5]["vs_base"] == pytest.approx(0.15) and rows[0.75]["vs_base"] == 0
    assert rows[0.5]["gain"] == pytest.approx(0.3) and rows[0.5]["n"] == 2
    assert 0 < rows[0.5]["p_better"] < 0.5  # one-sided paired t: better than the base
    assert rows[0.75]["p_better"] != rows[0.75]["p_better"]  # the base against itself: NaN


@pytest.mark.slow
def test_a_tiny_branching_run_writes_its_paired_table(tmp_path, capsys):
    tiny = [
        "real.warmstart.steps=3", "real.warmstart.copy_steps=1", "real.warmstart.batch_size=4",
        "real.warmstart.warmup_steps=1", "real.task.eval_size=4", "real.task.probe_size=2",
        "real.model.num_layers=1", "real.model.hidden_size=32", "real.model.num_heads=2",
        "real.model.num_kv_heads=1", "real.model.intermediate_size=64", "real.engine.batch_size=4",
        "real.engine.sampling.max_new_tokens=16", f"real.cache_dir={tmp_path / 'cache'}",
        "stages=[0,1]", "alphas=[0.5,1]", "branch_windows=1", "hold_steps=1", "threads=1",
    ]  # fmt: skip
    argv = ["--seeds", "100-101", "--out", str(tmp_path / "out")]
    assert branch_alpha.main([*argv, *(a for kv in tiny for a in ("--set", kv))]) == 0
    record = strict_json((tmp_path / "out" / "branch_alpha.json").read_text())
    assert record["seeds"] == [100, 101] and record["config"]["base"] == 0.75
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 2
    assert [(r["stage"], r["alpha"]) for r in record["summary"]] == [
        (s, a) for s in (0, 1) for a in (0.5, 0.75, 1.0)
    ]  # the base is branched too
    assert all(r["n"] == 2 for r in record["summary"])
    assert all(r["vs_base"] == 0 for r in record["summary"] if r["alpha"] == 0.75)
    assert "stage" in capsys.readouterr().out


def strict_json(text: str):
    """json.loads that refuses NaN and infinities (what strict JSON readers do)."""
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))


def test_an_interrupted_branching_keeps_its_seeds_and_resumes_to_the_uninterrupted_record(
    monkeypatch, tmp_path, capsys
):
    state = {"calls": [], "stop_at": None}

    def run_seed(cfg, seed):  # a stand-in for the training: the same numbers for the same seed
        if len(state["calls"]) == state["stop_at"]:
            raise KeyboardInterrupt
        state["calls"].append(seed)
        after = {a: 0.5 + a / 10 + seed / 100 for a in sorted({*cfg.alphas, cfg.base})}
        return {"seed": seed, "stages": {s: {"start": 0.4 + s / 100, "after": after} for s in cfg.stages}}

    monkeypatch.setattr(branch_alpha, "run_seed", run_seed)
    argv = ["--seeds", "0-2", "--set", "stages=[0,3]", "--set", "alphas=[0.5,1]"]
    assert branch_alpha.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = strict_json((tmp_path / "whole" / "branch_alpha.json").read_text())
    part = tmp_path / "part"
    state.update(calls=[], stop_at=1)
    with pytest.raises(SystemExit) as exc:
        branch_alpha.main([*argv, "--out", str(part)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 130 and len(err.splitlines()) == 1, err
    assert f"kept 1 of 3 seeds in {part / 'runs.jsonl'}" in err and f"--resume {part} --seeds 0-2" in err
    with pytest.raises(SystemExit) as exc:  # a differing config is refused, naming the key
        branch_alpha.main(["--resume", str(part), "--seeds", "0-2", "--set", "base=0.5"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "differs" in err and "base" in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as exc:  # other seeds than it was started with
        branch_alpha.main(["--resume", str(part), "--seeds", "0-3"])
    assert exc.value.code == 2 and "it was started with --seeds 0-2, not 0-3" in capsys.readouterr().err
    state.update(calls=[], stop_at=None)
    assert branch_alpha.main(["--resume", str(part), "--seeds", "3"]) == 0  # the same seeds, 0-2
    assert state["calls"] == [1, 2]  # only the seeds it lacked
    (part / "branch_alpha.json").unlink()
    assert branch_alpha.main(["--resume", str(part)]) == 0 and state["calls"] == [1, 2]  # its own seeds
    resumed = strict_json((part / "branch_alpha.json").read_text())
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {
        k: v for k, v in whole.items() if k != "seconds"
    }
    assert all(r["p_better"] is None for r in resumed["summary"] if r["alpha"] == 0.75)  # NaN as null
    assert branch_alpha.main([*argv, "--out", str(part)]) == 0  # a new experiment: part-1, part untouched
    assert (tmp_path / "part-1" / "branch_alpha.json").exists()
    assert strict_json((part / "branch_alpha.json").read_text()) == resumed


def test_an_experiment_stores_its_paths_absolute_and_a_resume_refuses_changed_inputs(
    monkeypatch, tmp_path, capsys
):
    """branch_alpha.py stored real.* paths as given (a --resume from another directory read other
    files) and recorded no inputs.json (a data file changed since the start was mixed into one table), as
    sweep.py does not."""

    def run_seed(cfg, seed):  # a stand-in for the training
        return {
            "seed": seed,
            "stages": {s: {"start": 0.4, "after": {a: 0.5 for a in (0.5, 0.75)}} for s in (0,)},
        }

    monkeypatch.setattr(branch_alpha, "run_seed", run_seed)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text('{"problem": "1+1?", "solution": "2 \\\\boxed{2}"}\n')
    monkeypatch.chdir(tmp_path)
    argv = ["--seeds", "0-1", "--set", "stages=[0]", "--set", "alphas=[0.5]", "--set", "real.cache_dir=cache",
            "--set", "real.task_kind=math", "--set", "real.data.source=data/rows.jsonl",
            "--out", "out"]  # fmt: skip
    assert branch_alpha.main(argv) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["real"]["cache_dir"] == str(tmp_path / "cache")
    assert config["real"]["data"]["source"] == str(tmp_path / "data" / "rows.jsonl")
    assert (tmp_path / "out" / "inputs.json").is_file()
    (tmp_path / "out" / "branch_alpha.json").unlink()  # as if stopped before its table
    (tmp_path / "data" / "rows.jsonl").write_text('{"problem": "2+2?", "solution": "4 \\\\boxed{4}"}\n')
    monkeypatch.chdir(tmp_path / "data")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        branch_alpha.main(["--resume", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "rows.jsonl" in err and "changed" in err and len(err.splitlines()) == 1, (
        err
    )
