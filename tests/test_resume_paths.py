"""A run's local paths and input files across a resume: config.json holds its paths absolute, so a
resume from another directory reads what the run started on (not that directory's files of the same
relative names), and inputs.json refuses a data file or saved controller state changed since."""

import json
import shutil
from pathlib import Path

import pytest
from _helpers import crash_at

import recipes.run as run
from atesd import config as cfglib
from atesd.builder import RealConfig
from atesd.logging import read_jsonl
from atesd.models import HFModelConfig
from atesd.tasks.math import MathDataConfig
from recipes import _rundir, bench
from recipes.common import RealEnvConfig, RunConfig, absolute_paths
from recipes.sweep import SweepConfig, resume_config

MOCK = ["--env", "mock", "mock.total_steps=50", "plots=false"]


def _lines(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(path)]


def _failure(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        run.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


def test_only_local_paths_are_made_absolute(tmp_path, monkeypatch):
    """Inputs that exist here, and the places a run writes to; a named source, a hub id, a missing
    input and out_dir stay as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "ctl.json").write_text("{}")
    cfg = absolute_paths(RunConfig(env="mock", out_dir="runs", controller_init="ctl", bank_dir="bank",
                                   real=RealEnvConfig(cache_dir="cache")))  # fmt: skip
    assert (cfg.out_dir, cfg.controller_init, cfg.bank_dir) == (
        "runs",
        str(tmp_path / "ctl"),
        str(tmp_path / "bank"),
    )
    assert cfg.real.cache_dir == str(tmp_path / "cache") and cfg.real.hf.name_or_path == ""
    real = absolute_paths(RealConfig(data=MathDataConfig(source="data/train.jsonl")))
    assert real.data.source == str(tmp_path / "data" / "train.jsonl") and real.cache_dir == ""
    for source in ("gsm8k", "owner/name", "data/missing.jsonl"):
        assert absolute_paths(RealConfig(data=MathDataConfig(source=source))).data.source == source
    hf = HFModelConfig
    assert absolute_paths(RealConfig(hf=hf(name_or_path="models/tiny"))).hf.name_or_path == str(
        tmp_path / "models" / "tiny"
    )
    assert (
        absolute_paths(RealConfig(hf=hf(name_or_path="Qwen/Qwen3-1.7B"))).hf.name_or_path == "Qwen/Qwen3-1.7B"
    )
    for init in ("auto", "none", "", "nothing/here"):
        assert absolute_paths(RunConfig(env="mock", controller_init=init)).controller_init == init
    # the sweep's config too; and its resume compares a relative path given with the absolute one stored
    sweep = absolute_paths(SweepConfig(real=RealConfig(cache_dir="cache")))
    assert sweep.real.cache_dir == str(tmp_path / "cache")
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfglib.to_dict(sweep)))
    assert resume_config(SweepConfig, out, None, ["real.cache_dir=cache"]) == sweep


def _saved_states(tmp_path: Path) -> dict[str, Path]:
    """Two saved beta_reinforce states of different seeds, each as ctl/controller.* in its own folder."""
    folders = {}
    for name, seed in (("A", 0), ("B", 1)):
        done = run.main(["--controller", "beta_reinforce", *MOCK, "episodes=2", f"--seed={seed}",
                         f"out_dir={tmp_path / 'saved'}"])  # fmt: skip
        state = json.loads((done / "summary.json").read_text())["controller_state"]
        (tmp_path / name / "ctl").mkdir(parents=True)
        for suffix in (".json", ".safetensors"):
            shutil.copy(state + suffix, tmp_path / name / "ctl" / f"controller{suffix}")
        folders[name] = tmp_path / name
    return folders


def test_a_restart_from_another_directory_keeps_the_runs_controller_init_and_bank(tmp_path, monkeypatch):
    """Resumed before its first checkpoint from a directory holding another ctl/controller: the
    restart loaded that one, removed the first attempt's bank file and recorded into ./bank there."""
    folders = _saved_states(tmp_path)
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=5", "controller_init=ctl/controller"]
    monkeypatch.chdir(folders["A"])
    full = run.main([*args, "bank_dir=bank_full", f"out_dir={tmp_path / 'full'}"])
    crash_at(monkeypatch, 2)  # before the first checkpoint
    with pytest.raises(SystemExit):
        run.main([*args, "bank_dir=bank", f"out_dir={tmp_path / 'cut'}"])
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    init, bank = folders["A"] / "ctl" / "controller", folders["A"] / "bank"
    assert (config["controller_init"], config["bank_dir"]) == (str(init), str(bank))
    assert config["out_dir"] == str(tmp_path / "cut")
    monkeypatch.chdir(folders["B"])
    assert run.main(["--resume", str(run_dir)]) == run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["controller_start"] == f"beta_reinforce starts from {init}"
    assert _lines(run_dir / "decisions.jsonl") == _lines(full / "decisions.jsonl")
    (only,) = bank.glob("*.jsonl")
    assert [r["window"] for r in read_jsonl(only) if r["kind"] == "window"] == list(range(10))
    assert not (folders["B"] / "bank").exists()


def test_a_restart_refuses_a_controller_init_changed_since_the_run_started(tmp_path, monkeypatch, capsys):
    folders = _saved_states(tmp_path)
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=5", "controller_init=ctl/controller",
            f"out_dir={tmp_path / 'cut'}"]  # fmt: skip
    monkeypatch.chdir(folders["A"])
    crash_at(monkeypatch, 2)
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut").iterdir()
    recorded = json.loads((run_dir / "inputs.json").read_text())["files"]
    assert [(e["key"], Path(e["path"]).name) for e in recorded] == [
        ("controller_init", "controller.json"), ("controller_init", "controller.safetensors")
    ]  # fmt: skip
    saved = folders["A"] / "ctl" / "controller.safetensors"
    original = saved.read_bytes()
    saved.write_bytes((folders["B"] / "ctl" / "controller.safetensors").read_bytes())
    logs = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    err = _failure(capsys, ["--resume", str(run_dir)])
    assert f"controller_init {saved} changed since the run started" in err and "start a new run" in err, err
    assert (run_dir / "metrics.jsonl").read_bytes() == logs  # refused before anything was removed
    saved.write_bytes(original)
    assert run.main(["--resume", str(run_dir)]) == run_dir


