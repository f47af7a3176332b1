"""recipes/run.py as a user meets it: the command line, the run directory, resume, plots."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import crash_at

import recipes.run as run
from atesd.logging import read_jsonl
from controllers import CONTROLLERS

ROOT = Path(__file__).resolve().parents[1]
CI = ["--config", str(ROOT / "recipes/configs/ci.yaml")]
MOCK = ["--env", "mock", "mock.total_steps=50", "plots=false"]


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_command_on_the_ci_config_leaves_every_file(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes/run.py"), *CI, "--controller", "beta_reinforce",
           f"real.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}", "threads=1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("beta_reinforce__ci__0__")
    files = files_of(run_dir)
    assert {"config.json", "metrics.jsonl", "decisions.jsonl", "summary.json"} <= files
    assert "checkpoints/ckpt-000003/manifest.json" in files  # sealed checkpoints (the newest two kept)
    assert {"final_model/model.safetensors", "final_model/tokenizer.json"} <= files  # the trained student
    assert {f"plots/{n}.png" for n in ("alpha", "reward", "accuracy", "mismatch")} <= files
    assert "window 3/3" in out.stdout and "run summary" in out.stdout  # plain progress lines off a terminal
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert sum(m["kind"] == "step" for m in metrics) == 6 and sum(m["kind"] == "window" for m in metrics) == 3
    window = next(m for m in metrics if m["kind"] == "window")
    assert {"env/alpha", "reward/progress", "reward/grounded", "stats/mismatch", "controller/beta_a"} <= set(
        window
    )
    assert window["time/window_s"] > 0  # from env.timings: wall times live beside the env's info
    step = next(m for m in metrics if m["kind"] == "step")
    assert step["time/rollout_s"] > 0 and "student/loss" in step
    assert any(k.startswith("eval/accuracy/") for k in window)
    (start,) = [m for m in metrics if m["kind"] == "start"]  # window 0: the warm-started student
    assert start["window"] == 0 and start["update"] == 0 and 0.0 <= start["env/score"] <= 1.0
    bands = {k for k in window if k.startswith("eval/accuracy/")}
    assert bands <= set(start)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start_score"] == start["env/score"]
    assert summary["start_eval"] == {
        k.removeprefix("eval/"): start[k] for k in start if k.startswith("eval/")
    }
    assert f"(start {summary['start_score']:.3f}, " in out.stdout  # the summary shows the change
    decisions = read_jsonl(run_dir / "decisions.jsonl")
    assert [d["decision"] for d in decisions if d["kind"] == "decision"] == [0, 1, 2]
    assert {"alpha", "beta_a", "beta_b", "reward/total"} <= set(decisions[0])
    assert json.loads((run_dir / "config.json").read_text())["real"]["engine"]["batch_size"] == 4


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_every_registered_controller_runs_on_the_mock(name, tmp_path):
    run_dir = run.main(["--controller", name, *MOCK, f"out_dir={tmp_path}"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["windows"] == 10 and 0.0 <= summary["final_score"] <= 1.0


def test_plots_are_written_for_the_mock(tmp_path):
    run_dir = run.main(
        ["--controller", "beta_reinforce", "--env", "mock", "episodes=2", f"out_dir={tmp_path}"]
    )
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "accuracy.png", "alpha.png", "mismatch.png", "reward.png"
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["mock", pytest.param("real", marks=pytest.mark.slow)])
def test_resume_auto_continues_exactly_where_the_checkpoint_was(where, tmp_path, monkeypatch, capsys):
    """A run cut after window 5 (last checkpoint at 4) and resumed writes the same logs, line for line,
    as an uncut run (timings aside): weights, optimisers, RNGs and pending decisions all come back."""
    if where == "mock":
        args = ["--controller", "beta_reinforce", *MOCK, "episodes=2", "checkpoint_every=4"]
    else:
        args = [*CI, "--controller", "beta_reinforce", f"real.cache_dir={tmp_path / 'cache'}",
                "real.env.total_steps=12", "checkpoint_every=4", "plots=false", "threads=1"]  # fmt: skip
        # threads=1: under threads=0 the count follows the load, and the engine's last bits follow it
    full = run.main(args + [f"out_dir={tmp_path / 'full'}"])
    crash_at(monkeypatch, 5)
    with pytest.raises(SystemExit) as cut:  # Ctrl-C: one line and exit code 130
        run.main(args + [f"out_dir={tmp_path / 'cut'}"])
    assert cut.value.code == 130
    (cut_dir,) = (tmp_path / "cut").iterdir()  # the exact command that continues it
    tail = f"from its last checkpoint with python recipes/run.py --resume {cut_dir}"
    assert capsys.readouterr().err.strip().endswith(tail)
    monkeypatch.undo()
    resumed = run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"])

    def lines(path):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(path)]

    for name in ("metrics.jsonl", "decisions.jsonl"):
        assert lines(resumed / name) == lines(full / name)
    assert run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"]) == resumed  # finished: no-op


def test_a_resumed_run_keeps_the_start_it_made(tmp_path, monkeypatch, capsys):
    """The checkpoint's controller state replaces the start: a saved state removed after the cut
    neither loads nor stops the resume, and the summary names the start the run made."""
    first = run.main(["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path / 'first'}"])
    saved = tmp_path / "saved"
    for suffix in (".json", ".safetensors"):
        shutil.copy(
            json.loads((first / "summary.json").read_text())["controller_state"] + suffix,
            saved.with_suffix(suffix),
        )
    args = [
        "--controller",
        "beta_reinforce",
        *MOCK,
        "episodes=2",
        "checkpoint_every=4",
        f"controller_init={saved}",
    ]
    full = run.main(args + [f"out_dir={tmp_path / 'full'}"])
    crash_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        run.main(args + [f"out_dir={tmp_path / 'cut'}"])
    monkeypatch.undo()
    for suffix in (".json", ".safetensors"):
        saved.with_suffix(suffix).unlink()
    capsys.readouterr()
    resumed = run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"])
    assert "controller:" not in capsys.readouterr().out  # no start announced: it goes on from the checkpoint
    starts = [json.loads((d / "summary.json").read_text())["controller_start"] for d in (full, resumed)]
    assert starts[0] == starts[1] == f"beta_reinforce starts from {saved}"
    decisions = [
        [d["beta_a"] for d in read_jsonl(r / "decisions.jsonl") if d["kind"] == "decision"]
        for r in (full, resumed)
    ]
    assert decisions[0] == decisions[1]


def failure(capsys, argv) -> tuple[int, str]:
    """run.main's exit code and stderr for input it must refuse."""
    with pytest.raises(SystemExit) as exc:
        run.main(argv)
    return exc.value.code, capsys.readouterr().err.strip()


