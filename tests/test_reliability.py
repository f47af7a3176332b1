"""Crash safety of run.py on the real embedded env (ci-sized): SIGKILL at three points and resume;
corrupted checkpoints are skipped with a warning; every resumed run ends exactly as an uncut one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import recipes.run as run
from atesd.logging import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp: Path, out: str, *extra: str, fault: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ATESD_FAULT", None)
    if fault:
        env["ATESD_FAULT"] = fault
    cmd = [sys.executable, str(ROOT / "recipes/run.py"), "--config", str(ROOT / "recipes/configs/ci.yaml"),
           "--controller", "beta_reinforce", f"real.cache_dir={tmp / 'cache'}", f"out_dir={tmp / out}",
           "threads=1", "plots=false", "real.env.total_steps=8", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def outcome(run_dir: Path) -> tuple[list, list, dict]:
    def lines(name):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(run_dir / name)]

    return (
        lines("metrics.jsonl"),
        lines("decisions.jsonl"),
        load_file(str(run_dir / "final_model/model.safetensors")),
    )


def only_dir(root: Path) -> Path:
    (path,) = root.iterdir()
    return path


@pytest.fixture(scope="module")
def uncut(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    done = launch(tmp, "uncut")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, outcome(only_dir(tmp / "uncut"))


def same(a, b) -> bool:
    metrics_a, decisions_a, weights_a = a
    metrics_b, decisions_b, weights_b = b
    return (metrics_a == metrics_b and decisions_a == decisions_b and weights_a.keys() == weights_b.keys()
            and all(bool((weights_a[k] == weights_b[k]).all()) for k in weights_a))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["update:3", "checkpoint:2", "eval:3"])
def test_sigkill_then_resume_ends_exactly_as_the_uncut_run(uncut, fault):
    """update:3 dies mid-window 2 (H = 2); checkpoint:2 dies while checkpoint 2 is being written (its
    state is on disk, its manifest is not); eval:3 dies inside the evaluation that ends window 2 (eval 1
    is the start's, at reset)."""
    tmp, reference = uncut
    out = f"cut-{fault.replace(':', '-')}"
    killed = launch(tmp, out, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: no cleanup ran
    resumed = launch(tmp, out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "at window 1" in resumed.stdout
    if fault == "checkpoint:2":
        assert "skipping checkpoint" not in resumed.stdout  # an unsealed write never took a final name
    assert same(outcome(only_dir(tmp / out)), reference)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupted_newest_checkpoint_is_skipped_with_a_warning(uncut, damage):
    tmp, reference = uncut
    out = f"corrupt-{damage}"
    killed = launch(tmp, out, fault="update:7")  # dies in window 4, after checkpoints 1-3 (two kept)
    assert killed.returncode == -9
    run_dir = only_dir(tmp / out)
    newest = sorted((run_dir / "checkpoints").glob("ckpt-*"))[-1]
    assert newest.name == "ckpt-000003"
    target = newest / "state.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:  # same size, one byte changed: only the checksum can tell
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    resumed = launch(tmp, out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping checkpoint {newest}" in resumed.stdout
    assert "at window 2" in resumed.stdout
    assert same(outcome(run_dir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sealed:4", "final_model:1", "plot:2"])
def test_killed_after_the_last_checkpoint_resume_completes_every_output(uncut, fault):
    """sealed:4 dies right after the last window's checkpoint is sealed, final_model:1 while the
    final model is written, plot:2 while the plots are drawn: the resumed run writes what is missing
    (final_model equal to the uncut run's trained one, not the warm start), and only then is it
    finished."""
    tmp, reference = uncut
    out = f"cut-{fault.replace(':', '-')}"
    extra = ("plots=true",) if fault.startswith("plot") else ()
    killed = launch(tmp, out, *extra, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = only_dir(tmp / out)
    assert not (run_dir / "summary.json").exists()
    resumed = launch(tmp, out, *extra, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at window 4" in resumed.stdout, resumed.stdout
    assert same(outcome(run_dir), reference)
    if extra:
        assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
            "accuracy.png", "alpha.png", "mismatch.png", "reward.png"
        ]  # fmt: skip
    again = launch(tmp, out, *extra, "--resume", "auto")
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.slow
def test_a_finished_run_missing_an_output_is_completed_not_called_finished(uncut):
    tmp, reference = uncut
    assert launch(tmp, "missing").returncode == 0
    copy = only_dir(tmp / "missing")
    shutil.rmtree(copy / "final_model")
    resumed = launch(tmp, "missing", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lacks final_model" in resumed.stdout
    assert same(outcome(copy), reference)


@pytest.mark.slow
def test_a_checkpoint_of_another_config_or_past_the_logs_is_not_resumed(uncut):
    """A checkpoint copied in from a run of another config, or one whose logs lost their tail (the
    checkpoint is fsynced, the logs are not), is skipped with the reason; nothing is padded."""
    tmp, reference = uncut
    killed = launch(tmp, "short", fault="update:7")  # checkpoints 2 and 3 kept
    assert killed.returncode == -9
    run_dir = only_dir(tmp / "short")
    metrics = run_dir / "metrics.jsonl"
    data = metrics.read_bytes()
    metrics.write_bytes(data[: len(data) - 400])  # the tail of the log lost
    resumed = launch(tmp, "short", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "bytes of metrics.jsonl" in resumed.stdout and b"\0" not in metrics.read_bytes()
    other = launch(tmp, "other", "real.engine.lr=0.002", fault="update:7")
    assert other.returncode == -9
    other_dir = only_dir(tmp / "other")
    killed = launch(tmp, "mixed", fault="update:7")
    mixed_dir = only_dir(tmp / "mixed")
    newest = sorted((mixed_dir / "checkpoints").glob("ckpt-*"))[-1]
    shutil.rmtree(newest)
    shutil.copytree(sorted((other_dir / "checkpoints").glob("ckpt-*"))[-1], newest)
    resumed = launch(tmp, "mixed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by a run with another config" in resumed.stdout
    assert same(outcome(mixed_dir), reference)


def test_two_processes_never_train_one_run_directory(tmp_path, capsys):
    from recipes._rundir import run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir):
        code = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path\n"
             "from recipes._rundir import run_lock\nwith run_lock(Path(sys.argv[1])): pass", str(run_dir)],
            capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert code.returncode != 0 and f"pid {os.getpid()}" in code.stderr, code.stderr
    with run_lock(run_dir):  # released: the next holder gets it
        pass


def test_a_run_name_with_glob_characters_resumes_itself(tmp_path):
    args = ["--controller", "fixed", "--name", "run[1]", "--env", "mock", "mock.total_steps=50",
            "plots=false", f"out_dir={tmp_path}"]  # fmt: skip
    first = run.main(args)
    (first / "summary.json").unlink()
    assert run.main([*args, "--resume", "auto"]) == first


def _bad_rows(tmp: Path) -> dict[str, Path]:
    good = '{"problem": "1+1?", "solution": "Add.\\n\\n$\\\\boxed{2}$"}\n'
    rows = {
        "missing_field": good + '{"solution": "$\\\\boxed{3}$"}\n',
        "empty_solution": good + '{"problem": "2+2?", "solution": ""}\n',
        "no_final_answer": good + '{"problem": "2+2?", "solution": "It is four."}\n',
    }
    paths = {name: tmp / f"{name}.jsonl" for name in rows}
    for name, text in rows.items():
        paths[name].write_text(text)
    paths["undecodable"] = tmp / "undecodable.jsonl"
    paths["undecodable"].write_bytes(
        good.encode() + b'{"problem": "caf\xe9", "solution": "$\\\\boxed{1}$"}\n'
    )
    return paths


def test_bad_inputs_give_one_line_errors_and_leave_earlier_runs_untouched(tmp_path, capsys):
    earlier = run.main(
        ["--controller", "fixed", "--env", "mock", "mock.total_steps=50", f"out_dir={tmp_path}"]
    )
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rows = _bad_rows(tmp_path)
    math = ["real.task_kind=math"]
    cases = [  # (arguments, the message's telling part)
        (["episodes"], "must look like key.path=value"),
        (["real.engine.lrr=1"], "did you mean 'real.engine.lr'"),
        (["episodes=0"], "episodes must be >= 1, got 0"),
        (["real.env.gamma=2"], "gamma must be in (0, 1], got 2"),
        (["controllers.beta_reinforce.gamma=0.5"], "contradicts real.env.gamma=0.9"),
        (
            ["--controller", "nope"],
            "registered: fixed, random, schedule, hint, bandit, beta_reinforce, ppo, oracle",
        ),
        (["--env", "nope"], "env must be one of real, mock"),
        (["real.hf.name_or_path=./no/such/model"], "does not exist"),
        ([*math, f"real.data.source={rows['missing_field']}"], "missing_field.jsonl, line 2"),
        ([*math, f"real.data.source={rows['empty_solution']}"], "empty_solution.jsonl, line 2"),
        ([*math, f"real.data.source={rows['no_final_answer']}"], "no_final_answer.jsonl, line 2"),
        ([*math, f"real.data.source={rows['undecodable']}"], "undecodable.jsonl, line 2"),
        (["--env", "mock", f"out_dir={blocker / 'runs'}"], "cannot create a run directory"),
        (["--env", "mock", f"bank_dir={blocker}"], f"bank_dir={blocker} is a file"),
        (["--env", "mock", f"bank_dir={blocker / 'bank'}"], "cannot record a bank into bank_dir="),
        (["real.model.hidden_size=0"], "hidden_size must be >= 1, got 0"),
        (["real.device=banana"], "device must be cpu, cuda, cuda:N, mps or auto"),
        (["real.task.bands=[]"], "bands must name at least one"),
        (["episodes=true"], "episodes must be a number (int), got True"),
        (["real.engine.lr=.inf"], "real.engine.lr must be a finite number"),
        (
            ["real.env.total_steps=7", "real.env.hold_steps=2"],
            "total_steps must be a multiple of hold_steps=2",
        ),
        (["--env", "mock", "mock.total_steps=52"], "total_steps must be a multiple of hold_steps=5"),
        (
            [
                "--config",
                str(ROOT / "recipes/configs/ci.yaml"),
                "real.model.max_position=40",
                f"real.cache_dir={tmp_path / 'cache'}",
                "threads=1",
            ],
            "the model holds 40 positions",
        ),  # fmt: skip
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            run.main([*args, f"out_dir={tmp_path}"] if "out_dir" not in " ".join(args) else args)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, (args, err)
        assert message in err and "\n" not in err and "Traceback" not in err, (args, err)
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [earlier.name]  # no half-made run dirs


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        run.main(["--debug", "--env", "mock", "episodes=0", f"out_dir={tmp_path}"])


FULL_DISK = (
    lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")),
    lambda *a, **k: (_ for _ in ()).throw(
        Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    ),  # safetensors' own error type carries the OS error in its text
)


@pytest.mark.parametrize("error", FULL_DISK, ids=["oserror", "safetensors"])
def test_a_full_disk_is_one_line_and_leaves_no_half_written_files(tmp_path, capsys, monkeypatch, error):
    import atesd.state

    monkeypatch.setattr(atesd.state, "save_file", error)  # every checkpoint write fails
    with pytest.raises(SystemExit) as exc:
        run.main(["--controller", "fixed", "--env", "mock", "mock.total_steps=50", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "no space left on the device writing" in err, err
    assert "MiB free" in err and "ckpt-" in err
    assert not [p for p in tmp_path.rglob(".tmp-*")], "a half-written checkpoint was left"


def test_a_full_disk_while_logging_names_the_log(tmp_path, capsys, monkeypatch):
    """The logs' appends were not wrapped as the checkpoint writes are: `[Errno 28] No space left on
    device`, without the path."""
    import atesd.logging

    class FullAfter:  # a log file on a disk that fills up after its first lines
        def __init__(self, file, room):
            self.file, self.room = file, room

        def write(self, text):
            self.room -= len(text)
            return self.file.write(text)

        def flush(self):
            if self.room < 0:
                raise OSError(28, "No space left on device")
            self.file.flush()

        def close(self):
            self.flush()

        def __getattr__(self, name):
            return getattr(self.file, name)

    opened = atesd.logging.JsonLines.__init__

    def init(self, path):
        opened(self, path)
        if path.name == "metrics.jsonl":
            self.file = FullAfter(self.file, room=2000)

    monkeypatch.setattr(atesd.logging.JsonLines, "__init__", init)
    with pytest.raises(SystemExit) as exc:
        run.main(["--controller", "fixed", "--env", "mock", "mock.total_steps=50", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err, err
    assert "no space left on the device writing" in err and "metrics.jsonl" in err and "MiB free" in err, err


def test_a_full_cache_disk_leaves_no_half_written_warm_start(tmp_path, small_task, monkeypatch):
    import atesd.warmstart as ws
    from atesd.state import DiskFull

    monkeypatch.setattr(ws, "save_pretrained", FULL_DISK[0])
    tiny = ws.TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    quick = ws.WarmStartConfig(steps=2, copy_steps=1, batch_size=4, warmup_steps=1)
    with pytest.raises(DiskFull, match="no space left on the device writing"):
        ws.warm_start(small_task, tiny, quick, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_an_unwritable_cache_is_refused_before_training_and_orphans_are_cleared(tmp_path, small_task):
    """The cache was found unwritable only after the warm start had trained (8 minutes at the default
    config, lost on every retry); a kill while an entry was written left its `.tmp-<pid>` copy for
    good."""
    import atesd.warmstart as ws

    tiny = ws.TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    quick = ws.WarmStartConfig(steps=2, copy_steps=1, batch_size=4, warmup_steps=1)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a cache "directory" that is a file: unwritable even for root

    def trained(*args):
        pytest.fail("trained before finding the cache unwritable")

    with pytest.raises(
        OSError, match="warm-start cache .* is not writable .* set real.cache_dir or ATESD_CACHE"
    ):
        ws.warm_start(small_task, tiny, quick, blocked, progress=trained)
    key = ws.cache_key(small_task.cfg, tiny, quick)
    orphan = tmp_path / "cache" / "warmstart" / f"{key}.tmp-{2**22 + 7}"  # a pid above Linux's limit: gone
    live = orphan.with_name(f"{key}.tmp-1")  # pid 1 lives: another process still writing
    for d in (orphan, live):
        d.mkdir(parents=True)
    ws.warm_start(small_task, tiny, quick, tmp_path / "cache")
    assert not orphan.exists() and live.exists()


MANIFESTS = ['{"files": []}', "[]", '{"files": {"state.json": 5}}',
             '{"files": {"x": {"bytes": 1, "sha256": "a"}}}', "not json", ""]  # fmt: skip


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_a_malformed_manifest_is_skipped_with_its_reason(tmp_path, capsys, manifest):
    args = ["--controller", "beta_reinforce", "--env", "mock", "mock.total_steps=50", "plots=false",
            f"out_dir={tmp_path}"]  # fmt: skip
    run_dir = run.main(args)
    (run_dir / "summary.json").unlink()
    for ckpt in (run_dir / "checkpoints").glob("ckpt-*"):
        (ckpt / "manifest.json").write_text(manifest)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # every checkpoint refused: stopped, not restarted over them
        run.main([*args, "--resume", "auto"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and "none of its checkpoints can be resumed (ckpt-000010: " in err, err
    assert out.count("skipping checkpoint") == 2 and len(list((run_dir / "checkpoints").glob("ckpt-*"))) == 2
    shutil.rmtree(run_dir / "checkpoints")  # the restart the error says how to ask for
    assert run.main([*args, "--resume", "auto"]) == run_dir
    assert "restarting it from the beginning" in capsys.readouterr().out
    assert (run_dir / "summary.json").exists()


@pytest.mark.parametrize(
    "text,message",
    [('{"controller": "fixed", "env', "is not readable JSON"), ('{"k": 3}', "is not a run.py config"),
     ('{"controller": "fixed", "env": "mock", "episodes": 0}', "does not hold a valid run config")],
)  # fmt: skip
def test_resume_of_a_directory_without_a_whole_run_config_is_one_line(tmp_path, capsys, text, message):
    run_dir = tmp_path / "fixed__default__0__20260101-000000"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(text)
    with pytest.raises(SystemExit) as exc:
        run.main(["--resume", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and "\n" not in err, err