def test_an_older_run_whose_config_holds_relative_paths_resumes_from_its_own_directory(tmp_path, monkeypatch):
    """A run started before paths were stored absolute: its checkpoints carry the fingerprint of the
    relative config, and the same command line (relative paths) still resumes it."""
    folders = _saved_states(tmp_path)
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=5", "controller_init=ctl/controller",
            "bank_dir=bank", f"out_dir={tmp_path / 'cut'}"]  # fmt: skip
    monkeypatch.chdir(folders["A"])
    full = run.main([*args[:-2], f"out_dir={tmp_path / 'full'}"])
    monkeypatch.setattr(_rundir, "absolute_paths", lambda cfg: cfg)  # as the code before wrote them
    monkeypatch.setattr(run, "record_inputs", lambda *a: None)
    crash_at(monkeypatch, 7)  # checkpoint 5 kept
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["controller_init"] == "ctl/controller"
    monkeypatch.chdir(folders["A"])
    assert run.main([*args, "--resume", "auto"]) == run_dir
    assert _lines(run_dir / "decisions.jsonl") == _lines(full / "decisions.jsonl")


def test_a_resume_from_another_directory_reads_the_runs_data_and_model(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """real.data.source=data/train.jsonl and real.hf.name_or_path=models/tiny, resumed from a
    directory holding another data/train.jsonl and no models/: it trained on that directory's data
    (or went to the Hugging Face hub for the model). A data file changed since is refused."""

    def rows(pairs):
        solution = "We add {a} and {b}.\n\nThe sum is $\\boxed{{{s}}}$."
        return "".join(
            json.dumps({"problem": f"What is {a} + {b}?", "solution": solution.format(a=a, b=b, s=a + b)})
            + "\n"
            for a, b in pairs
        )

    folders = {name: tmp_path / name for name in "AB"}
    for name, pairs in (("A", [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 5)]),
                        ("B", [(9, 9), (8, 7), (6, 6), (5, 4), (3, 3), (2, 1)])):  # fmt: skip
        (folders[name] / "data").mkdir(parents=True)
        (folders[name] / "data" / "train.jsonl").write_text(rows(pairs))
    shutil.copytree(checkpoint, folders["A"] / "models" / "tiny")
    args = """--controller beta_reinforce threads=1 plots=false checkpoint_every=1
        real.hf.name_or_path=models/tiny real.hf.dtype=float32 real.lora.rank=4 real.lora.alpha=8
        real.task_kind=math real.data.source=data/train.jsonl real.data.eval_size=2 real.data.probe_size=2
        real.engine.batch_size=2 real.engine.sampling.max_new_tokens=8 real.env.hold_steps=2
        real.env.total_steps=4 real.env.eval_every=1""".split()
    monkeypatch.chdir(folders["A"])
    full = run.main([*args, f"out_dir={tmp_path / 'full'}"])
    crash_at(monkeypatch, 1)  # after the checkpoint of window 1
    with pytest.raises(SystemExit):
        run.main([*args, f"out_dir={tmp_path / 'cut'}"])
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut").iterdir()
    data = folders["A"] / "data" / "train.jsonl"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["real"]["data"]["source"] == str(data)
    assert config["real"]["hf"]["name_or_path"] == str(folders["A"] / "models" / "tiny")
    (recorded,) = json.loads((run_dir / "inputs.json").read_text())["files"]
    assert (recorded["key"], recorded["path"], recorded["bytes"]) == (
        "real.data.source",
        str(data),
        data.stat().st_size,
    )
    monkeypatch.chdir(folders["B"])
    original = data.read_text()
    data.write_text(original.replace("1 + 2", "1 + 3"))  # the same size: only the checksum tells
    capsys.readouterr()
    err = _failure(capsys, ["--resume", str(run_dir)])
    assert f"real.data.source {data} changed since the run started" in err, err
    data.write_text(original)
    assert run.main(["--resume", str(run_dir)]) == run_dir
    assert f"resuming {run_dir} at window 1" in capsys.readouterr().out
    for name in ("metrics.jsonl", "decisions.jsonl"):
        assert _lines(run_dir / name) == _lines(full / name)


def test_a_bench_stores_its_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = bench.main(["--controllers", "fixed", "--seeds", "1", "--set", "mock.total_steps=10",
                          "--set", "plots=false", "--set", "bank_dir=bank", "--out", "out"])  # fmt: skip
    config = json.loads((run_dir / "plan.json").read_text())["config"]
    assert config["bank_dir"] == str(tmp_path / "bank") and config["out_dir"] == "runs"
    assert list((tmp_path / "bank").glob("*.jsonl"))
