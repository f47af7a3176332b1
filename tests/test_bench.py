"""recipes/bench.py: its statistics by hand and against scipy, its output directory and files, its
config errors, and one subprocess run over both envs (the real one on the tiny ci.yaml config)."""

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats

from atesd.significance import mean_ci, welch_p
from recipes import bench, run
from recipes.common import OWN_CONFIG, RunConfig

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def unit(env: str, controller: str, seed: int, final: float, curve=None) -> dict:
    return {"env": env, "controller": controller, "seed": seed, "final": final,
            "curve": curve if curve is not None else [final], "alpha_mean": 0.5, "seconds": 0.01}  # fmt: skip


def scipy_welch(a, b) -> float:
    """scipy's Welch p-value (its precision warning on a constant side silenced: the reference only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def read_json(path: Path) -> dict:
    """Strict JSON: a NaN written as NaN (not null) fails here."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_mean_ci_by_hand_and_against_scipy():
    x = np.array([0.61, 0.72, 0.55, 0.80, 0.67])
    mean, low, high = mean_ci(x)
    half = 2.7764451051977987 * x.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert mean == pytest.approx(0.67) and (low, high) == pytest.approx((0.67 - half, 0.67 + half))
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 4, loc=x.mean(), scale=stats.sem(x)))
    assert mean_ci([0.3, math.nan, 0.5]) == pytest.approx(mean_ci([0.3, 0.5]))  # NaN dropped
    one = mean_ci([0.4])
    assert one[0] == 0.4 and math.isnan(one[1]) and math.isnan(one[2])
    assert mean_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))


