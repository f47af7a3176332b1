"""A run's local paths and input files across a resume: config.json holds its paths absolute, so a
resume from another directory reads what the run started on (not that directory's files of the same
relative names), and inputs.json refuses a data file or folder or saved controller state changed since."""

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


def test_a_symlink_is_stored_as_named_and_a_link_pointed_at_an_identical_copy_resumes(tmp_path, monkeypatch):
    """`link -> A` was stored as A's path (symlinks resolved): pointed at an identical B since, the
    same command's `--resume auto` was refused for a config differing in controller_init, and a restart
    for a saved state gone with A. Stored as named, the link is the path; its content is what inputs.json
    checks."""
    monkeypatch.chdir(tmp_path)
    for name, content in (("A", b"state"), ("B", b"state"), ("C", b"other")):
        (tmp_path / name).mkdir()
        for suffix in (".json", ".safetensors"):
            (tmp_path / name / f"controller{suffix}").write_bytes(content)
    (tmp_path / "link").symlink_to("A")
    given = cfglib.load(RunConfig, None, ["env=mock", "controller_init=./link/../link/controller"])
    stored = absolute_paths(given)
    assert stored.controller_init == str(tmp_path / "link" / "controller")
    (tmp_path / "run").mkdir()
    _rundir.record_inputs(tmp_path / "run", None, stored.controller_init)
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())["files"]
    assert [e["path"] for e in recorded] == [
        str(tmp_path / "link" / f"controller{s}") for s in (".json", ".safetensors")
    ]
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("B")
    assert _rundir.same_paths_differences(stored, given) == []
    assert _rundir.changed_inputs(tmp_path / "run") is None
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("C")
    changed = _rundir.changed_inputs(tmp_path / "run")
    assert changed.startswith(f"controller_init {tmp_path / 'link' / 'controller.json'} changed since"), (
        changed
    )


def test_a_resume_from_a_checkpoint_reads_no_controller_init_and_a_restart_checks_it(
    tmp_path, monkeypatch, capsys
):
    """A run started with controller_init=ctl/controller, its ctl moved away since: the same command's
    `--resume auto` was refused for a config differing in controller_init, though the run goes on from
    its checkpoint's controller state and never reads it. A restart from the beginning reads it: there
    a state gone, or another one given, is refused."""
    folders = _saved_states(tmp_path)
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=5", "controller_init=ctl/controller"]
    monkeypatch.chdir(folders["A"])
    full = run.main([*args, f"out_dir={tmp_path / 'full'}"])
    for window, out in ((7, "cut"), (2, "early")):  # checkpoint 5 kept; none yet
        monkeypatch.chdir(folders["A"])
        crash_at(monkeypatch, window)
        with pytest.raises(SystemExit):
            run.main([*args, f"out_dir={tmp_path / out}"])
        monkeypatch.undo()
    (cut,), (early,) = (tmp_path / "cut").iterdir(), (tmp_path / "early").iterdir()
    monkeypatch.chdir(folders["A"])
    state = folders["A"] / "ctl"
    state.rename(tmp_path / "moved")
    capsys.readouterr()
    assert run.main([*args, f"out_dir={tmp_path / 'cut'}", "--resume", "auto"]) == cut
    out = capsys.readouterr().out
    assert f"resuming {cut} at window 5" in out and "controller_init is not read" in out, out
    assert _lines(cut / "decisions.jsonl") == _lines(full / "decisions.jsonl")
    err = _failure(capsys, [*args, f"out_dir={tmp_path / 'early'}", "--resume", "auto"])
    assert f"controller_init {state / 'controller.json'}, which the run started with, is gone" in err, err
    (tmp_path / "moved").rename(state)
    other = f"controller_init={folders['B'] / 'ctl' / 'controller'}"
    err = _failure(capsys, [*args, other, f"out_dir={tmp_path / 'early'}", "--resume", "auto"])
    assert "differs from the given one in ['controller_init']" in err and "it has no checkpoint" in err, err
    err = _failure(capsys, ["--resume", str(early), other])
    assert "the given config differs from the run's: ['controller_init']" in err, err
    assert run.main([*args, f"out_dir={tmp_path / 'early'}", "--resume", "auto"]) == early
    assert _lines(early / "decisions.jsonl") == _lines(full / "decisions.jsonl")


