import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "steps=2", "--set", "real.warmstart.steps=3", "--set", "real.warmstart.copy_steps=1",
    "--set", "real.warmstart.batch_size=4", "--set", "real.warmstart.warmup_steps=1",
    "--set", "real.task.eval_size=4", "--set", "real.task.probe_size=2", "--set", "mismatch_size=2",
    "--set", "alphas=[0,0.5,1]", "--set", "real.model.num_layers=1", "--set", "real.model.hidden_size=32",
    "--set", "real.model.num_heads=2", "--set", "real.model.num_kv_heads=1",
    "--set", "real.model.intermediate_size=64", "--set", "real.engine.batch_size=4",
    "--set", "real.engine.sampling.max_new_tokens=16",
]  # fmt: skip


@pytest.mark.slow
def test_sweep_smoke(tmp_path):
    env = os.environ | {"ATESD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "sweep.py"),
        "--seeds",
        "2",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    res = subprocess.run(cmd + TINY, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0
    record = strict_json((tmp_path / "out" / "sweep.json").read_text())
    assert len(record["runs"]) == 6 and record["seeds"] == 2 and record["config"]["steps"] == 2
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 6


def test_sweep_refuses_a_run_config_as_one(tmp_path, capsys):
    """A run.py config given to sweep.py said only "unknown config key 'name'"."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    with pytest.raises(SystemExit) as exc:
        sweep.main(["--config", str(ROOT / "recipes/configs/ci.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "ci.yaml is a run.py config (it sets name, episodes, checkpoint_every, mock); sweep.py" in err
    assert not (tmp_path / "out").exists()


def test_run_and_eval_refuse_each_others_configs_as_such(tmp_path):
    """run.py given an eval.py config.json said "unknown config key 'task'; did you mean 'real.task'?",
    sending the user the wrong way; eval.py given a run.py config "unknown config key 'name'"."""
    import recipes.eval as ev
    import recipes.run as run
    from atesd import config as cfglib

    evaluation = tmp_path / "config.json"
    evaluation.write_text('{"task": "synthetic", "pass_k": [1], "real": {}}')
    with pytest.raises(
        cfglib.ConfigError, match=r"config.json is an eval.py config \(it sets task, pass_k\); run.py"
    ):
        run.resolve_config(run.parse_args(["--config", str(evaluation)]))
    with pytest.raises(cfglib.ConfigError, match=r"ci.yaml is a run.py config \(it sets name, .*\); eval.py"):
        ev.resolve_config(ev.parse_args(["--config", str(ROOT / "recipes/configs/ci.yaml")]))


@pytest.mark.slow
def test_sweep_rejects_an_unknown_key(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "sweep.py"), "--out", str(tmp_path), "--set", "step=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "did you mean 'steps'" in res.stderr


def test_the_sweeps_checks_say_when_they_cannot_be_made():
    """(b)/(c) need alpha = 1 (or 0) in the sweep and at least two seeds: one seed has no sd, so any
    higher mean would 'beat' it by more than 2 sd."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    def row(**accs):
        sd = {a: 0.0 if len(v) < 2 else 1.0 for a, v in accs.items()}
        return {float(a.replace("_", ".")): {"acc_mean": sum(v) / len(v), "acc_sd": sd[a], "acc": v}
                for a, v in accs.items()}  # fmt: skip

    assert sweep._beating(row(**{"0_75": [50.1], "1": [50.0]}), (0.75, 1.0), 1.0) is None
    assert sweep._beating(row(**{"0_25": [30.0, 31.0], "0_75": [90.0, 91.0]}), (0.25, 0.75), 1.0) is None
    assert sweep._beating(row(**{"0_75": [90.0, 91.0], "1": [50.0, 51.0]}), (0.75, 1.0), 1.0) == [0.75]


def test_the_sweep_summary_of_one_seed_or_one_alpha_or_a_null_says_so():
    """One seed reported sd 0.0 ("+- 0.0", zero error bars); one alpha 'passed' check (a) with nothing
    to compare; a NaN written as null in runs.jsonl crashed a resume (None + float)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    def run(alpha, seed, kl):
        return {"alpha": alpha, "seed": seed, "final": {"accuracy/B": 0.5},
                "mismatch_start": {"B": {"kl": kl, "top1": 0.1}}}  # fmt: skip

    one = sweep.summarise([run(0.5, 0, None), run(1.0, 0, 0.3)], (0.5, 1.0), ["B"])
    assert math.isnan(one["table"]["B"][0.5]["acc_sd"]) and math.isnan(one["table"]["B"][0.5]["kl"])
    assert one["table"]["B"][1.0]["kl"] == pytest.approx(0.3)
    assert sweep._sd(one["table"]["B"][0.5]["acc_sd"]) == "n/a"
    only = sweep.summarise([run(0.5, 0, 0.2), run(0.5, 1, 0.2)], (0.5,), ["B"])
    assert only["checks"]["B"]["mismatch_monotone_every_seed"] is None
    assert only["table"]["B"][0.5]["acc_sd"] == 0.0  # two seeds: a real sd

    # one seed's accuracy NaN: its arm's mean is the others' ("nothing beats alpha 1" came out instead)
    def acc(alpha, seed, value):
        return {**run(alpha, seed, 0.2), "final": {"accuracy/B": value}}

    arms = [acc(0.75, s, v) for s, v in enumerate((0.9, 0.91, math.nan))]
    arms += [acc(1.0, s, v) for s, v in enumerate((0.5, 0.51, 0.5))]
    nan_seed = sweep.summarise(arms, (0.75, 1.0), ["B"])
    assert nan_seed["table"]["B"][0.75]["acc_mean"] == pytest.approx(90.5)
    assert nan_seed["table"]["B"][0.75]["n"] == 2 and nan_seed["checks"]["B"]["alphas_beating_1"] == [0.75]


def strict_json(text: str):
    """json.loads that refuses NaN and infinities (what strict JSON readers do)."""
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))


@pytest.fixture
def fake_sweep(monkeypatch):
    """recipes/sweep.py with the engine and the runs replaced by cheap stand-ins (in process): `calls`
    lists the (alpha, seed) runs made; `stop_at` makes the call with that index raise Ctrl-C."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    class Task:
        def eval_sets(self):
            return {"b1": [1, 2], "b2": [3]}

    class Engine:
        task = Task()

        def evaluate(self, teacher_alpha=None):
            return {"accuracy/b1": 0.5 + (teacher_alpha or 0) / 4, "accuracy/b2": 0.25}

    state = {"calls": [], "stop_at": None}

    def run_one(cfg_dict, alpha, seed):
        if len(state["calls"]) == state["stop_at"]:
            raise KeyboardInterrupt
        state["calls"].append((alpha, seed))
        mismatch = {b: {"kl": alpha + seed / 100 + 0.01, "top1": alpha / 2 + 0.01} for b in ("b1", "b2")}
        return {"alpha": alpha, "seed": seed, "final": {"accuracy/b1": (alpha + seed) / 10,
                "accuracy/b2": alpha / (seed + 2)}, "mismatch_start": mismatch, "mismatch_end": mismatch,
                "trace": [{"loss": 1.0, "probe_nll": float("nan")}], "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(sweep, "build_engine", lambda *args: Engine())
    monkeypatch.setattr(sweep, "run_one", run_one)
    monkeypatch.setattr(sweep, "plot", lambda *args: None)
    return sweep, state


SMALL = ["--seeds", "2", "--workers", "1", "--set", "alphas=[0,0.5,1]"]


def test_an_interrupted_sweep_keeps_its_runs_and_resumes_to_the_uninterrupted_record(
    fake_sweep, tmp_path, capsys
):
    sweep, state = fake_sweep
    assert sweep.main([*SMALL, "--out", str(tmp_path / "whole")]) == 0
    whole = strict_json((tmp_path / "whole" / "sweep.json").read_text())
    part = tmp_path / "part"
    state.update(calls=[], stop_at=3)
    with pytest.raises(SystemExit) as exc:
        sweep.main([*SMALL, "--out", str(part)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 130 and len(err.splitlines()) == 1, err
    assert f"kept 3 of 6 runs in {part / 'runs.jsonl'}" in err and f"--resume {part} --seeds 2" in err
    lines = (part / "runs.jsonl").read_text().splitlines()
    assert [strict_json(line)["seed"] for line in lines] == [0, 0, 0] and not (part / "sweep.json").exists()
    with pytest.raises(SystemExit) as exc:  # a differing config is refused, naming the key
        sweep.main(["--resume", str(part), "--seeds", "2", "--set", "steps=3"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "differs" in err and "steps" in err and len(err.splitlines()) == 1, err
    from recipes._rundir import run_lock

    with run_lock(part), pytest.raises(SystemExit) as exc:  # as a live sweep holds it
        sweep.main(["--resume", str(part), "--seeds", "2", "--workers", "1"])
    assert exc.value.code == 2 and "is being swept by another process" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # another seed count than it was started with
        sweep.main(["--resume", str(part), "--seeds", "3"])
    assert exc.value.code == 2 and "it was started with --seeds 2, not 3" in capsys.readouterr().err
    state.update(calls=[], stop_at=None)
    assert sweep.main(["--resume", str(part), "--workers", "1"]) == 0  # its own --seeds 2, not the default 5
    assert state["calls"] == [(0.0, 1), (0.5, 1), (1.0, 1)]  # only the runs it lacked
    resumed = strict_json((part / "sweep.json").read_text())
    assert {k: v for k, v in resumed.items() if k != "wall_s"} == {
        k: v for k, v in whole.items() if k != "wall_s"
    }
    assert resumed["config"]["alphas"] == [0, 0.5, 1] and resumed["seeds"] == 2
    assert [(r["seed"], r["alpha"]) for r in resumed["runs"]] == [(s, a) for s in (0, 1) for a in (0, 0.5, 1)]
    assert resumed["runs"][0]["trace"][0]["probe_nll"] is None  # NaN written as null
    capsys.readouterr()
    assert sweep.main(["--resume", str(part), "--seeds", "2"]) == 0 and state["calls"] == [
        (0.0, 1),
        (0.5, 1),
        (1.0, 1),
    ]
    assert "nothing to resume" in capsys.readouterr().out


def test_a_sweep_never_reuses_a_directory_and_a_run_cut_short_is_dropped(fake_sweep, tmp_path):
    sweep, state = fake_sweep
    out = tmp_path / "sweep"
    assert sweep.main([*SMALL, "--out", str(out)]) == 0
    config = (out / "config.json").read_text()
    assert sweep.main([*SMALL, "--set", "steps=7", "--out", str(out)]) == 0
    assert (out / "config.json").read_text() == config  # the second sweep went to sweep-1
    assert strict_json((tmp_path / "sweep-1" / "sweep.json").read_text())["config"]["steps"] == 7
    runs = out / "runs.jsonl"
    lines = runs.read_text().splitlines()
    runs.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # a crash in the middle of a line
    (out / "sweep.json").unlink()
    state["calls"] = []
    assert sweep.main(["--resume", str(out), "--seeds", "2", "--workers", "1"]) == 0
    assert state["calls"] == [(1.0, 0), (0.0, 1), (0.5, 1), (1.0, 1)]
    assert [strict_json(line)["alpha"] for line in runs.read_text().splitlines()] == [0, 0.5, 1, 0, 0.5, 1]


def test_the_sweep_refuses_repeated_alphas_and_an_unusable_out_in_one_line(fake_sweep, tmp_path, capsys):
    sweep, _ = fake_sweep
    with pytest.raises(ValueError, match="must not repeat"):
        sweep.SweepConfig(alphas=(0.5, 1.0, 0.5))
    (tmp_path / "afile").write_text("")
    for argv, message in (
        (["--set", "alphas=[0,0.5,0.5]", "--out", str(tmp_path / "out")], "must not repeat"),
        (["--out", str(tmp_path / "afile" / "out")], "afile"),
        (["--resume", str(tmp_path)], "no usable config.json"),
    ):
        with pytest.raises(SystemExit) as exc:
            sweep.main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_sweeps_per_seed_accuracies_are_in_seed_order():
    """Runs finish in any order (worker processes); `acc` lists one value per seed, in seed order."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    def run(alpha, seed):
        mismatch = {"b": {"kl": alpha + 0.1, "top1": alpha + 0.1}}
        return {"alpha": alpha, "seed": seed, "final": {"accuracy/b": seed / 10}, "mismatch_start": mismatch}

    results = [run(1.0, 2), run(0.5, 0), run(1.0, 0), run(0.5, 2), run(0.5, 1), run(1.0, 1)]
    table = sweep.summarise(results, (0.5, 1.0), ["b"])["table"]["b"]
    assert table[0.5]["acc"] == pytest.approx([0.0, 10.0, 20.0])
    assert table[1.0]["acc"] == pytest.approx([0.0, 10.0, 20.0])


def test_bench_mock_runs_refuses_runs_below_1_and_no_seeds_and_reports_the_sample_sd(capsys):
    sys.path.insert(0, str(ROOT / "recipes"))
    import bench_mock_runs

    for argv, message in (
        (["--runs", "0", "2"], "--runs must be >= 1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            bench_mock_runs.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    scores = np.array([[0.2, 0.0], [0.4, 1.0]])  # (seeds, runs)
    (mean1, sd1), (mean2, sd2) = bench_mock_runs.run_stats(scores, [1, 2])
    assert (mean1, mean2) == pytest.approx((0.3, 0.5))
    assert (sd1, sd2) == pytest.approx((0.2 / 2**0.5, 1 / 2**0.5))  # ddof = 1, as bench.py's sd
    assert np.isnan(bench_mock_runs.run_stats(scores[:1], [1])[0][1])  # one seed: no sd


def test_bench_controllers_parses_its_arguments(capsys):
    sys.path.insert(0, str(ROOT / "recipes"))
    import bench_controllers

    with pytest.raises(SystemExit) as exc:  # --help prints the usage and runs nothing
        bench_controllers.main(["--help"])
    assert exc.value.code == 0 and "--probe-noise" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a typo is refused, not ignored
        bench_controllers.main(["--probe_noise"])
    assert exc.value.code == 2 and "unrecognized arguments: --probe_noise" in capsys.readouterr().err


def test_ship_warmstart_check_refuses_from_cache(capsys):
    sys.path.insert(0, str(ROOT / "recipes"))
    import ship_warmstart

    with pytest.raises(SystemExit) as exc:
        ship_warmstart.main(["--check", "--from-cache"])
    assert exc.value.code == 2 and "--from-cache needs --write" in capsys.readouterr().err


def test_ship_warmstart_check_reads_the_manifest_before_training(tmp_path, monkeypatch, capsys):
    """--check retrained the default (about 10 minutes) before reading the shipped manifest, then a
    damaged one was a traceback: it is read first now, and is one line."""
    import atesd.warmstart as ws

    sys.path.insert(0, str(ROOT / "recipes"))
    import ship_warmstart

    bad = tmp_path / "manifest.json"
    bad.write_text('{"61c9": ')
    for module in (ws, ship_warmstart):
        monkeypatch.setattr(module, "SHIPPED_MANIFEST", bad, raising=False)
    monkeypatch.setattr(ship_warmstart, "train_default", lambda *a: pytest.fail("it trained"))
    with pytest.raises(SystemExit) as exc:
        ship_warmstart.main(["--check"])
    assert exc.value.code == 2 and "does not read" in capsys.readouterr().err


def test_ship_warmstart_refuses_a_damaged_cache_entry(tmp_path, monkeypatch, capsys):
    """Shipping a cached entry whose weights were cut would record the damaged bytes' sha256 in the
    shipped manifest, so every user's check would pass on them: refused, nothing shipped."""
    import shutil

    import atesd.warmstart as ws

    sys.path.insert(0, str(ROOT / "recipes"))
    import ship_warmstart

    (key,) = ws.shipped_manifest()
    entry = tmp_path / "warmstart" / key
    shutil.copytree(ws.SHIPPED_DIR / key, entry)
    record = json.loads((entry / "warmstart.json").read_text())
    record["files"] = {"model.safetensors": ws.sha256_file(entry / "model.safetensors")}
    (entry / "warmstart.json").write_text(json.dumps(record))
    (entry / "model.safetensors").write_bytes(b"cut")
    monkeypatch.setenv("ATESD_CACHE", str(tmp_path))
    monkeypatch.setattr(ship_warmstart, "write", lambda *a: pytest.fail("shipped"))
    with pytest.raises(SystemExit) as exc:
        ship_warmstart.main(["--write", "--from-cache"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is damaged (its model.safetensors does not match the sha256" in err


def test_ship_warmstart_keeps_one_warm_start_and_a_damaged_manifest_names_itself(tmp_path, monkeypatch):
    """--write kept every older key's weights in the package (its comment: "one shipped warm start");
    a manifest cut short made every run fail on a JSON error that named no file."""
    import atesd.warmstart as ws

    sys.path.insert(0, str(ROOT / "recipes"))
    import ship_warmstart

    shipped = tmp_path / "shipped"
    (shipped / "oldkey").mkdir(parents=True)
    (shipped / "manifest.json").write_text(json.dumps({"oldkey": {"files": {}}}))
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    for module in (ws, ship_warmstart):
        monkeypatch.setattr(module, "SHIPPED_DIR", shipped, raising=False)
        monkeypatch.setattr(module, "SHIPPED_MANIFEST", shipped / "manifest.json", raising=False)
    ship_warmstart.write(source, "newkey", 2, True)
    assert sorted(p.name for p in shipped.iterdir()) == ["manifest.json", "newkey"]
    assert list(ws.shipped_manifest()) == ["newkey"]
    (shipped / "manifest.json").write_text('{"newkey": {"fi')
    with pytest.raises(ValueError, match="shipped warm starts' manifest .*manifest.json does not read"):
        ws.shipped_manifest()


def test_grounded_vs_alpha_refuses_no_batches_and_no_threads(capsys):
    sys.path.insert(0, str(ROOT / "recipes"))
    import grounded_vs_alpha

    for argv, message in (
        (["--batches", "0"], "--batches must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            grounded_vs_alpha.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["run", "bench", "eval", "sweep", "surrogate", "branch_alpha"])
def test_a_second_config_file_is_refused(recipe, tmp_path, capsys):
    """argparse kept the last of two --config options: the first file was dropped without a word."""
    import importlib

    module = importlib.import_module(f"recipes.{recipe}")
    needs = ["--bank", str(tmp_path)] if recipe == "surrogate" else []
    with pytest.raises(SystemExit) as exc:
        module.main([*needs, "--config", "a.yaml", "--config", "b.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "argument --config: given twice (a.yaml, then b.yaml)" in err[-1], err
    assert list(tmp_path.iterdir()) == []


def test_a_plot_is_written_whole_or_not_at_all(tmp_path):
    """A full disk (or a kill) while a plot was drawn left a half-written PNG, which made a run or a
    sweep look finished (the sweep now also draws its plot before sweep.json, its mark of the end)."""
    import errno

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atesd.state import DiskFull
    from recipes._plots import savefig_whole

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    savefig_whole(fig, tmp_path / "ok.png", dpi=50)
    assert (tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"

    def full(path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    fig.savefig = full
    with pytest.raises(DiskFull, match="no space left on the device writing .*bad.png"):
        savefig_whole(fig, tmp_path / "bad.png", dpi=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]


def test_a_command_that_fails_before_its_result_leaves_no_empty_parent(tmp_path, monkeypatch):
    """The directory of a command that failed at once is removed, and so is the `runs/` it made for it
    (a surrogate.py with a missing bank left an empty runs/ in the directory it ran from); a parent
    that was there before, or holds another run, stays."""
    from recipes import surrogate
    from recipes._progress import discard_dir, fresh_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        surrogate.main(["--bank", str(tmp_path / "no_bank"), "--episodes", "1"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        surrogate.main(["--bank", str(tmp_path / "no_bank"), "--episodes", "1", "--out", "a/b"])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    discard_dir(fresh_dir(tmp_path / "mine" / "runs", "x"))
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and not (tmp_path / "mine" / "runs").exists()
    kept = fresh_dir(tmp_path / "runs", "kept")
    discard_dir(fresh_dir(tmp_path / "runs", "failed"))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [kept.name]


def test_a_fresh_directory_survives_another_commands_discard_of_the_root(tmp_path, monkeypatch):
    """Two commands sharing a new runs/: A failing removed the empty runs/ while B was between making
    it and making its own directory, and B failed with FileNotFoundError."""
    from pathlib import Path as P

    from recipes._progress import discard_dir, fresh_dir

    a = fresh_dir(tmp_path / "runs", "a")
    real_mkdir, calls = P.mkdir, []

    def racing(self, *args, **kwargs):  # B's directory: A discards runs/ just before it is made
        if self.name == "b" and not calls:
            calls.append(self)
            discard_dir(a)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(P, "mkdir", racing)
    b = fresh_dir(tmp_path / "runs", "b")
    assert b.is_dir() and not a.exists() and calls


@pytest.mark.parametrize(
    "recipe, argv",
    [("bench", ["--seed", "3", "--env", "mock"]), ("run", ["--cont", "bandit", "--env", "mock"]),
     ("eval", ["--gre"]), ("sweep", ["--seed", "1"])],
)  # fmt: skip
def test_a_shortened_flag_is_refused_not_read_as_another(recipe, argv, capsys):
    """argparse took `bench.py --seed 3` for `--seeds 3` and ran seeds 0-2 (results.json recorded
    them against the command's --seed 3); every recipe now takes its flags whole."""
    import importlib

    module = importlib.import_module(f"recipes.{recipe}")
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