def test_welch_p_by_hand_and_against_scipy():
    a, b = np.array([0.61, 0.72, 0.55, 0.80]), np.array([0.40, 0.45, 0.52])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p(a, b) == pytest.approx(scipy_welch(a, b))
    # one constant side is fine (Welch); both constant, or fewer than two values: NaN, without warnings
    t_const = (a.mean() - 0.25) / math.sqrt(va)  # df = len(a) - 1 when the other side has no variance
    assert welch_p(a, [0.25, 0.25, 0.25]) == pytest.approx(2 * stats.t.sf(abs(t_const), len(a) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(welch_p([0.9, 0.9], [0.05, 0.05]))
        assert math.isnan(welch_p([0.9], a))
        assert math.isnan(welch_p([0.5, 0.5 + 1e-17, 0.5], [0.5, 0.5, 0.5]))


def test_summarise_regret_p_values_and_curves():
    finals = {"oracle": [0.9, 0.9, 0.9], "fixed": [0.25, 0.25, 0.25], "bandit": [0.78, 0.81, 0.80]}
    results = [unit("mock", c, s, v) for c, vs in finals.items() for s, v in enumerate(vs)]
    results += [unit("real", "fixed", s, v) for s, v in enumerate([0.30, 0.34, 0.31])]
    results += [unit("real", "bandit", s, v) for s, v in enumerate([0.40, 0.44, 0.47])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = bench.summarise(results, "fixed")
    mock, real = summary["mock"], summary["real"]
    assert list(mock) == ["oracle", "fixed", "bandit"] and list(real) == ["fixed", "bandit"]
    assert mock["bandit"]["regret"] == pytest.approx(0.9 - np.mean(finals["bandit"]))
    assert mock["fixed"]["regret"] == pytest.approx(0.65) and mock["oracle"]["regret"] == 0.0
    assert math.isnan(real["bandit"]["regret"])  # no oracle on the real env
    assert math.isnan(mock["fixed"]["p_value"]) and math.isnan(
        mock["oracle"]["p_value"]
    )  # self; both constant
    assert mock["oracle"]["p_note"] == "both constant" and mock["bandit"]["p_note"] == ""
    from recipes._tables import table_rows

    oracle_row = next(r for r in table_rows(summary, "fixed") if r[:2] == ["mock", "oracle"])
    assert oracle_row[6:8] == ["sd 0", "sd 0"]  # not the "-" of a row that is not tested
    assert mock["bandit"]["p_value"] == pytest.approx(scipy_welch(finals["bandit"], finals["fixed"]))
    assert real["bandit"]["p_value"] == pytest.approx(scipy_welch([0.40, 0.44, 0.47], [0.30, 0.34, 0.31]))
    # one-sided: half the two-sided p when the mean is above the baseline's, 1 - half when below
    assert real["bandit"]["p_greater"] == pytest.approx(real["bandit"]["p_value"] / 2)
    one_sided = bench.summarise(results, "bandit")["real"]["fixed"]
    assert one_sided["p_greater"] == pytest.approx(1 - real["bandit"]["p_value"] / 2)
    assert mock["bandit"]["finals"] == finals["bandit"] and mock["bandit"]["n"] == 3
    # curves keep NaN windows (the real env between evaluations) and average the finite ones
    curves = [unit("real", "fixed", s, 0.3, [math.nan, 0.2 + s / 10, math.nan, 0.3]) for s in range(2)]
    band = bench.curve_bands(curves)["real"]["fixed"]
    assert math.isnan(band["mean"][0]) and math.isnan(band["mean"][2])
    assert band["mean"][1] == pytest.approx(0.25) and band["mean"][3] == pytest.approx(0.3)


def test_files_parse_and_the_directory_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.time, "strftime", lambda fmt, *a: "20260101-000000")  # the same second
    argv = ["--controllers", "fixed,random,oracle", "--seeds", "3", "--set", "mock.total_steps=50"]
    first = bench.main([*argv, "--out", str(tmp_path), "--name", "t"])
    (first / "marker").write_text("first")
    second = bench.main([*argv, "--out", str(tmp_path), "--name", "t"])
    assert first.name == "bench__t__20260101-000000" and second.name == "bench__t__20260101-000000-1"
    assert (first / "marker").read_text() == "first"
    for run_dir in (first, second):
        with (run_dir / "results.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["env"], r["controller"]) for r in rows] == [
            ("mock", c) for c in ("fixed", "random", "oracle")
        ]
        assert float(rows[1]["regret"]) == pytest.approx(float(rows[2]["mean"]) - float(rows[1]["mean"]))
        assert rows[0]["p_value"] == ""  # the baseline itself
        record = read_json(run_dir / "results.json")
        assert record["config"]["mock"]["total_steps"] == 50 and record["baseline"] == "fixed"
        assert len(record["units"]) == 9 and len(record["units"][0]["curve"]) == 11  # window 0 (the start) on
        assert record["summary"]["mock"]["random"]["finals"] == [
            u["final"] for u in record["units"] if u["controller"] == "random"
        ]
        assert (run_dir / "curves.png").read_bytes()[:8] == PNG
    finals = [
        {c: s["finals"] for c, s in read_json(d / "results.json")["summary"]["mock"].items()}
        for d in (first, second)
    ]
    assert finals[0] == finals[1]  # the same seeds give the same scores


def test_a_bad_set_key_exits_2_with_the_closest_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--set", "controllers.bandit.kindd=ucb", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'controllers.bandit.kind'?" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        bench.main(["--controllers", "fixd", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "did you mean 'fixed'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_smoke_both_envs_in_a_subprocess(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, str(ROOT / "recipes" / "bench.py"), "--config", str(ROOT / "recipes/configs/ci.yaml"),
        "--env", "mock,real", "--controllers", "fixed,beta_reinforce,oracle", "--seeds", "2",
        "--set", f"real.cache_dir={tmp_path / 'cache'}", "--set", "threads=1", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'oracle' runs on the mock env only; skipped on real" in res.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    assert run_dir.name.startswith("bench__ci__")
    record = read_json(run_dir / "results.json")
    assert list(record["summary"]["mock"]) == ["fixed", "beta_reinforce", "oracle"]
    assert list(record["summary"]["real"]) == ["fixed", "beta_reinforce"]
    real_units = [u for u in record["units"] if u["env"] == "real"]
    assert len(real_units) == 4 and all(len(u["curve"]) == 4 for u in real_units)  # start, 6 updates / H = 2
    assert all(0.0 <= u["final"] <= 1.0 for u in real_units)
    assert all(len(u["evals"]) == 3 and u["evals"][-1] == u["final"] for u in real_units)  # eval_every 1
    assert len((run_dir / "results.csv").read_text().splitlines()) == 1 + 5
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG


def test_a_baseline_spelled_as_a_listed_spec_is_that_row(tmp_path, capsys):
    # `fixed` (the default baseline) is `fixed:alpha=1`: listing the latter ran alpha 1 twice, and a
    # bank recorded it twice
    argv = ["--controllers", "fixed:alpha=0.5,fixed:alpha=1", "--seeds", "2", "--set", "mock.total_steps=50",
            "--set", "plots=false", "--out", str(tmp_path)]  # fmt: skip
    record = read_json(bench.main(argv) / "results.json")
    assert record["controllers"] == ["fixed:alpha=0.5", "fixed:alpha=1"] and len(record["units"]) == 4
    assert record["baseline"] == "fixed:alpha=1"
    assert list(record["summary"]["mock"]) == ["fixed:alpha=0.5", "fixed:alpha=1"]
    assert "the baseline 'fixed' is the run config of 'fixed:alpha=1'" in capsys.readouterr().out
    # a baseline no listed spec spells is still added
    record = read_json(bench.main([*argv[:1], "fixed:alpha=0.5", *argv[2:]]) / "results.json")
    assert record["controllers"] == ["fixed:alpha=0.5", "fixed"] and record["baseline"] == "fixed"


def test_seed_ranges_and_controller_specs_each_their_own_row(tmp_path):
    short = ["--set", "mock.total_steps=50", "--out", str(tmp_path)]
    argv = ["--controllers", "fixed:alpha=0.75, fixed:alpha=1,random", "--seeds", "100-102",
            "--baseline", "fixed:alpha=0.75", *short]  # fmt: skip
    run_dir = bench.main(argv)
    record = read_json(run_dir / "results.json")
    assert record["seeds"] == [100, 101, 102] and record["baseline"] == "fixed:alpha=0.75"
    specs = ["fixed:alpha=0.75", "fixed:alpha=1", "random"]
    assert list(record["summary"]["mock"]) == specs
    assert [u["controller"] for u in record["units"]] == [s for s in specs for _ in range(3)]
    assert {u["seed"] for u in record["units"]} == {100, 101, 102}
    alphas = {s: record["summary"]["mock"][s]["alpha_mean"] for s in specs}
    assert alphas["fixed:alpha=0.75"] == pytest.approx(0.75) and alphas["fixed:alpha=1"] == pytest.approx(1.0)
    with (run_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["controller"] for r in rows] == specs and rows[0]["p_greater"] == ""
    # the same run config twice is one row, the first spelling's: with a space, or a bare name beside its
    # default spec (they ran the same runs twice, as two rows)
    again_dir = bench.main(
        ["--controllers", "fixed:alpha=1,fixed,fixed: alpha=1,fixed:alpha=1.0", "--seeds", "100-102", *short]
    )
    again = read_json(again_dir / "results.json")
    assert again["controllers"] == ["fixed:alpha=1"] and len(again["units"]) == 3
    assert again["baseline"] == "fixed:alpha=1"  # the default baseline, `fixed`, is that row
    assert (
        again["summary"]["mock"]["fixed:alpha=1"]["finals"]
        == record["summary"]["mock"]["fixed:alpha=1"]["finals"]
    )


def test_a_spec_sets_its_own_controller_start(tmp_path):
    """`init` in a spec is that unit's controller_init: two starts of one controller, one bench."""
    first = run.main(["--controller", "beta_reinforce", "--env", "mock", "mock.total_steps=50",
                      "plots=false", f"out_dir={tmp_path / 'runs'}"])  # fmt: skip
    state = read_json(first / "summary.json")["controller_state"]
    specs = f"beta_reinforce,beta_reinforce:init={state},beta_reinforce:init=none"
    argv = ["--controllers", specs, "--baseline", "beta_reinforce:init=none", "--seeds", "2",
            "--set", "mock.total_steps=50", "--out", str(tmp_path)]  # fmt: skip
    record = read_json(bench.main(argv) / "results.json")
    starts = {u["controller"]: u["controller_start"] for u in record["units"]}
    assert starts == {
        "beta_reinforce": OWN_CONFIG,  # the mock: no shipped prior
        f"beta_reinforce:init={state}": f"beta_reinforce starts from {state}",
        "beta_reinforce:init=none": OWN_CONFIG,
    }
    finals = {s: record["summary"]["mock"][s]["finals"] for s in starts}
    assert (
        finals["beta_reinforce"]
        == finals["beta_reinforce:init=none"]
        != finals[f"beta_reinforce:init={state}"]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "5-3"], "gives no seeds"),
        (["--seeds", "a-b"], "--seeds must be N or A-B"),
        (["--seeds", "0"], "gives no seeds"),
        (["--controllers", "fixed:alpha"], "'alpha' must look like key=value"),
        (["--controllers", "fixed:alpha=2"], "controller spec 'fixed:alpha=2'"),
        (["--controllers", "fixed:alpah=0.5"], "did you mean 'controllers.fixed.alpha'?"),
        (["--controllers", "fixed:alpha=0.5:alpha=0.6"], "sets alpha twice"),
        (["--controllers", ":alpha=0.5"], "names no controller"),
        (["--controllers", "fixd:alpha=0.5"], "did you mean 'fixed'?"),
        (["--score", "last"], "--score must be final, best or tail:K"),
        (["--score", "tail:0"], "--score must be final, best or tail:K"),
        (["--score", "tail"], "--score must be final, best or tail:K"),
        # set per unit from the options: a --set of them was overwritten unread
        (["--set", "env=real"], "--set env=real: bench.py sets env for each unit from --env"),
        (["--set", "seed=7"], "--set seed=7: bench.py sets seed for each unit from --seeds"),
        (["--set", "controller=bandit"], "bench.py sets controller for each unit from --controllers"),
        # a list of 10**12 seeds ended in a MemoryError; a seed past 2**63 failed inside torch
        (["--seeds", "0-1000000000000"], "at most 100000, each below 2**63"),
        (["--seeds", f"{2**64}-{2**64}"], "each below 2**63"),
        # every spec mock-only on another env: the table of no rows was a traceback
        (
            ["--env", "atesd/SkillChain-v0", "--controllers", "oracle", "--baseline", "oracle"],
            "no units to run",
        ),
        (
            ["--env", "atesd/MockExposure-v0", "--env-set", "grounded_change=no"],
            "must be true or false, got 'no'",
        ),
        # taken and ignored: no events were written, and nothing said so
        (["--set", "tensorboard=true"], "--set tensorboard=true, but bench.py writes no TensorBoard events"),
        # the real env took text as given: 'no' switched the signed reward on
        (
            ["--env", "atesd/TeacherExposure-v0", "--env-set", "signed_progress=no"],
            "signed_progress must be true or false, got 'no'",
        ),
    ],
)
def test_bad_seeds_and_specs_exit_2_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_that_sets_a_units_key_is_refused(tmp_path, capsys):
    """seed, controller and env in --config were dropped unread, and results.json recorded them."""
    (tmp_path / "c.yaml").write_text("seed: 7\n")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert (
        exc.value.code == 2
        and "c.yaml sets seed: 7, but bench.py sets seed for each unit from --seeds" in err
    )


def test_an_init_spec_is_one_row_by_its_absolute_path_and_its_state_recorded(tmp_path, monkeypatch):
    """A spec's init=PATH was neither made absolute (a resume from another directory found nothing)
    nor recorded in inputs.json (a state changed before a resume was read unnoticed); spaces around
    a spec's `=` made the key 'alpha '."""
    from atesd.state import save_state
    from controllers.fixed import FixedController

    monkeypatch.chdir(tmp_path)
    (tmp_path / "st").mkdir()
    env = bench._spaces(RunConfig(env="mock"))
    save_state(
        FixedController(env.observation_space, env.action_space).state_dict(), tmp_path / "st" / "fixed"
    )
    argv = ["--env", "mock", "--seeds", "1", "--controllers", "fixed:init = st/fixed, fixed:alpha = 0.5",
            "--baseline", "fixed:init=st/fixed", "--set", "plots=false", "--workers", "0",
            "--out", "out"]  # fmt: skip
    run_dir = bench.main(argv)
    rows = json.loads((run_dir / "plan.json").read_text())["controllers"]
    assert rows == [f"fixed:init={tmp_path / 'st' / 'fixed'}", "fixed:alpha=0.5"]
    inputs = json.loads((run_dir / "inputs.json").read_text())["files"]
    assert {f["path"] for f in inputs} == {
        str(tmp_path / "st" / f"fixed.{x}") for x in ("json", "safetensors")
    }


def test_a_resume_refuses_a_flag_given_at_its_default_too(tmp_path, capsys):
    """`--resume DIR --seeds 5` (5: the default) was let through and ignored, as `--seeds 6` is not."""
    run_dir = bench.main(["--env", "mock", "--seeds", "2", "--controllers", "fixed", "--set", "plots=false",
                          "--workers", "0", "--out", str(tmp_path)])  # fmt: skip
    (run_dir / "results.json").unlink()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--resume", str(run_dir), "--seeds", "5", "--score=final"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "drop --seeds, --score (only --workers may change)" in err, err
    # a damaged plan.json: a bare KeyError 'units', or JSON's line and column without the file
    for text, said in (("{}", "plan.json lacks units, config, baseline"), ("{", "plan.json does not read")):
        (run_dir / "plan.json").write_text(text)
        with pytest.raises(SystemExit):
            bench.main(["--resume", str(run_dir)])
        assert said in capsys.readouterr().err


def test_a_bank_dir_that_is_a_file_fails_before_any_unit_runs(tmp_path, monkeypatch, capsys):
    """Every unit failed with the recorder's bare `[Errno 17] File exists`, naming no setting."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(bench, "run_units", lambda *a: pytest.fail("a unit ran"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--env", "mock", "--controllers", "fixed", "--seeds", "1", "--out", str(tmp_path / "out"),
                    "--set", f"bank_dir={tmp_path / 'afile'}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"bank_dir={tmp_path / 'afile'} is a file" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_an_unusable_out_fails_before_any_unit_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(bench, "run_units", lambda *a: pytest.fail("a unit ran"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--controllers", "fixed", "--seeds", "1", "--out", str(tmp_path / "afile" / "sub")])
    assert exc.value.code == 2 and "afile" in capsys.readouterr().err


def test_the_directory_is_made_before_the_warm_start_and_removed_when_it_fails(tmp_path, monkeypatch, capsys):
    """The warm start (minutes when not cached) ran before --out was tried, and its failure must not
    leave a directory behind."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(bench, "warm_start_real", lambda cfg: pytest.fail("warmed up before --out was made"))
    argv = ["--env", "real", "--controllers", "fixed", "--seeds", "1"]
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path / "afile" / "sub")])
    assert exc.value.code == 2 and "afile" in capsys.readouterr().err
    made = []

    def failing_warm_start(cfg):
        made.extend((tmp_path / "out").iterdir())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "warm_start_real", failing_warm_start)
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and len(made) == 1 and not (tmp_path / "out").exists()  # and the out made