def test_a_data_folder_is_recorded_file_by_file_and_a_changed_one_is_named(tmp_path, monkeypatch):
    """A folder source (parquet files, a save_to_disk folder) was never recorded in inputs.json: a
    resume trained on whatever it held by then. Its files are recorded, hidden ones and what `datasets`
    writes there aside, and the first file gone, new or changed is named."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "part-0.parquet").write_bytes(b"0" * 64)
    (folder / "part-1.parquet").write_bytes(b"1" * 64)
    (folder / ".DS_Store").write_bytes(b"finder")
    real = absolute_paths(RealConfig(task_kind="math", data=MathDataConfig(source="data")))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _rundir.record_inputs(run_dir, real)
    (entry,) = json.loads((run_dir / "inputs.json").read_text())["files"]
    assert (entry["key"], entry["path"]) == ("real.data.source", str(folder))
    assert [(f["path"], f["bytes"]) for f in entry["files"]] == [
        ("part-1.parquet", 64),
        ("train/part-0.parquet", 64),
    ]
    for name in ("cache-0123abcd.arrow", "train/data.lock", "tmpab12cd_3", ".cache/x.arrow", ".hidden"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"written by datasets, or hidden")
    assert _rundir.changed_inputs(run_dir) is None
    part = folder / "train" / "part-0.parquet"
    part.write_bytes(b"2" * 64)  # the same size: only the checksum tells
    changed = _rundir.changed_inputs(run_dir)
    assert changed.startswith(f"real.data.source {folder}: its file train/part-0.parquet changed since"), (
        changed
    )
    part.write_bytes(b"0" * 64)
    (folder / "part-2.parquet").write_bytes(b"2")
    changed = _rundir.changed_inputs(run_dir)
    assert f"real.data.source {folder} holds part-2.parquet, which it did not when the run started" in changed
    (folder / "part-2.parquet").unlink()
    (folder / "part-1.parquet").unlink()
    changed = _rundir.changed_inputs(run_dir)
    assert f"{folder}: its file part-1.parquet, which the run started with, is gone" in changed, changed
    (folder / "part-1.parquet").write_bytes(b"1" * 64)
    assert _rundir.changed_inputs(run_dir) is None
    shutil.rmtree(folder)
    assert f"{folder}, which the run started with (2 files), is gone" in _rundir.changed_inputs(run_dir)
    # a named source is read from the hub (its data_dir file where given), whatever this directory holds
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("{}\n")
    assert _rundir.input_files(RealConfig(task_kind="math", data=MathDataConfig(source="gsm8k"))) == []


def test_a_run_on_a_save_to_disk_folder_records_it_and_its_resume_refuses_a_changed_one(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """A run on a `save_to_disk` folder: inputs.json records its files (loading it writes none that
    counts), a resume refuses a file added to it since, naming it, and goes on once it is removed."""
    datasets = pytest.importorskip("datasets")
    solution = "We add {a} and {b}.\n\nThe sum is $\\boxed{{{s}}}$."
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 5)]
    rows = [
        {"problem": f"What is {a} + {b}?", "solution": solution.format(a=a, b=b, s=a + b)} for a, b in pairs
    ]
    monkeypatch.chdir(tmp_path)
    datasets.Dataset.from_list(rows).save_to_disk("data")
    args = f"""--controller beta_reinforce threads=1 plots=false checkpoint_every=1
        real.hf.name_or_path={checkpoint} real.hf.dtype=float32 real.lora.rank=4 real.lora.alpha=8
        real.task_kind=math real.data.source=data real.data.eval_size=2 real.data.probe_size=2
        real.engine.batch_size=2 real.engine.sampling.max_new_tokens=8 real.env.hold_steps=2
        real.env.total_steps=4 real.env.eval_every=1 out_dir={tmp_path / "runs"}""".split()
    crash_at(monkeypatch, 1)  # after the checkpoint of window 1
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    (recorded,) = json.loads((run_dir / "inputs.json").read_text())["files"]
    folder = tmp_path / "data"
    assert (recorded["key"], recorded["path"]) == ("real.data.source", str(folder))
    assert {f["path"] for f in recorded["files"]} >= {"dataset_info.json", "state.json"}
    (folder / "extra.arrow").write_bytes(b"rows added since")
    capsys.readouterr()
    err = _failure(capsys, ["--resume", str(run_dir)])
    assert f"real.data.source {folder} holds extra.arrow, which it did not when the run started" in err, err
    (folder / "extra.arrow").unlink()
    assert run.main(["--resume", str(run_dir)]) == run_dir
    assert f"resuming {run_dir} at window 1" in capsys.readouterr().out