def one_line(err: str) -> bool:
    return "\n" not in err and "Traceback" not in err and err.startswith("error: ")


def test_resume_auto_refuses_a_different_config(tmp_path, monkeypatch, capsys):
    args = ["--controller", "bandit", *MOCK, f"out_dir={tmp_path}"]
    crash_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run.main(args)
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: the run stopped before its first checkpoint"), err
    monkeypatch.undo()
    code, err = failure(capsys, args + ["controllers.bandit.kind=ucb", "--resume", "auto"])
    assert code == 2 and "differs" in err and one_line(err), err


def test_resume_compares_what_is_given_with_the_runs_own_config(tmp_path, monkeypatch, capsys):
    """--resume DIR: the given keys (flags included) go on top of the run's config, the refusal names
    only those that change it, and it comes before "already finished"; the Ctrl-C line names DIR."""
    args = ["--controller", "bandit", *MOCK, f"out_dir={tmp_path}"]
    crash_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run.main(args)
    (cut,) = tmp_path.iterdir()
    assert capsys.readouterr().err.strip().endswith(f"--resume {cut}")
    monkeypatch.undo()
    for extra, key in ((["--seed", "5"], "'seed'"), (["--controller", "ppo"], "'controller'")):
        code, err = failure(capsys, ["--resume", str(cut), *extra])
        assert code == 2 and f"differs from the run's: [{key}" in err and one_line(err), err
    assert run.main(["--resume", str(cut), "--seed", "0", "--env", "mock"]) == cut  # the same: resumed
    code, err = failure(capsys, ["--resume", str(cut), "episodes=3"])  # finished now
    assert code == 2 and "differs from the run's: ['episodes']" in err, err


def test_resume_dir_judges_the_given_keys_on_top_of_the_runs_config(tmp_path, monkeypatch):
    """H = 4 does not fit beta_reinforce's lookahead of 10, the default controller's: a fixed run's
    resume that repeats --env mock mock.hold_steps=4 is not judged as a beta_reinforce run."""
    args = ["--controller", "fixed", "--env", "mock", "mock.hold_steps=4", "mock.total_steps=40",
            "plots=false", f"out_dir={tmp_path}"]  # fmt: skip
    crash_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    (cut,) = tmp_path.iterdir()
    assert run.main(["--resume", str(cut), "--env", "mock", "mock.hold_steps=4"]) == cut


def test_a_refused_resume_leaves_a_live_runs_logs_alone(tmp_path, monkeypatch, capsys):
    """A run cut before its first checkpoint restarts on resume, but only under the run's lock: a
    resume refused because another process trains the directory deletes nothing."""
    from recipes._rundir import run_lock

    crash_at(monkeypatch, 2)
    with pytest.raises(SystemExit):
        run.main(["--controller", "bandit", *MOCK, "checkpoint_every=100", f"out_dir={tmp_path}"])
    monkeypatch.undo()
    (cut,) = tmp_path.iterdir()
    logs = {name: (cut / name).read_bytes() for name in ("metrics.jsonl", "decisions.jsonl")}
    with run_lock(cut):  # as a live run holds it
        code, err = failure(capsys, ["--resume", str(cut)])
    assert code == 2 and "being trained by another process" in err, err
    assert {name: (cut / name).read_bytes() for name in logs} == logs
    assert run.main(["--resume", str(cut)]) == cut  # unlocked: restarts from the beginning
    assert len([m for m in read_jsonl(cut / "metrics.jsonl") if m["kind"] == "window"]) == 10