def test_parallel_workers_keep_a_threads_that_was_given(tmp_path):
    """--workers 2 ran one torch thread per worker whatever threads said; now only when it says nothing."""

    def threads(*argv: str) -> int:
        return bench.plan(bench.build_parser().parse_args(["--controllers", "fixed", *argv]))[0].threads

    assert threads("--workers", "2") == 1 and threads() == 0  # the default, 0: follow the free cores
    assert threads("--workers", "2", "--set", "threads=4") == 4
    (tmp_path / "c.yaml").write_text("threads: 3\n")
    assert threads("--workers", "2", "--config", str(tmp_path / "c.yaml")) == 3
    assert threads("--workers", "2", "--config", str(tmp_path / "c.yaml"), "--set", "threads=0") == 0


def test_bank_dir_records_an_env_given_by_id(tmp_path):
    """bank_dir recorded the mock and the real env only: on an env given by id it wrote nothing and
    said nothing. Every unit now records its file, with the id and --env-set in the bank's config,
    so two settings of one id are refused as one bank."""
    from envs.bank import read_bank

    def record(bank: Path, *env_set: str) -> None:
        bench.main(["--env", "atesd/SkillChain-ramp-v0", "--controllers", "fixed,random", "--seeds", "2",
                    "--set", f"bank_dir={bank}", "--set", "plots=false", "--out", str(tmp_path / "out"),
                    *env_set])  # fmt: skip

    record(tmp_path / "bank")
    files = sorted(p.name for p in (tmp_path / "bank").iterdir())
    assert len(files) == 4 and all(f.startswith("atesd-SkillChain-ramp-v0__") for f in files)
    assert len(read_bank(tmp_path / "bank").runs) == 4
    record(tmp_path / "bank", "--env-set", "noise=0.05")
    with pytest.raises(ValueError, match="config"):
        read_bank(tmp_path / "bank")


def test_an_env_given_by_id_checks_controllers_against_its_own_h_and_gamma(tmp_path, capsys):
    """A controller on an env given by id takes H and gamma from that env: it was checked against the
    mock's (mock.hold_steps=5, mock.gamma=0.9) and errors named mock.* keys, so beta_reinforce could not
    run at all on an env of H = 4. Errors name the --env-set key, or the env's own value."""
    short = ["--seeds", "1", "--set", "plots=false", "--out", str(tmp_path)]
    env = ["--env", "atesd/SkillChain-ramp-v0", *short]
    h4 = ["--env-set", "hold_steps=4", "--env-set", "total_steps=40"]
    for spec, argv in (
        ("beta_reinforce:lookahead_steps=8", h4),
        ("beta_reinforce", [*h4, "--set", "controllers.beta_reinforce.lookahead_steps=8"]),
        ("beta_reinforce:gamma=0.5", ["--env-set", "gamma=0.5"]),
    ):
        run_dir = bench.main([*env, *argv, "--controllers", spec, "--baseline", spec])
        assert read_json(run_dir / "results.json")["summary"]["atesd/SkillChain-ramp-v0"][spec]["n"] == 1
    for argv, message in (
        ([*h4, "--controllers", "beta_reinforce"], "lookahead_steps=10 must be a multiple of the env's "
         "hold_steps (--env-set hold_steps=4)"),
        (["--controllers", "beta_reinforce:gamma=0.5"], "gamma=0.5 contradicts the env's gamma=0.9:"),
        (["--env-set", "gamma=0.5", "--controllers", "beta_reinforce:gamma=0.6"],
         "gamma=0.6 contradicts --env-set gamma=0.5:"),
    ):  # fmt: skip
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            bench.main([*env, *argv])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and "mock." not in err, err
        assert len(err.splitlines()) == 1
    # the shared settings are checked on each unit's env, not on the config's default one (real, H = 5)
    mock = ["--env", "mock", "--set", "mock.hold_steps=4", "--set", "mock.total_steps=40",
            "--set", "controllers.beta_reinforce.lookahead_steps=8"]  # fmt: skip
    run_dir = bench.main([*mock, "--controllers", "beta_reinforce", "--baseline", "beta_reinforce", *short])
    assert read_json(run_dir / "results.json")["summary"]["mock"]["beta_reinforce"]["n"] == 1


def test_a_failure_after_the_results_are_written_keeps_them(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "plot_curves", full_disk)
    with pytest.raises(SystemExit):
        bench.main(
            ["--controllers", "fixed", "--seeds", "1", "--set", "mock.total_steps=50", "--out", str(tmp_path)]
        )
    (run_dir,) = tmp_path.iterdir()
    assert {"results.csv", "results.json"} <= {p.name for p in run_dir.iterdir()}


def test_an_interrupted_bench_leaves_no_directory(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_units", interrupted)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--controllers", "fixed", "--seeds", "1", "--out", str(tmp_path)])
    assert exc.value.code == 130 and "no results were written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_scores_final_best_and_tail_read_the_evaluations():
    # the real env: NaN between evaluations; the start (window 0) never counts
    curve = [0.9, math.nan, 0.5, math.nan, 0.7, math.nan, 0.4]
    u = unit("real", "fixed", 0, 0.4, curve)
    assert bench.unit_score(u, "final") == 0.4 and bench.unit_score(u, "best") == 0.7
    assert bench.unit_score(u, "tail:2") == pytest.approx(0.55)
    assert bench.unit_score(u, "tail:9") == pytest.approx((0.5 + 0.7 + 0.4) / 3)  # all it has
    assert bench.unit_score(unit("real", "fixed", 0, 0.3, [0.2]), "best") == 0.3  # no evaluation: final
    # recorded evaluations win over the curve (where the real env repeats its last evaluation)
    repeated = unit("real", "fixed", 0, 0.4, [0.9, math.nan, 0.5, 0.5, 0.7, 0.7, 0.4]) | {
        "evals": [0.5, 0.7, 0.4]
    }
    assert bench.unit_score(repeated, "tail:3") == pytest.approx((0.5 + 0.7 + 0.4) / 3)
    # an evaluation that reported no score (NaN) is skipped wherever it falls, not a NaN unit
    for evals in ([math.nan, 0.5, 0.7], [0.5, math.nan, 0.7], [0.5, 0.7, math.nan]):
        gappy = unit("real", "fixed", 0, 0.4, curve) | {"evals": evals}
        assert bench.unit_score(gappy, "best") == 0.7
        assert bench.unit_score(gappy, "tail:2") == pytest.approx(0.6)
    results = [unit("real", c, s, 0.4, [0.1, 0.6 + s / 10, 0.4]) for c in ("fixed", "random") for s in (0, 1)]
    best = bench.summarise(results, "fixed", "best")["real"]["random"]
    assert best["finals"] == [0.6, 0.7] and best["mean"] == pytest.approx(0.65)