def test_a_resumed_run_records_its_bank_as_an_uncut_one(tmp_path, monkeypatch):
    """bank_dir: the resumed run cuts its bank file back to the checkpoint and records on in it."""
    from envs.bank import read_bank

    args = ["--controller", "bandit", *MOCK, "episodes=2", "checkpoint_every=7"]
    run.main([*args, f"out_dir={tmp_path / 'full'}", f"bank_dir={tmp_path / 'bank_full'}"])
    cut = [*args, f"out_dir={tmp_path / 'cut'}", f"bank_dir={tmp_path / 'bank_cut'}"]
    crash_at(monkeypatch, 9)  # in episode 0, 2 windows after the checkpoint at window 7
    with pytest.raises(SystemExit):
        run.main(cut)
    monkeypatch.undo()
    run.main([*cut, "--resume", "auto"])
    banks = [read_bank(tmp_path / name) for name in ("bank_full", "bank_cut")]
    assert [b.files for b in banks] == [1, 1]
    windows = [[(w["episode"], w["window"], w["action"], w["reward"]) for r in b.runs for w in r["windows"]]
               for b in banks]  # fmt: skip
    assert len(windows[0]) == 20 and windows[1] == windows[0]


def test_a_run_whose_bank_file_is_gone_still_resumes(tmp_path, monkeypatch):
    args = ["--controller", "bandit", *MOCK, "checkpoint_every=7", f"out_dir={tmp_path / 'runs'}",
            f"bank_dir={tmp_path / 'bank'}"]  # fmt: skip
    crash_at(monkeypatch, 9)
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    for path in (tmp_path / "bank").iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match="missing or shorter than its checkpoint"):
        resumed = run.main([*args, "--resume", "auto"])
    assert (resumed / "summary.json").exists()


def test_a_name_that_looks_like_a_number_is_a_name(tmp_path):
    for name in ("2024", "0801", "no", "bücher😀"):
        run_dir = run.main(["--controller", "fixed", *MOCK, "--name", name, f"out_dir={tmp_path}"])
        assert run_dir.name.startswith(f"fixed__{name}__0__")


def test_a_run_directory_is_never_reused(tmp_path):
    first = run.main(["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"])
    second = run.main(["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"])
    assert first != second and first.exists() and second.exists()


def test_bad_keys_name_the_closest_field(tmp_path, capsys):
    for argv, message in (
        (["--env", "mock", "real.engine.lrr=1"], "did you mean 'real.engine.lr'"),
        (["--controller", "beta_reinforc"], "did you mean 'beta_reinforce'"),
        (["--env", "mock", "episodes"], "must look like key.path=value"),
        # before any warm start or run directory (it failed at the first window, leaving a directory
        # that --resume auto then picked up)
        (["--controller", "oracle"], "controller oracle runs on the mock env only (env=mock)"),
    ):
        code, err = failure(capsys, [*argv, f"out_dir={tmp_path}"])
        assert code == 2 and message in err and one_line(err), err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    for key in ("real.engine.lr", "mock.variant", "controllers.beta_reinforce.entropy_coef", "episodes"):
        assert f"  {key} = " in text
    assert "lookahead L in updates, a multiple of H" in text