class QuadraticEnv(gym.Env):
    """An exposure env of someone else's: one alpha, reward -(alpha - 0.3)^2, no info keys, no score."""

    observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = -float((action[0] - 0.3) ** 2)
        return np.full(3, self.t / 20, np.float32), reward, self.t >= 20, False, {}


def test_any_registered_gymnasium_id_with_the_exposure_action_space(tmp_path, capsys):
    if "test/Quadratic-v0" not in gym.registry:
        gym.register("test/Quadratic-v0", entry_point=QuadraticEnv)
    specs = "fixed:alpha=0.3,fixed:alpha=1,random,beta_reinforce,bandit"
    argv = ["--env", "test/Quadratic-v0", "--controllers", specs, "--seeds", "3", "--set", "plots=false",
            "--out", str(tmp_path)]  # fmt: skip
    # no reward_spec: the learners keep their own H and gamma, and say so (they said nothing)
    with pytest.warns(
        UserWarning, match=r"no reward_spec, so controller bandit uses its own hold_steps=5"
    ) as said:
        summary = read_json(bench.main(argv) / "results.json")["summary"]["test/Quadratic-v0"]
    # once per learner, when the specs are checked (the 3 seeds' units said it again, each)
    assert sorted(str(w.message).split()[7] for w in said if "no reward_spec" in str(w.message)) == [
        "bandit",
        "beta_reinforce",
    ]
    assert summary["fixed:alpha=0.3"]["mean"] == pytest.approx(0.0)  # the return: no score in its info
    assert summary["fixed:alpha=1"]["mean"] == pytest.approx(-20 * 0.49)
    assert all(-20 <= s["mean"] <= 0 for s in summary.values())  # the learners ran on its step rewards
    assert {s["scored_by"] for s in summary.values()} == {"return"}  # and the table says so
    out = capsys.readouterr().out
    assert "on test/Quadratic-v0 (no score in its info): the episode's undiscounted return" in out
    assert "regret:" not in out  # no oracle ran: the caption explained an empty column
    # this package's mock by its id equals --env mock, seed for seed
    by_id = bench.main(["--env", "atesd/MockExposure-v0,mock", "--controllers", "beta_reinforce",
                        "--seeds", "2", "--baseline", "beta_reinforce", "--set", "plots=false",
                        "--out", str(tmp_path)])  # fmt: skip
    both = read_json(by_id / "results.json")["summary"]
    assert (
        both["atesd/MockExposure-v0"]["beta_reinforce"]["finals"] == both["mock"]["beta_reinforce"]["finals"]
    )


def interrupt_unit(monkeypatch, n: int) -> list:
    """bench.run_unit stopped by a Ctrl-C at its n-th call; returns the (env, spec, seed) of its calls."""
    real_unit, calls = bench.run_unit, []

    def stop_at_the_nth(*args):
        calls.append(args[1:4])
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_unit(*args)

    monkeypatch.setattr(bench, "run_unit", stop_at_the_nth)
    return calls


def test_a_resumed_bench_says_what_its_spec_checks_said(tmp_path, monkeypatch):
    """The units keep the no-reward_spec warning to themselves (the spec checks said it), but a --resume
    checks no specs: it said nothing about the learners still to run."""
    if "test/Quadratic-v0" not in gym.registry:
        gym.register("test/Quadratic-v0", entry_point=QuadraticEnv)
    argv = ["--env", "test/Quadratic-v0", "--controllers", "fixed,bandit,random", "--baseline", "fixed",
            "--seeds", "2", "--set", "plots=false", "--out", str(tmp_path)]  # fmt: skip
    interrupt_unit(monkeypatch, 2)
    with pytest.warns(UserWarning, match="no reward_spec, so controller bandit"), pytest.raises(SystemExit):
        bench.main(argv)
    (run_dir,) = tmp_path.iterdir()
    with pytest.warns(UserWarning, match="no reward_spec") as said:
        bench.main(["--resume", str(run_dir)])
    assert [str(w.message).split()[7] for w in said if "no reward_spec" in str(w.message)] == ["bandit"]


def test_a_nan_score_stays_nan_and_the_oracle_runs_on_the_mock_only(tmp_path):
    """A reported NaN score was replaced by the episode's return and averaged in with other seeds'
    scores (0.84, 76.18, ...); only an env that reports no score is scored by its return. The oracle
    (which needs the mock's oracle_alpha) is skipped on any other env, not a crash after every mock
    unit ran."""

    class Result:
        def __init__(self, info):
            self.final_info, self.rewards = info, [1.0, 2.0]

    assert math.isnan(bench.episode_score(Result({"score": math.nan})))
    assert bench.episode_score(Result({})) == 3.0 and bench.episode_score(Result({"score": 0.5})) == 0.5
    if "test/Quadratic-v0" not in gym.registry:
        gym.register("test/Quadratic-v0", entry_point=QuadraticEnv)
    argv = ["--env", "mock,test/Quadratic-v0", "--controllers", "oracle,random", "--baseline", "random",
            "--seeds", "2", "--set", "plots=false", "--set", "mock.total_steps=50",
            "--out", str(tmp_path)]  # fmt: skip
    summary = read_json(bench.main(argv) / "results.json")["summary"]
    assert "oracle" in summary["mock"] and list(summary["test/Quadratic-v0"]) == ["random"]


def test_an_env_without_the_exposure_action_space_is_refused(tmp_path, capsys):
    for env, message in (("CartPole-v1", "exposure controllers need Box(0, 1, (K,))"),
                         ("nope/Nothing-v0", "unknown env 'nope/Nothing-v0'")):  # fmt: skip
        with pytest.raises(SystemExit):
            bench.main(["--env", env, "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_controller_that_reads_an_entry_by_position_is_checked_by_name():
    import types

    import gymnasium as gym

    from recipes.common import RunConfig, build_controller

    space = gym.spaces.Box(0.0, 1.0, (6,), dtype=np.float32)
    act = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)

    def env(names):
        inner = types.SimpleNamespace(observation_names=names, reward_spec=RunConfig().reward_spec)
        return types.SimpleNamespace(observation_space=space, action_space=act, unwrapped=inner)

    build_controller(RunConfig(controller="schedule"), env(("progress", "a", "b", "c", "d", "e")))
    with pytest.raises(Exception, match="reads observation entry 0 as 'progress', but this env has 'loss'"):
        build_controller(RunConfig(controller="schedule"), env(("loss", "progress", "b", "c", "d", "e")))


def test_a_stopped_bench_keeps_its_finished_units_and_resumes_the_rest(tmp_path, monkeypatch, capsys):
    """Ctrl-C (or a crash) dropped every finished unit: hours of real-env units run again. Each unit
    is now kept in units.jsonl as it finishes; --resume DIR runs only the rest and writes the results
    an uncut bench writes."""
    argv = ["--controllers", "fixed:alpha=0.5,random", "--baseline", "random", "--seeds", "3",
            "--set", "mock.total_steps=50", "--set", "plots=false"]  # fmt: skip
    uncut = bench.main([*argv, "--out", str(tmp_path / "uncut")])
    calls = interrupt_unit(monkeypatch, 4)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--out", str(tmp_path / "cut")])
    (run_dir,) = (tmp_path / "cut").iterdir()
    err = capsys.readouterr().err
    assert exc.value.code == 130 and f"kept 3 of 6 units in {run_dir / 'units.jsonl'}" in err
    assert f"--resume {run_dir}" in err and not (run_dir / "results.json").exists()
    with (run_dir / "units.jsonl").open("a") as fh:
        fh.write('{"env": "mock", "contr')  # a line torn by a crash: dropped, that unit runs again
    calls.clear()
    with pytest.raises(SystemExit) as exc:  # the bench's own settings only
        bench.main(["--resume", str(run_dir), "--seeds", "4"])
    assert exc.value.code == 2 and "drop --seeds" in capsys.readouterr().err
    assert bench.main(["--resume", str(run_dir)]) == run_dir
    assert calls == [("mock", "random", 0), ("mock", "random", 1), ("mock", "random", 2)]

    def units(path):
        return [
            {k: v for k, v in u.items() if k != "seconds"} for u in read_json(path / "results.json")["units"]
        ]

    assert units(run_dir) == units(uncut)

    def summary(path):  # timings aside
        rows = read_json(path / "results.json")["summary"]["mock"]
        return {c: {k: v for k, v in row.items() if k != "seconds"} for c, row in rows.items()}

    assert summary(run_dir) == summary(uncut)
    assert (
        "is finished"
        in (capsys.readouterr(), bench.main(["--resume", str(run_dir)]), capsys.readouterr())[2].out
    )


def test_a_bench_and_its_resume_hold_its_directory(tmp_path, monkeypatch, capsys):
    """Two --resume of one bench at once both ran the units units.jsonl lacked, each recording them
    (19 lines for 12 units): the bench and its resume hold the directory as the sweep does."""
    from atesd.config import ConfigError
    from recipes._rundir import run_lock

    argv = ["--controllers", "fixed", "--seeds", "2", "--set", "mock.total_steps=10", "--set", "plots=false",
            "--out", str(tmp_path)]  # fmt: skip
    real_unit, refused = bench.run_unit, []

    def unit_while_another_tries(*args):
        (run_dir,) = tmp_path.iterdir()
        with pytest.raises(ConfigError, match="is being benched by another process") as err:
            with run_lock(run_dir, doing="benched"):
                pass
        refused.append(str(err.value))
        return real_unit(*args)

    monkeypatch.setattr(bench, "run_unit", unit_while_another_tries)
    run_dir = bench.main(argv)
    assert len(refused) == 2
    monkeypatch.undo()
    (run_dir / "results.json").unlink()  # as if stopped before its results
    units = (run_dir / "units.jsonl").read_bytes()
    capsys.readouterr()
    with run_lock(run_dir, doing="benched"):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{run_dir} is being benched by another process (pid {os.getpid()})" in err
    assert (run_dir / "units.jsonl").read_bytes() == units and not (run_dir / "results.json").exists()
    assert bench.main(["--resume", str(run_dir)]) == run_dir and (run_dir / "results.json").exists()


@pytest.mark.slow  # subprocesses
def test_an_env_registered_by_the_calling_script_runs_in_the_workers_too(tmp_path, capsys, monkeypatch):
    """Spawned workers import this package's envs, not one the calling script registered: every unit
    failed there with NamespaceNotFound (a worker's traceback). Its registration now goes along; one
    that cannot be sent (a local class) is refused in one line."""
    if "test/Quadratic-v0" not in gym.registry:
        gym.register("test/Quadratic-v0", entry_point=QuadraticEnv)
    argv = ["--env", "test/Quadratic-v0", "--controllers", "fixed:alpha=0.5", "--seeds", "2",
            "--set", "plots=false", "--out", str(tmp_path)]  # fmt: skip
    summary = read_json(bench.main([*argv, "--workers", "2"]) / "results.json")["summary"]
    assert summary["test/Quadratic-v0"]["fixed:alpha=0.5"]["finals"] == [pytest.approx(-20 * 0.04)] * 2

    # from the shell: `module:Id` imports the module that registers the env, in the workers too
    (tmp_path / "quadratic_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('test/QuadraticMod-v0', entry_point='test_bench:QuadraticEnv')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    by_module = [a if a != "test/Quadratic-v0" else "quadratic_envs:test/QuadraticMod-v0" for a in argv]
    summary = read_json(bench.main([*by_module, "--workers", "2"]) / "results.json")["summary"]
    assert summary["quadratic_envs:test/QuadraticMod-v0"]["fixed:alpha=0.5"]["n"] == 2

    class Local(QuadraticEnv):
        pass

    gym.register("test/Local-v0", entry_point=Local)
    try:
        with pytest.raises(SystemExit):
            bench.main(
                ["--env", "test/Local-v0", "--seeds", "1", "--workers", "2", "--out", str(tmp_path / "x")]
            )
    finally:
        del gym.registry["test/Local-v0"]
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--env test/Local-v0: its registration cannot be sent to the worker processes" in err, err


def test_a_reward_spec_that_is_not_one_is_refused_in_one_line():
    """A dict as reward_spec gave AttributeError tracebacks ('dict' object has no attribute
    'hold_steps'); a namespace with H and gamma only, another one at the first credit (total_steps).
    A dict is read by key (it was then said to lack the keys it has)."""
    import types

    from atesd import config as cfglib
    from recipes.common import RunConfig, build_controller

    env = QuadraticEnv()
    env.reward_spec = {"hold_steps": 4, "gamma": 0.8}
    with pytest.raises(
        cfglib.ConfigError, match="reward_spec .dict. has no total_steps, lambda_gt, signed_pro"
    ):
        build_controller(RunConfig(controller="ppo"), env)
    env.reward_spec = types.SimpleNamespace(hold_steps=4, gamma=0.8)
    with pytest.raises(cfglib.ConfigError, match="has no total_steps, lambda_gt, signed_progress"):
        build_controller(RunConfig(controller="bandit"), env)
    env.reward_spec = types.SimpleNamespace(hold_steps=4, gamma=0.8, total_steps=20, lambda_gt=0.0,
                                            signed_progress=False)  # fmt: skip
    assert build_controller(RunConfig(controller="ppo"), env).cfg.hold_steps == 4


def test_a_cached_warm_start_shows_no_bar(monkeypatch, capsys):
    """The bench opened its warm-start bar before it knew whether anything trains: on a cache hit a
    frozen 'warm start 0/40' stayed on a terminal. The bar now opens at the first training step."""
    import atesd.builder as builder
    from recipes.common import RunConfig

    calls = []

    def cached(cfg, task, progress=None, dist=None):  # a cache hit: the callback is never called
        calls.append(progress)

    monkeypatch.setattr(builder, "build_student", cached)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws its live bar as on a terminal
    bench.warm_start_real(RunConfig())
    out = capsys.readouterr().out
    assert len(calls) == 1 and "0/" not in out and "warm start ready" in out, out


def test_run_one_and_the_degradation_test_use_the_score_asked(tmp_path, capsys):
    """--score tail:K compared the last run's tail mean with run 1's final score: a deterministic
    schedule (every run identical) showed run 1 0.8812 beside a mean of 0.7834."""
    argv = ["--controllers", "schedule,random,beta_reinforce", "--baseline", "random", "--seeds", "3",
            "--set", "episodes=3", "--set", "mock.total_steps=50", "--set", "plots=false",
            "--score", "tail:5", "--out", str(tmp_path)]  # fmt: skip
    run_dir = bench.main(argv)
    record = read_json(run_dir / "results.json")
    summary = record["summary"]["mock"]
    schedule = summary["schedule"]
    assert schedule["run1_mean"] == pytest.approx(schedule["mean"]) and schedule["p_worse_note"]
    for unit in record["units"]:  # each episode scored as the last one is: the mean of its last 5
        assert len(unit["run_evals"]) == 3 and unit["run_evals"][-1] == unit["evals"]
        assert bench.run_scores(unit, "tail:5")[-1] == pytest.approx(bench.unit_score(unit, "tail:5"))
    learner = [u for u in record["units"] if u["controller"] == "beta_reinforce"]
    run1 = [float(np.mean(u["run_evals"][0][-5:])) for u in sorted(learner, key=lambda u: u["seed"])]
    assert summary["beta_reinforce"]["run1_mean"] == pytest.approx(np.mean(run1))
    out = capsys.readouterr().out
    assert (
        "run 1: mean of the last 5 evaluations (all, where a run has fewer) of the first episode" in out
        and "every seed changed" in out
    )
    with (run_dir / "results.csv").open() as fh:  # the notes reach the CSV, where the p cells are empty
        rows = {r["controller"]: r for r in csv.DictReader(fh)}
    assert rows["schedule"]["p_worse"] == "" and rows["schedule"]["p_worse_note"] == "constant difference"
    # a unit recorded before each episode's evaluations were: run 1 unknown under tail, not the final
    old = dict(learner[0], run_evals=[])
    assert all(math.isnan(v) for v in bench.run_scores(old, "tail:5"))
    assert bench.run_scores(old, "final") == old["runs"]
    # a resumed older bench: its row's run 1 is not taken over the newer units alone, beside a mean of all
    mixed = bench.summarise([old, *learner[1:]], "beta_reinforce", "tail:5")["mock"]["beta_reinforce"]
    assert mixed["n"] == 3 and math.isnan(mixed["run1_mean"]) and math.isnan(mixed["p_worse"])


def test_p_values_never_print_rounded_across_005_and_constants_are_judged_to_rounding():
    from atesd.significance import is_constant, paired_exact, paired_p
    from recipes._tables import _fmt_p

    assert [_fmt_p(p) for p in (0.0496, 0.0504, 0.04996, 0.05, 0.0012345, 0.5, math.nan)] == [
        "0.0496", "0.05", "0.04996", "0.05", "0.0012", "0.5", "-"]  # fmt: skip
    assert is_constant([0.8, 0.8 + 1e-15, 0.8]) and not is_constant([0.8, 0.8001])
    assert math.isnan(welch_p([0.8, 0.8 + 1e-15, 0.8], [0.7, 0.7, 0.7 - 1e-15]))  # was p 8e-06
    drop = ([0.7, 0.6, 0.5, 0.4], [0.8, 0.7, 0.6, 0.5])  # every seed 0.1 lower
    assert math.isnan(paired_p(*drop, "less")) and paired_exact(*drop)
    assert not paired_exact([0.7, 0.6, 0.55], [0.8, 0.7, 0.6])
    # returns of 1e5 (an env of others, scored by its return): a constant 0.1 drop rounds by ~1e-11
    first = [123456.7, 234567.1, 345678.9, 98765.4]
    assert paired_exact([v - 0.1 for v in first], first) and not is_constant([1e-13, 5e-13, 9e-13])


def test_a_bench_that_fails_says_what_it_kept_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    """A failure (not Ctrl-C) after some units printed the error alone, though units.jsonl held them
    and USAGE promised the --resume line."""
    real_unit, calls = bench.run_unit, []

    def fail_at_the_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise ValueError("action alpha must be in [0, 1], got 1.5")
        return real_unit(*args)

    monkeypatch.setattr(bench, "run_unit", fail_at_the_third)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--controllers", "fixed:alpha=0.5,random", "--baseline", "random", "--seeds", "2",
                    "--set", "mock.total_steps=50", "--set", "plots=false",
                    "--out", str(tmp_path)])  # fmt: skip
    (run_dir,) = tmp_path.iterdir()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"kept 2 of 4 units in {run_dir / 'units.jsonl'}" in err
    assert f"--resume {run_dir}" in err and "error: action alpha must be in [0, 1], got 1.5" in err