def test_tensorboard_without_the_extra_names_it(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    built = []  # refused before the env is built (a warm start and a model load came first)
    monkeypatch.setattr(run, "build_env", lambda *a, **k: built.append(1))
    code, err = failure(capsys, ["--controller", "fixed", *MOCK, "tensorboard=true", f"out_dir={tmp_path}"])
    assert code == 2 and "[tensorboard]" in err and one_line(err), err
    assert built == [] and list(tmp_path.iterdir()) == []


def test_tensorboard_hears_each_bands_alpha(tmp_path, monkeypatch):
    """Under the per-band action TensorBoard got no alpha at all: run_episode's scalars skip a list."""
    import atesd.logging as logging_module

    keys: set[str] = set()

    class Writer:
        def add_scalar(self, key, value, step):
            keys.add(key)

        def close(self):
            pass

    monkeypatch.setattr(run, "check_tensorboard", lambda: None)
    monkeypatch.setattr(logging_module, "tensorboard_writer", lambda run_dir, purge_step=None: Writer())
    run.main(["--controller", "random", *MOCK, "mock.action=per_band", "mock.variant=mix", "tensorboard=true",
              f"out_dir={tmp_path}"])  # fmt: skip
    assert {"env/alpha", "env/reward"} <= keys and len([k for k in keys if k.startswith("env/alpha/")]) == 2


@pytest.mark.parametrize("path", sorted((ROOT / "recipes/configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from atesd import config as cfglib
    from recipes.common import RunConfig

    cfg = cfglib.load(RunConfig, path)
    if path.name.startswith("qwen3_"):  # the OPSD v3 recipe of docs/METHOD.md §1
        engine = cfg.real.engine
        assert (cfg.real.lora.rank, cfg.real.lora.alpha, engine.lr, engine.batch_size) == (
            64,
            128.0,
            5e-6,
            32,
        )
        assert (engine.loss.kind, engine.loss.clip_tau, engine.grad_clip) == ("forward_kl", 0.05, 0.1)
        sampling = engine.sampling
        assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_new_tokens) == (
            1.1,
            0.95,
            20,
            1024,
        )
        assert not engine.exposure.student_thinking and engine.exposure.teacher_thinking
        assert cfg.controllers["beta_reinforce"]["baseline"] == "batch"  # the paper's estimator


def test_a_run_starts_from_a_saved_controller_and_refuses_one_that_does_not_fit(tmp_path, capsys):
    """Every run saves its learned controller; controller_init starts another run from it (the
    pre-training path): its first decision comes from the trained policy, not Beta(2, 2)."""
    first = run.main(["--controller", "beta_reinforce", *MOCK, "episodes=3", f"out_dir={tmp_path}"])
    state = json.loads((first / "summary.json").read_text())["controller_state"]
    assert Path(state + ".json").is_file() and Path(state + ".safetensors").is_file()

    def first_beta(run_dir):
        decision = next(d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision")
        return decision["beta_a"], decision["beta_b"]

    fresh = run.main(["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path}"])
    started = run.main(
        ["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path}", f"controller_init={state}"]
    )
    assert first_beta(fresh) == (2.0, 2.0) and first_beta(started) != (2.0, 2.0)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, init, message in (
        ("beta_reinforce", tmp_path / "nothing", "no saved controller state"),
        ("ppo", state, "does not fit a ppo controller"),
    ):
        argv = ["--controller", name, *MOCK, f"out_dir={tmp_path}", f"controller_init={init}"]
        code, err = failure(capsys, argv)
        assert code == 2 and one_line(err) and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory left behind
    # a state saved under a dotted name before names kept their dots (`ctl0.25` went to `ctl0.*`)
    old = tmp_path / "old"
    old.mkdir()
    for suffix in (".json", ".safetensors"):
        (old / f"ctl0{suffix}").write_bytes(Path(f"{state}{suffix}").read_bytes())
    argv = [
        "--controller",
        "beta_reinforce",
        *MOCK,
        f"out_dir={tmp_path}",
        f"controller_init={old / 'ctl0.25'}",
    ]
    code, err = failure(capsys, argv)
    assert code == 2 and one_line(err) and f"before 2026-12-07 is at {old / 'ctl0'}" in err, err
    # a run directory given for its saved controller (a new user's walkthrough: no hint said where)
    argv = ["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path}", f"controller_init={first}"]
    code, err = failure(capsys, argv)
    assert code == 2 and one_line(err) and f"a run directory: its controller's state is {state}" in err, err


def test_a_run_writes_only_under_its_run_dir_and_the_cache(tmp_path):
    """matplotlib's font cache and config too go under ATESD_CACHE, never under ~ (a fresh HOME)."""
    env = os.environ | {"HOME": str(tmp_path / "home"), "ATESD_CACHE": str(tmp_path / "cache"),
                        "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("MPLCONFIGDIR", None)
    cmd = [
        sys.executable,
        str(ROOT / "recipes/run.py"),
        *MOCK[:3],
        "plots=true",
        f"out_dir={tmp_path / 'runs'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "home").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "runs"]


def test_credit_lines_name_this_runs_decisions_when_it_starts_from_a_saved_state(tmp_path):
    """A saved controller has numbered decisions of its own (a prior: 200,000): credit lines used
    its lifetime count and joined no decision line of the run. Now they count from the run's first
    decision, and the credits of decisions the saved state made before the run are below 0."""
    first = run.main(
        ["--controller", "beta_reinforce", *MOCK, "mock.total_steps=110", f"out_dir={tmp_path / 'first'}"]
    )  # fmt: skip  (22 windows: one finished decision left unbatched)
    saved = json.loads((first / "summary.json").read_text())["controller_state"]
    second = run.main(["--controller", "beta_reinforce", *MOCK, f"controller_init={saved}",
                       f"out_dir={tmp_path / 'second'}"])  # fmt: skip
    lines = read_jsonl(second / "decisions.jsonl")
    decisions = {d["decision"] for d in lines if d["kind"] == "decision"}
    credited = [d["decision"] for d in lines if d["kind"] == "credit"]
    assert decisions == set(range(10)) and credited
    assert {c for c in credited if c >= 0} <= decisions and min(credited) < 0  # one from the first run


def test_resume_with_a_config_file_and_an_empty_resume_are_one_line_errors(tmp_path, capsys):
    """--resume DIR --config FILE raised UnboundLocalError; --resume= an AttributeError."""
    first = run.main(["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"])
    config = tmp_path / "other.yaml"
    config.write_text("mock:\n  total_steps: 60\n")
    for argv, said in ((["--resume", str(first), "--config", str(config)], "differs from the run's"),
                       (["--resume="], "--resume takes auto or a run directory")):  # fmt: skip
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run.main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and said in err and "Traceback" not in err, err


def test_a_restart_from_the_beginning_records_its_bank_once(tmp_path, monkeypatch):
    """A run resumed before its first checkpoint starts again; the bank file of its first attempt
    stayed, so the bank held those windows twice (the surrogate fitted on duplicates)."""
    bank = tmp_path / "bank"
    args = [
        "--controller",
        "fixed",
        *MOCK,
        "checkpoint_every=4",
        f"bank_dir={bank}",
        f"out_dir={tmp_path / 'r'}",
    ]
    crash_at(monkeypatch, 2)  # before the first checkpoint (window 4)
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    assert len(list(bank.glob("*.jsonl"))) == 1
    run.main([*args, "--resume", "auto"])
    (only,) = bank.glob("*.jsonl")
    windows = [r for r in read_jsonl(only) if r["kind"] == "window"]
    assert [w["window"] for w in windows] == list(range(10))  # 50 updates in windows of 5, once each


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_line_and_leaves_no_run_directory(tmp_path, capsys):
    """real.device=cuda without CUDA was a traceback from deep in the model's loading, after the warm
    start, and left a run directory holding only config.json."""
    runs = tmp_path / "runs"
    for device in ("cuda", "cuda:3"):
        argv = [*CI, "--controller", "fixed", f"out_dir={runs}", f"real.device={device}",
                f"real.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
        code, err = failure(capsys, argv)
        assert code == 2 and f"real.device={device}, but torch sees no CUDA device" in err, err
        assert "\n" not in err and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())
    assert not (tmp_path / "cache").exists()  # refused before any warm start was trained


def test_resume_auto_breaks_a_tie_of_mtimes_by_the_stamp_in_the_name(tmp_path, monkeypatch):
    """Runs whose config.json share an mtime (a coarse filesystem clock): --resume auto took the first
    in the directory's listing order; it now takes the later stamp, and of one stamp the higher suffix."""
    from pathlib import Path

    from recipes._rundir import latest_run_dir
    from recipes.common import RunConfig

    cfg = RunConfig(env="mock", out_dir=str(tmp_path))
    stem = f"{cfg.controller}__{cfg.name}__{cfg.seed}__20261206-1000"
    names = [f"{stem}00", f"{stem}01", f"{stem}01-9", f"{stem}01-10"]  # fresh_dir's -9, then -10
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        os.utime(tmp_path / name / "config.json", (1_000_000_000, 1_000_000_000))
    listed = Path.glob
    for order in (sorted, lambda paths: sorted(paths, reverse=True)):  # either listing order
        monkeypatch.setattr(
            Path, "glob", lambda self, pattern, order=order: iter(order(listed(self, pattern)))
        )
        assert latest_run_dir(cfg).name == names[-1]


def test_resume_auto_takes_the_newest_run_of_its_env(tmp_path, capsys):
    """The env is not in a run directory's name: after the main command and a mock run of the same
    controller, `--resume auto` on the main command found the mock run and refused (config differs
    in ['env']), its advice naming the mock run's directory."""
    base = ["--controller", "fixed", f"out_dir={tmp_path}", "plots=false"]
    mock = ["--env", "mock", "mock.total_steps=20", "mock.hold_steps=5"]
    run.main([*base, *mock, "--name", "a"])
    killed = run.main([*base, *mock, "--name", "a", "mock.total_steps=40"])
    (killed / "summary.json").unlink()  # an unfinished run of the other config...
    real_like = json.loads((killed / "config.json").read_text())
    (killed / "config.json").write_text(json.dumps(real_like | {"env": "real"}))  # ...on the other env
    os.utime(killed / "config.json", (2_000_000_000, 2_000_000_000))  # and the newest
    capsys.readouterr()
    assert run.main([*base, *mock, "--name", "a", "--resume", "auto"]) != killed
    assert "already finished; nothing to resume" in capsys.readouterr().out


def test_recipes_print_a_warning_as_one_line():
    """A recipe's warning printed Python's two lines, the second the source of the `warnings.warn`
    call (`warnings.warn(  # a smoke run may mean it; ...`), which read like a crash to a new user."""
    import warnings

    from recipes._progress import user_errors

    before = warnings.formatwarning
    with user_errors():
        text = warnings.formatwarning("lookahead\n  too long", UserWarning, "/x/common.py", 123, "src")
    assert text == "warning: lookahead too long (UserWarning, common.py:123)\n"
    assert warnings.formatwarning is before  # restored
    with user_errors(debug=True):
        assert warnings.formatwarning is before  # --debug: as Python prints them


def test_damaged_logs_refuse_the_resume_and_keep_the_intact_checkpoints(tmp_path, monkeypatch, capsys):
    """A power loss can leave NULs where unsynced log lines were: every checkpoint is then refused
    (their offsets point into the damage), and the resume restarted the run from window 0, deleting
    both intact checkpoints at its first save. Now it stops with the reasons; a restart is deliberate
    (the checkpoints removed), and its first checkpoint is kept."""
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=2"]
    full = run.main(args + [f"out_dir={tmp_path / 'full'}"])
    crash_at(monkeypatch, 7)  # checkpoints 4 and 6 kept
    with pytest.raises(SystemExit):
        run.main(args + [f"out_dir={tmp_path / 'cut'}"])
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut").iterdir()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_bytes(b"\0" * metrics.stat().st_size)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exc.value.code == 2 and one_line(err), err
    damaged = "metrics.jsonl is damaged before its offset (byte"
    assert f"none of its checkpoints can be resumed (ckpt-000006: {damaged}" in err
    assert f"; ckpt-000004: {damaged}" in err
    assert f"remove {run_dir / 'checkpoints'} and run the command again" in err
    assert captured.out.count("warning: skipping checkpoint") == 2  # one line each
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing removed
    shutil.rmtree(run_dir / "checkpoints")  # the restart, asked for
    crash_at(monkeypatch, 3)  # after the restart's first checkpoint
    with pytest.raises(SystemExit):
        run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"])
    assert "restarting it from the beginning" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*")) == ["ckpt-000002"]
    monkeypatch.undo()
    resumed = run.main(args + [f"out_dir={tmp_path / 'cut'}", "--resume", "auto"])
    assert f"resuming {run_dir} at window 2" in capsys.readouterr().out

    def lines(path):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(path)]

    for name in ("metrics.jsonl", "decisions.jsonl"):
        assert lines(resumed / name) == lines(full / name)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsynced paths from /proc")
def test_the_logs_and_the_bank_are_on_the_disk_before_each_checkpoint_is_sealed(tmp_path, monkeypatch):
    """The logs were flushed, never fsynced, while the checkpoints pointing into them were: a power
    loss kept the checkpoints and lost the lines they needed."""
    synced: dict[str, int] = {}
    fsync = os.fsync

    def spy(fd):
        fsync(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.is_file():
            synced[path.name] = path.stat().st_size

    sealed = []
    save = run.save_checkpoint

    def checked_save(run_dir, state, keep, before_seal=None):
        for key, name in (("metrics", "metrics.jsonl"), ("decisions", "decisions.jsonl")):
            assert synced.pop(name, None) == state["offsets"][key], name
        assert synced.pop(Path(state["bank"]["path"]).name, None) == state["bank"]["offset"]
        sealed.append(state["loop"]["global_window"])
        return save(run_dir, state, keep, before_seal)

    monkeypatch.setattr(os, "fsync", spy)
    monkeypatch.setattr(run, "save_checkpoint", checked_save)
    run.main(["--controller", "bandit", *MOCK, "checkpoint_every=3", f"bank_dir={tmp_path / 'bank'}",
              f"out_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert sealed == [3, 6, 9, 10]


def test_a_run_that_moved_on_between_plan_and_lock_is_not_trained_again(tmp_path, monkeypatch, capsys):
    """The resume was planned before the run's lock was held: a process that read its checkpoint
    while another trained the run on (minutes for a large model) then retrained those windows over
    the other's logs, or restarted a run that had finished meanwhile. It is refused in one line."""
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=2", f"out_dir={tmp_path}"]
    crash_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.undo()
    (run_dir,) = tmp_path.iterdir()
    logs = (run_dir / "metrics.jsonl").read_bytes()
    planned = run.plan_run

    def plan_while_another_saves(*a):
        plan = planned(*a)  # then the other process seals its next checkpoint
        shutil.copytree(run_dir / "checkpoints" / "ckpt-000004", run_dir / "checkpoints" / "ckpt-000006")
        return plan

    monkeypatch.setattr(run, "plan_run", plan_while_another_saves)
    capsys.readouterr()
    code, err = failure(capsys, [*args, "--resume", "auto"])
    assert code == 2 and "moved on while this process read its checkpoint" in err and one_line(err), err
    assert (run_dir / "metrics.jsonl").read_bytes() == logs


def test_a_finished_run_with_an_empty_output_is_completed(tmp_path, capsys):
    """A power loss can leave a file created but empty: the run counted as finished (the file existed),
    while controller_init=<run>/controller then failed on it ('header too small')."""
    args = ["--controller", "beta_reinforce", *MOCK, "checkpoint_every=2", f"out_dir={tmp_path}"]
    run_dir = run.main(args)
    state = (run_dir / "controller.safetensors").read_bytes()
    (run_dir / "controller.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert run.main([*args, "--resume", "auto"]) == run_dir
    assert "lacks controller.safetensors; completing it from its last checkpoint" in capsys.readouterr().out
    assert (run_dir / "controller.safetensors").read_bytes() == state


def test_a_finished_run_without_checkpoints_is_never_trained_again(tmp_path, capsys):
    """Its checkpoints cleaned up and a plot removed, a finished run was retrained from window 0 (a
    missing output sent it to its last checkpoint, and none meant a restart). Plots are drawn again
    from its logs; an output that needs a checkpoint is refused, the run left as it was."""
    args = ["--controller", "fixed", "--env", "mock", "mock.total_steps=50", f"out_dir={tmp_path}"]
    run_dir = run.main(args)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "plots" / "alpha.png").unlink()
    logs = {
        name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "decisions.jsonl", "summary.json")
    }
    capsys.readouterr()
    assert run.main([*args, "--resume", "auto"]) == run_dir
    out = capsys.readouterr().out
    assert "already finished; drawing its missing plots/alpha.png again from its logs" in out
    assert "restarting" not in out and (run_dir / "plots" / "alpha.png").read_bytes().startswith(b"\x89PNG")
    assert {name: (run_dir / name).read_bytes() for name in logs} == logs
    (run_dir / "controller.safetensors").unlink()
    code, err = failure(capsys, [*args, "--resume", "auto"])
    assert code == 2 and one_line(err), err
    assert "the run finished (it has a summary.json) but lacks controller.safetensors" in err
    assert "start a new run" in err
    assert {name: (run_dir / name).read_bytes() for name in logs} == logs


def test_ctrl_c_while_resume_dir_reads_its_checkpoint_names_that_command(tmp_path, monkeypatch, capsys):
    """It said `--resume auto (the same command)`, which was not the command given."""
    args = ["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"]
    run_dir = run.main(args)
    (run_dir / "summary.json").unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run.checkpoint, "load_latest", interrupted)
    with pytest.raises(SystemExit) as exc:
        run.main(["--resume", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 130 and "auto" not in err, err
    assert err.endswith(f"nothing changed: run the same command again (--resume {run_dir})"), err


def test_ctrl_c_while_the_env_is_built_says_nothing_was_saved_and_ends_the_bar(tmp_path, monkeypatch, capsys):
    """Ctrl-C while a warm start trained said 'continue it from its last checkpoint' (there was none,
    and the warm start is not cached: a resume retrains it), and the warm start's bar redrew on."""
    closed = []

    def progress(step, total, loss):
        pass

    progress.close = lambda: closed.append(1)

    def build_env(cfg, warmstart_progress=None, dist=None):
        warmstart_progress(1, 10, 0.5)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_warmstart_progress", lambda cfg: progress)
    monkeypatch.setattr(run, "build_env", build_env)
    with pytest.raises(SystemExit) as exc:
        run.main(["--controller", "fixed", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 130 and "before its first checkpoint" in err and "last checkpoint" not in err, (
        err
    )
    assert closed == [1]


def test_the_summary_prints_paths_whole(monkeypatch, capsys):
    """At 80 columns the paths were cut with an ellipsis (`.../final_m...`): not copyable from a log."""
    from recipes import _progress

    path = "/tmp/some/long/runs/beta_reinforce__default__0__20261207-015634/final_model"
    monkeypatch.setenv("COLUMNS", "80")
    _progress.print_summary({"controller": "fixed", "final_model": path})
    out = capsys.readouterr().out
    assert "…" not in out
    cells = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3)
    assert path in cells


def test_a_state_of_other_sizes_names_the_tensor_and_the_cause_stays_chained(tmp_path, capsys):
    """A state that did not fit said only `(RuntimeError: Error(s) in loading state_dict for
    BetaPolicy:)`: the size mismatch on the next line was dropped, and `from None` hid it from --debug."""
    from atesd import config as cfglib
    from atesd.state import save_state
    from envs.mock_env import MockConfig, MockExposureEnv
    from recipes.common import RunConfig, build_controller

    saved = tmp_path / "global"
    save_state(build_controller(RunConfig(env="mock"), MockExposureEnv(MockConfig())).state_dict(), saved)
    argv = ["--controller", "beta_reinforce", *MOCK, "mock.action=per_band", "mock.variant=mix",
            f"out_dir={tmp_path / 'runs'}", f"controller_init={saved}"]  # fmt: skip
    code, err = failure(capsys, argv)
    assert code == 2 and one_line(err), err
    assert "(net.0.weight: saved [64, 6], this controller [64, 8]; the state was saved on an env" in err
    assert "of other observation or action sizes than this env's 8 observation entries and 2 alpha(s))" in err
    cfg = run.resolve_config(run.parse_args(argv))
    per_band = MockExposureEnv(cfg.mock)
    with pytest.raises(cfglib.ConfigError, match="does not fit") as exc:
        build_controller(cfg, per_band)
    assert isinstance(exc.value.__cause__, RuntimeError) and "size mismatch" in str(exc.value.__cause__)
    with pytest.raises(cfglib.ConfigError, match=r"does not fit a ppo controller: it holds decisions, "):
        build_controller(dataclasses.replace(cfg, controller="ppo"), per_band)
    # an open-loop controller's state is nothing: it loaded another's without a word
    with pytest.raises(
        cfglib.ConfigError, match=r"a random's state has not \(its state: rng\); a state saved"
    ):
        build_controller(dataclasses.replace(cfg, controller="random"), per_band)


def test_a_missing_controller_init_is_refused_before_the_env_is_built(tmp_path, monkeypatch, capsys):
    """A typo in controller_init was reported after the warm start had trained (minutes)."""
    monkeypatch.setattr(run, "build_env", lambda *a, **k: pytest.fail("the env was built"))
    typo = tmp_path / "typo" / "controller"
    code, err = failure(
        capsys, ["--controller", "beta_reinforce", f"out_dir={tmp_path}", f"controller_init={typo}"]
    )
    assert code == 2 and one_line(err), err
    assert f"no saved controller state at {typo} ({typo}.json is missing)" in err
    assert list(tmp_path.iterdir()) == []  # no run directory made
    # a word near auto or none (not a path) is asked about
    from recipes._controller import no_saved_state

    hint = "did you mean 'none'? (controller_init takes a saved state's path, auto or none)"
    assert no_saved_state(Path("nonee")).endswith(hint)
    assert "did you mean" not in no_saved_state(tmp_path / "none")


def test_a_run_started_with_a_controller_seed_says_why_it_cannot_resume(tmp_path):
    """controllers.<name>.seed is refused since 2026-12-07: a run that set it (and used the run's seed
    instead) says so when resumed, rather than only 'drop controllers.random.seed' of a stored file."""
    from atesd import config as cfglib
    from recipes._rundir import stored_config
    from recipes.common import RunConfig

    data = cfglib.to_dict(RunConfig(controller="random", env="mock"))
    data["controllers"]["random"]["seed"] = 7
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(cfglib.ConfigError, match="used the run's seed instead of it: start the run again"):
        stored_config(tmp_path)


def test_a_resume_of_a_run_another_process_trains_names_that_process(tmp_path, capsys):
    """The plan read the checkpoints before taking the lock: one the trainer was pruning at that
    moment was refused as damaged, with the advice to remove the live run's checkpoints."""
    from recipes._rundir import run_lock

    run_dir = run.main(["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"])
    (run_dir / "summary.json").unlink()
    for ckpt in (run_dir / "checkpoints").glob("ckpt-*"):  # as the trainer's pruning leaves them, mid-way
        (ckpt / "state.safetensors").unlink()
    with run_lock(run_dir):  # another process's hold, as far as flock is concerned (another open file)
        code, err = failure(capsys, ["--resume", str(run_dir)])
    assert code == 2 and one_line(err) and "is being trained by another process" in err, err
    assert "remove" not in err


def test_a_controller_init_that_does_not_read_is_one_line_and_leaves_no_directory(tmp_path, capsys):
    """A truncated state file gave a safetensors traceback, and left a run directory behind."""
    first = run.main(["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path / 'first'}"])
    (tmp_path / "ci").mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(first / f"controller{suffix}", tmp_path / "ci" / f"controller{suffix}")
    with open(tmp_path / "ci" / "controller.safetensors", "r+b") as fh:
        fh.truncate(300)
    argv = ["--controller", "beta_reinforce", *MOCK, f"out_dir={tmp_path / 'out'}",
            f"controller_init={tmp_path / 'ci' / 'controller'}"]  # fmt: skip
    code, err = failure(capsys, argv)
    assert (
        code == 2 and one_line(err) and f"the state at {tmp_path / 'ci' / 'controller'} does not read" in err
    )
    assert not any((tmp_path / "out").glob("*/config.json"))


def test_a_finished_run_whose_final_checkpoint_is_damaged_is_not_trained_again(tmp_path, capsys):
    """It fell back to an older checkpoint and trained the last windows again over its logs."""
    argv = ["--controller", "fixed", *MOCK, "episodes=2", "checkpoint_every=7", f"out_dir={tmp_path}"]
    run_dir = run.main(argv)
    (run_dir / "controller.json").unlink()
    last = max((run_dir / "checkpoints").glob("ckpt-*"))
    with open(last / "state.json", "a") as fh:
        fh.write(" ")
    logs = (run_dir / "metrics.jsonl").read_bytes()
    code, err = failure(capsys, ["--resume", str(run_dir)])
    assert (
        code == 2 and one_line(err) and "the run finished at window 20, and its newest checkpoint" in err
    ), err
    assert (run_dir / "metrics.jsonl").read_bytes() == logs


def test_resume_auto_takes_out_dir_however_spelt_and_expands_a_home(tmp_path, monkeypatch, capsys):
    """`out_dir=./od2` refused the run it had just found under od2 (out_dir compared as text), and
    `out_dir=~/runs` made a folder named ~ in the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = ["--controller", "bandit", *MOCK]
    crash_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run.main([*args, "out_dir=od2"])
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    for spelt in ("./od2", "od2/", str(tmp_path / "od2")):
        with pytest.raises(SystemExit) as exc:  # resumed, and stopped again: the run stays unfinished
            crash_at(monkeypatch, 4)
            run.main([*args, f"out_dir={spelt}", "--resume", "auto"])
        err = capsys.readouterr().err
        assert exc.value.code == 130 and "whose config differs" not in err, err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = run.main(["--controller", "fixed", *MOCK, "out_dir=~/runs"])
    assert home.parent == tmp_path / "home" / "runs" and not (tmp_path / "~").exists()


def test_resume_dir_says_an_eval_config_is_one(tmp_path, capsys):
    run_dir = run.main(["--controller", "fixed", *MOCK, f"out_dir={tmp_path}"])
    (tmp_path / "eval.json").write_text('{"task": "synthetic", "pass_k": [1]}')
    code, err = failure(capsys, ["--resume", str(run_dir), "--config", str(tmp_path / "eval.json")])
    assert code == 2 and "eval.json is an eval.py config (it sets task, pass_k); run.py" in err, err


def test_a_torchrun_checkpoint_resumed_in_one_process_is_refused_before_the_build(
    tmp_path, monkeypatch, capsys
):
    """A plain `python recipes/run.py --resume DIR` of a two-rank checkpoint built the env (an FSDP
    model loaded whole into one process: minutes, or out of memory) before saying it needs torchrun."""
    from recipes._rundir import Plan

    plan = Plan(
        cfg=run.RunConfig(env="mock"), run_dir=tmp_path, state={"ranks": [{}, {}]}, checkpoint=tmp_path
    )
    monkeypatch.setattr(run, "plan_run", lambda args, cfg: plan)
    monkeypatch.setattr(run, "_run", lambda *a: pytest.fail("the run was built"))
    with pytest.raises(SystemExit) as exc:
        run.main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "written by 2 process(es)" in err and "torchrun --nproc_per_node 2" in err


def test_ctrl_c_under_torchrun_is_said_once_with_the_torchrun_command(tmp_path, monkeypatch):
    """Under torchrun every rank said why it stopped: rank 1, which knows no run directory, that
    nothing had changed, and rank 0 to resume with plain python, which a two-rank checkpoint refuses."""
    args = run.parse_args(["--controller", "fixed"])
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(run.checkpoint, "problem", lambda c, verify=False: None)
    (tmp_path / "checkpoints" / "ckpt-000001").mkdir()
    monkeypatch.setattr(run, "RUN_DIR", [tmp_path])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run._interrupted(args) is None
    monkeypatch.setenv("RANK", "0")
    assert f"torchrun --nproc_per_node 2 recipes/run.py --resume {tmp_path}" in run._interrupted(args)
    monkeypatch.delenv("WORLD_SIZE")
    assert f"with python recipes/run.py --resume {tmp_path}" in run._interrupted(args)