def test_a_controllers_seed_is_the_runs_and_setting_it_is_refused(tmp_path, capsys):
    """controllers.random.seed=7 was replaced by the run's seed without a word, yet recorded in
    config.json (and a resume refused a change of it, which changed nothing)."""
    with pytest.raises(SystemExit) as exc:
        run.main(
            ["--controller", "random", "--env", "mock", "controllers.random.seed=7", f"out_dir={tmp_path}"]
        )
    assert exc.value.code == 2 and "controllers.random.seed=7: a controller's seed is the run's" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        bench.main(["--controllers", "random:seed=3", "--seeds", "1", "--out", str(tmp_path)])
    assert "drop controllers.random.seed" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_an_outside_env_is_checked_where_it_says_less():
    """A reads index past an unnamed observation gave an IndexError traceback at the first act; a
    reward_spec given as a dict was said to lack the keys it has."""
    import types

    from controllers.base import as_action
    from recipes.common import RunConfig, build_controller, reward_spec_of

    act = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)

    def env(size, spec=None):
        space = gym.spaces.Box(0.0, 1.0, (size,), dtype=np.float32)
        inner = types.SimpleNamespace(reward_spec=spec or RunConfig().reward_spec)
        return types.SimpleNamespace(observation_space=space, action_space=act, unwrapped=inner)

    build_controller(RunConfig(controller="schedule"), env(1))  # reads entry 0: there
    with pytest.raises(
        Exception, match="reads observation entry 0 as 'progress', but this env's observations"
    ):
        build_controller(RunConfig(controller="schedule"), env(0))
    spec = RunConfig().reward_spec
    as_dict = {
        k: getattr(spec, k) for k in ("hold_steps", "gamma", "total_steps", "lambda_gt", "signed_progress")
    }
    assert reward_spec_of(env(6, as_dict)) == spec._replace(grounded_change=False)
    # as_action clips by default (a probe at the bounds); clip=False says a controller is broken
    assert as_action(1.5, act)[0] == 1.0 and as_action(1.0 + 1e-9, act, clip=False)[0] == 1.0
    with pytest.raises(ValueError, match=r"alpha 1.5 is outside the action space's \[0, 1\]"):
        as_action(1.5, act, clip=False)


def test_an_error_inside_a_controller_names_the_method_window_and_unit(tmp_path, monkeypatch, capsys):
    """A numpy error in a controller's observe printed only 'operands could not be broadcast ...': no
    controller, method, window or bench unit."""
    from controllers.random import RandomController

    def broken(self, *args):
        if args[-1].get("steps_done", 0) >= 15:  # window 3 of H = 5
            raise ValueError("operands could not be broadcast together with shapes (5,) (3,)")
        return {}

    monkeypatch.setattr(RandomController, "observe", broken)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--controllers", "random", "--seeds", "1", "--set", "mock.total_steps=50",
                    "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: operands could not be broadcast together" in err
    assert "(in RandomController.observe, window 3) (bench unit mock/random/0)" in err


def test_a_spec_warning_is_said_once_not_once_a_unit(tmp_path, monkeypatch):
    """A lookahead longer than an episode was warned when the specs were checked and again by every
    unit (and by every worker, as a raw Python warning); a --resume says it for the specs still to run."""
    argv = ["--env", "mock", "--controllers", "fixed,beta_reinforce", "--baseline", "fixed", "--seeds", "3",
            "--set", "mock.total_steps=5", "--set", "plots=false", "--out", str(tmp_path)]  # fmt: skip

    def said(record) -> list[str]:
        return [str(w.message).split("=")[0] for w in record if "is longer than an episode" in str(w.message)]

    with pytest.warns(UserWarning, match="lookahead_steps") as record:
        bench.main(argv)
    assert said(record) == ["controllers.beta_reinforce.lookahead_steps"]
    interrupt_unit(monkeypatch, 2)
    with pytest.warns(UserWarning, match="lookahead_steps"), pytest.raises(SystemExit):
        bench.main([*argv[:-1], str(tmp_path / "cut")])
    (run_dir,) = (tmp_path / "cut").iterdir()
    with pytest.warns(UserWarning, match="lookahead_steps") as record:
        bench.main(["--resume", str(run_dir)])
    assert said(record) == ["controllers.beta_reinforce.lookahead_steps"]


def test_the_regret_caption_only_where_an_oracle_ran(tmp_path, capsys):
    argv = ["--env", "mock", "--seeds", "1", "--set", "mock.total_steps=20", "--set", "plots=false",
            "--out", str(tmp_path), "--baseline", "fixed"]  # fmt: skip
    bench.main([*argv, "--controllers", "oracle,fixed"])
    assert "regret: oracle mean - mean (mock env)" in capsys.readouterr().out
    bench.main([*argv, "--controllers", "random,fixed"])
    assert "regret:" not in capsys.readouterr().out


def test_a_resumed_bench_records_a_cut_unit_in_its_bank_once(tmp_path, monkeypatch):
    """A unit cut mid-episode left its bank file beside the one its rerun recorded: the bank held its
    windows twice (a tag names the controller and seed, not the spec, so nothing told them apart).
    Each unit now notes its bank file in the bench directory, and a resume removes a cut unit's."""
    import controllers.base
    from envs.bank import read_bank

    def argv(name):
        return ["--controllers", "fixed:alpha=0.5,random", "--baseline", "random", "--seeds", "2",
                "--set", "mock.total_steps=50", "--set", "plots=false",
                "--set", f"bank_dir={tmp_path / name}", "--out", str(tmp_path / f"{name}_out")]  # fmt: skip

    bench.main(argv("uncut"))
    real_episode, calls = controllers.base.run_episode, []

    def cut_mid_episode(env, agent, seed=None, on_step=None):
        calls.append(seed)

        def stop_after_three(step, transition):
            on_step(step, transition)
            if step == 2:
                raise KeyboardInterrupt

        return real_episode(env, agent, seed=seed, on_step=stop_after_three if len(calls) == 3 else on_step)

    monkeypatch.setattr(controllers.base, "run_episode", cut_mid_episode)
    with pytest.raises(SystemExit):
        bench.main(argv("cut"))
    assert len(read_bank(tmp_path / "cut").runs) == 3  # two whole units and the cut one's three windows
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "cut_out").iterdir()
    bench.main(["--resume", str(run_dir)])
    cut, uncut = read_bank(tmp_path / "cut"), read_bank(tmp_path / "uncut")
    assert len(list((tmp_path / "cut").iterdir())) == 4 and len(cut.runs) == 4
    assert sorted(len(r["windows"]) for r in cut.runs) == sorted(len(r["windows"]) for r in uncut.runs)
