"""The bank of logged runs (envs/bank.py), the surrogate env fitted to it (envs/surrogate_env.py)
and the pre-training recipe (recipes/surrogate.py), on banks of the mock env."""

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
import recipes.bench as bench
import recipes.run as run
import recipes.surrogate as surrogate
from atesd.logging import read_jsonl
from envs.bank import BankRecorder, read_bank
from envs.mock_env import MockConfig, MockExposureEnv
from envs.surrogate_env import SurrogateExposureEnv, SurrogateModel, fit_report, fit_surrogate


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    """Fixed exposures and random ones on the mock (100 updates a run), recorded by bench.py."""
    root = tmp_path_factory.mktemp("bank")
    bench.main(["--env", "mock", "--seeds", "3", "--baseline", "random",
                "--controllers", "fixed:alpha=0.2,fixed:alpha=0.5,fixed:alpha=0.9,random",
                "--set", f"bank_dir={root / 'mock'}", "--set", "mock.total_steps=100", "--set", "plots=false",
                "--out", str(root / "out")])  # fmt: skip
    return root / "mock"


def play(env: gym.Env, seeds: tuple[int, ...], act=lambda: np.array([0.4], dtype=np.float32)) -> tuple:
    """An episode of `env` per seed, each action from `act()`; the env closed; the last (reward, info)."""
    for seed in seeds:
        env.reset(seed=seed)
        done = False
        while not done:
            _, reward, done, _, info = env.step(act())
    env.close()
    return reward, info


def test_the_recorder_writes_every_window_and_the_reader_rebuilds_the_runs(tmp_path):
    env = BankRecorder(MockExposureEnv(MockConfig(total_steps=20)), tmp_path, tag="mock__fixed__1")
    reward, info = play(env, (1, 2))
    records = read_jsonl(env.path)
    assert [r["kind"] for r in records[:3]] == ["meta", "reset", "window"] and len(records) == 1 + 2 * 5
    assert records[0]["reward_spec"]["hold_steps"] == 5 and records[0]["observation_names"][0] == "progress"
    last = records[-1]
    assert last["terminated"] and last["reward"] == reward and last["score"] == info["score"]
    assert records[3]["obs"] == records[2]["next_obs"]  # each window starts where the last ended
    bank = read_bank(tmp_path)
    assert len(bank.runs) == 2 and bank.windows == 8 and bank.files == 1


def test_a_run_cut_by_a_crash_keeps_its_windows_and_bad_banks_say_why(tmp_path):
    env = BankRecorder(MockExposureEnv(MockConfig(total_steps=20)), tmp_path)
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.array([0.4], dtype=np.float32))
    env.close()
    with env.path.open("a") as fh:
        fh.write('{"kind": "window", "episo')  # the line in flight when the process died
    assert read_bank(tmp_path).windows == 2
    with pytest.raises(ValueError, match="no bank at"):
        read_bank(tmp_path / "nothing")
    other = BankRecorder(MockExposureEnv(MockConfig(total_steps=20, hold_steps=4)), tmp_path)
    other.reset(seed=0)
    other.step(np.array([0.4], dtype=np.float32))
    other.close()
    with pytest.raises(ValueError, match=r"its env differs from the one of .* in reward_spec \(reward_spec\."
                       r"hold_steps=[45], .*'s [45]\)"):  # fmt: skip
        read_bank(tmp_path)
    for line in ("null", "[1]", '{"kind": "window", "obs": [0.1]}', '{"kind": "other", "episode": 0}'):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "run.jsonl").write_text(line + "\n" + '{"kind": "meta"}\n')  # not cut at the end: refused
        with pytest.raises(ValueError, match=r"run\.jsonl:1: not a bank record"):
            read_bank(bad)


def test_the_surrogate_passes_gymnasiums_checker_and_replays_the_bank(bank_dir):
    bank = read_bank(bank_dir)
    assert len(bank.runs) == 12 and bank.windows == 12 * 20
    env = SurrogateExposureEnv(fit_surrogate(bank))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    assert env.reward_spec.hold_steps == 5 and env.observation_names == MockExposureEnv().observation_names
    obs, _ = env.reset(seed=0)
    steps = 0
    done = False
    while not done:
        obs, _, done, _, info = env.step(np.array([0.5], dtype=np.float32))
        steps += 1
    assert steps == 20 and obs[0] == pytest.approx(1.0) and np.isfinite(info["score"])


def test_the_fit_predicts_held_out_runs_better_than_their_mean_and_ranks_exposures_as_the_mock(bank_dir):
    """On the mock (smooth dynamics) held-out rewards and scores are predicted far better than by the
    mean; and fixed exposures replayed in the surrogate end in the mock's order."""
    # leave one run out: 3 folds of these 12 runs (file names carry a random id, so the split follows
    # them) can hold out every run of one exposure, and the reward's R^2 then ranged from -0.24 to 0.84
    bank = read_bank(bank_dir)
    report = fit_report(bank, folds=len(bank.runs))
    assert report["targets"]["reward"]["r2"] > 0.8 and report["targets"]["score"]["r2"] > 0.8
    model = fit_surrogate(read_bank(bank_dir))

    def final(env, alpha, seed):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([alpha], dtype=np.float32))
        return info["score"]

    mock = MockExposureEnv(MockConfig(total_steps=100))
    sur = SurrogateExposureEnv(model)
    for env in (mock, sur):
        scores = [np.mean([final(env, a, s) for s in range(3)]) for a in (0.2, 0.5, 0.9)]
        assert scores[1] > max(scores[0], scores[2]), type(env).__name__


def test_the_model_round_trips_and_the_env_refuses_bad_arguments(bank_dir, tmp_path):
    model = fit_surrogate(read_bank(bank_dir))
    model.save(tmp_path / "s.json")
    again = SurrogateModel.load(tmp_path / "s.json")
    assert model.w_score is not None and np.any(model.sd_step > 0)  # a score model and noise to lose
    assert again.to_dict() == model.to_dict()  # every field, the score model and residual sds too
    assert again.reward_spec == model.reward_spec and again.w_score.dtype == np.float64
    env = gym.make("atesd/Surrogate-v0", model=str(tmp_path / "s.json"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action alpha must be in \[0, 1\], got 1.2"):
        env.step(np.array([1.2], dtype=np.float32))
    with pytest.raises(ValueError, match="one of them"):
        SurrogateExposureEnv()


def test_pretraining_saves_a_controller_that_run_py_continues_from(bank_dir, tmp_path, capsys):
    out = surrogate.main(
        ["--bank", str(bank_dir), "--episodes", "20", "--folds", "3", "--out", str(tmp_path)]
    )
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["targets"]) >= {"reward", "score", "d_ema_alpha"} and fit["runs"] == 12
    # the progress entry is known, not predicted (a constant change): said so, not "R^2 +nan"
    assert "R^2 n/a (a constant target)" in capsys.readouterr().out
    curve = json.loads((out / "pretrain.json").read_text())
    assert len(curve["returns"]) == 20 and curve["controller"] == "beta_reinforce"
    run_dir = run.main(["--controller", "beta_reinforce", "--env", "mock", "mock.total_steps=100",
                        f"controller_init={out / 'controller'}", f"out_dir={tmp_path}",
                        "plots=false"])  # fmt: skip
    decisions = [d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision"]
    assert len(decisions) == 20
    with pytest.raises(SystemExit):
        surrogate.main(["--bank", str(tmp_path / "none"), "--episodes", "1"])


def test_the_score_reward_pays_the_predicted_scores_change_and_starts_where_the_bank_did(bank_dir):
    """reward="score": a window pays the change of the predicted score, so an episode's return is the
    predicted final score less the start's; the start is in the score fit, so it is predicted near the
    bank's measured starts (not extrapolated)."""
    bank = read_bank(bank_dir)
    model = fit_surrogate(bank)
    env = SurrogateExposureEnv(model, reward="score")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    _, info = env.reset(seed=3)
    start, total, done = info["score"], 0.0, False
    while not done:
        _, reward, done, _, info = env.step(np.array([0.6], dtype=np.float32))
        total += reward
    assert total == pytest.approx(info["score"] - start, abs=1e-9)
    measured = np.mean([run["start"]["score"] for run in bank.runs])
    predicted = np.mean(
        [SurrogateExposureEnv(model, reward="score").reset(seed=s)[1]["score"] for s in range(5)]
    )
    assert predicted == pytest.approx(measured, abs=0.05)
    # the committed bank of the embedded real env: its starts (all measured at 0.436) lie far from
    # its windows' scores, so a score fit without them extrapolates the start (to -1.7)
    embedded = read_bank(Path(__file__).resolve().parents[1] / "banks" / "embedded")
    real_model = fit_surrogate(embedded)
    measured = np.mean([run["start"]["score"] for run in embedded.runs])
    assert len(embedded.runs) >= 2 and measured == pytest.approx(0.436, abs=0.01)
    predicted = np.mean(
        [SurrogateExposureEnv(real_model, reward="score").reset(seed=s)[1]["score"] for s in range(5)]
    )
    assert predicted == pytest.approx(measured, abs=0.02)
    with pytest.raises(ValueError, match="reward must be one of"):
        SurrogateExposureEnv(model, reward="return")


def test_a_bank_refuses_runs_of_another_env_config(tmp_path):
    """Banks recorded by run.py/bench.py carry their env's config; one that mixes configs (beyond
    seeds and evaluation settings) says which key differs."""

    def record(lr: float, seed: int, every: int) -> None:
        config = {"engine": {"lr": lr, "seed": seed}, "env": {"eval_every": every}}
        env = BankRecorder(MockExposureEnv(MockConfig(total_steps=20)), tmp_path, config=config)
        env.reset(seed=0)
        env.step(np.array([0.4], dtype=np.float32))
        env.close()

    record(1e-4, 1, 4)
    record(1e-4, 2, 0)
    assert len(read_bank(tmp_path).runs) == 2  # another seed and evaluation: the same env
    record(3e-4, 1, 4)
    with pytest.raises(ValueError, match=r"its env config has engine\.lr="):
        read_bank(tmp_path)


def test_a_bank_file_recorded_before_a_config_field_existed_reads_at_its_default(tmp_path):
    """A file recorded before an upgrade added a config field lacks that key: the bank was refused as
    mixing configs ('<absent>' against the default). A key one file lacks is now read at its default,
    and still refused against any other value."""
    from atesd.config import to_dict

    def record(config: dict) -> None:
        env = BankRecorder(MockExposureEnv(MockConfig(total_steps=20)), tmp_path, config=config)
        env.reset(seed=0)
        env.step(np.array([0.4], dtype=np.float32))
        env.close()

    now = to_dict(MockConfig(total_steps=20))
    record({k: v for k, v in now.items() if k != "action"})  # before `mock.action` existed
    record(now)
    assert len(read_bank(tmp_path).runs) == 2
    record(now | {"action": "per_band"})
    with pytest.raises(
        ValueError, match=r"its env config has action=(per_band|global), .*'s (global|per_band)"
    ):
        read_bank(tmp_path)


def _record(directory, tag: str, config=None, steps: int = 20):
    env = BankRecorder(MockExposureEnv(MockConfig(total_steps=steps)), directory, tag=tag, config=config)
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(np.array([0.4], dtype=np.float32))[2]
    env.close()
    return env.path


def test_every_file_of_a_bank_is_checked_not_only_the_first(tmp_path):
    """A file that records no config (sorted first) no longer turns the config check off, and a file
    of another env class is refused even where its layout and reward match."""
    _record(tmp_path, "a")  # no config
    _record(tmp_path, "b", {"engine": {"lr": 1e-4}})
    bank = read_bank(tmp_path)
    assert bank.config == {"engine": {"lr": 1e-4}} and bank.unconfigured == 1 and bank.files == 2
    _record(tmp_path, "c", {"engine": {"lr": 1.0}})
    with pytest.raises(ValueError, match=r"c__.*its env config has engine\.lr=1\.0, b__.*'s 0\.0001"):
        read_bank(tmp_path)
    other = tmp_path / "other"
    _record(other, "a")
    path = _record(other, "b")
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), "env": "SkillChainEnv"}) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"in env \(env=SkillChainEnv, a__.*'s MockExposureEnv\)"):
        read_bank(other)


def test_a_window_with_a_nan_reward_is_left_out_and_named(tmp_path, capsys):
    """The real env pays NaN for a window whose updates were all skipped; the recorder has written it
    before the run stops. The fit leaves it out (one NaN made every reward weight and sd NaN)."""
    path = _record(tmp_path, "a", steps=40)
    _record(tmp_path, "b", steps=40)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = json.dumps({**json.loads(lines[3]), "reward": float("nan")}) + "\n"
    path.write_text("".join(lines))
    bank = read_bank(tmp_path)
    assert bank.dropped == [f"{path.name}:4"] and bank.windows == 15
    model = fit_surrogate(bank)
    assert np.isfinite(model.w_step).all() and np.isfinite(model.sd_step).all()
    assert all(np.isfinite(t["rmse"]) for t in fit_report(bank, folds=2)["targets"].values())
    fit_surrogate(bank, l2=0.0)  # one exposure: collinear features, least-norm (was "Singular matrix")
    with pytest.raises(ValueError, match="the 1 run\\(s\\) fitted hold fewer than 2 windows"):
        fit_surrogate(bank, runs=[{"start": bank.runs[0]["start"], "windows": bank.runs[0]["windows"][:1]}])


def _refused(argv: list[str], capsys) -> str:
    """surrogate.py's one error line for `argv` (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        surrogate.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_the_command_line_is_checked_before_the_bank_is_read(bank_dir, tmp_path, monkeypatch, capsys):
    """--alphas and --out were checked after the fit (--out after the pre-training too: a bad one cost
    the whole run), and --alphas 0,2 failed without naming --alphas. The directory is made first and a
    later failure removes it."""
    bank, out = ["--bank", str(bank_dir), "--episodes", "1", "--folds", "3"], ["--out", str(tmp_path / "out")]
    (tmp_path / "afile").write_text("")
    with monkeypatch.context() as patched:
        patched.setattr(surrogate, "read_bank", lambda *a: pytest.fail("the bank was read"))
        err = _refused([*bank, *out, "--alphas", "0,2"], capsys)
        assert "--alphas must be a comma list of numbers in [0, 1], got 2 in '0,2'" in err
        assert "afile" in _refused([*bank, "--out", str(tmp_path / "afile" / "sub")], capsys)
        for l2 in ("nan", "inf"):  # NaN passed `< 0`: an all-NaN fit, then a traceback in the pre-training
            with pytest.raises(SystemExit) as exc:
                surrogate.main([*bank, *out, "--l2", l2])
            assert exc.value.code == 2 and "--l2 >= 0 and finite" in capsys.readouterr().err
    assert "no bank at" in _refused(["--bank", str(tmp_path / "none"), *out], capsys)
    assert not (tmp_path / "out").exists()  # made before the bank was read, then removed (with its out/)


def test_set_controller_is_the_controller_pretrained(bank_dir, tmp_path, capsys):
    """`--set controller=ppo` pre-trained beta_reinforce: --controller's default was appended after it.
    A --controller that contradicts it is refused."""
    argv = ["--bank", str(bank_dir), "--episodes", "2", "--folds", "3", "--out", str(tmp_path)]
    out = surrogate.main([*argv, "--set", "controller=ppo"])
    curve = json.loads((out / "pretrain.json").read_text())
    assert curve["controller"] == "ppo" and curve["config"]["controller"] == "ppo"
    err = _refused([*argv, "--controller", "ppo", "--set", "controller=bandit"], capsys)
    assert "--controller ppo contradicts --set controller=bandit" in err
    assert list(tmp_path.iterdir()) == [out]


def test_the_controller_is_checked_against_the_banks_h_and_named_so(bank_dir, tmp_path, capsys):
    """The surrogate carries the bank's H (5 on this mock bank), which the error named real.env.hold_steps
    though real.env.hold_steps was set to 4."""
    h4 = ["--set", "real.env.hold_steps=4", "--set", "controllers.beta_reinforce.lookahead_steps=8"]
    err = _refused(
        ["--bank", str(bank_dir), "--episodes", "1", "--folds", "3", "--out", str(tmp_path), *h4], capsys
    )
    assert "lookahead_steps=8 must be a multiple of the env's hold_steps (the bank's hold_steps=5)" in err
    assert "real.env" not in err and list(tmp_path.iterdir()) == []


def test_a_lookahead_that_fits_the_banks_h_is_not_checked_against_real_env(bank_dir, tmp_path):
    """The run config checked the controller against real.env's H before the bank's was known: a
    lookahead that fitted the bank (H 5 here) was refused for not fitting real.env.hold_steps."""
    argv = ["--bank", str(bank_dir), "--episodes", "2", "--folds", "3", "--out", str(tmp_path), "--set",
            "real.env.hold_steps=4", "--set", "controllers.beta_reinforce.lookahead_steps=10"]  # fmt: skip
    out = surrogate.main(argv)
    assert json.loads((out / "pretrain.json").read_text())["controller"] == "beta_reinforce"


@pytest.mark.parametrize("variant", ["mix", "rising"])  # two bands, and one band
def test_a_bank_of_per_band_runs_gives_a_per_band_surrogate(variant, tmp_path):
    """A per-band bank (K alphas a window) fits a surrogate with the same spaces: the checker passes,
    a bare scalar is refused and info['alpha'] is the list of K, as the per-band mock does, with one
    band too (it took a bank of one band for the global action)."""
    mock = MockExposureEnv(MockConfig(total_steps=50, variant=variant, action="per_band"))
    env = BankRecorder(mock, tmp_path)
    rng = np.random.default_rng(0)
    for episode in range(4):
        env.reset(seed=episode)
        done = False
        while not done:
            done = env.step(rng.random(env.action_space.shape).astype(np.float32))[2]
    env.close()
    surrogate = SurrogateExposureEnv(bank=tmp_path)
    assert surrogate.action_space.shape == env.action_space.shape
    assert surrogate.observation_names == env.unwrapped.observation_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(surrogate, skip_render_check=True)
    for e in (env.unwrapped, surrogate):
        e.reset(seed=0)
        with pytest.raises(ValueError, match="one alpha per band"):
            e.step(0.5)
        info = e.step(np.full(e.action_space.shape, 0.5, np.float32))[-1]
        assert info["alpha"] == [0.5] * e.action_space.shape[0]


def test_skillchain_windows_keep_their_scores_and_a_bank_without_scores_fits(tmp_path):
    """The recorder kept a window's score only on the mock (it looked for oracle_alpha): SkillChain's,
    measured every window too, were written as null, and the score model was fitted on the runs'
    identical starts alone (a constant: reward=score paid nothing). A bank with no score at all, which
    the fit plans for (no score model), crashed in a reshape."""
    from envs.skills_env import SkillChainEnv

    env = BankRecorder(SkillChainEnv(total_steps=40), tmp_path / "skills", tag="skills__random__0")
    rng = np.random.default_rng(0)
    play(env, (0, 1, 2), lambda: rng.uniform(0, 1, 1).astype(np.float32))
    windows = [r for r in read_jsonl(env.path) if r["kind"] == "window"]
    assert windows and all(w["score"] is not None for w in windows)
    model = fit_surrogate(read_bank(tmp_path / "skills"))
    assert model.w_score is not None and np.any(model.w_score[1:] != 0)

    class Unscored(gym.Wrapper):  # an env of others that reports no score
        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            return obs, {k: v for k, v in info.items() if k not in ("score", "oracle_alpha")}

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, reward, terminated, truncated, {k: v for k, v in info.items() if k != "score"}

    recorder = BankRecorder(Unscored(MockExposureEnv(MockConfig(total_steps=20))), tmp_path / "bare", tag="x")
    recorder.unwrapped.scores_every_window = False  # as an env of others that does not say it does
    play(recorder, (1, 2))
    bare = fit_surrogate(read_bank(tmp_path / "bare"))
    assert bare.w_score is None
    with pytest.raises(ValueError, match="needs a score model"):
        SurrogateExposureEnv(model=bare, reward="score")


def test_the_printed_command_goes_on_at_the_config_it_was_pretrained_for(tmp_path, capsys):
    """The line after pre-training named the controller alone: a per-band mock bank's state then met the
    real env's global controller ("does not fit"). It now carries the --config and --set given (quoted),
    and --env where the bank's env is another than the config's, and the printed command runs."""
    import shlex

    mock = MockExposureEnv(MockConfig(total_steps=50, variant="mix", action="per_band"))
    recorder = BankRecorder(mock, tmp_path / "bank")
    rng = np.random.default_rng(0)
    play(recorder, (0, 1, 2, 3), lambda: rng.random(recorder.action_space.shape).astype(np.float32))
    sets = ["mock.variant=mix", "mock.action=per_band", "mock.total_steps=50", "name=pre trained"]
    capsys.readouterr()
    given = [w for s in sets for w in ("--set", s)]
    out = surrogate.main(
        ["--bank", str(tmp_path / "bank"), "--episodes", "2", "--folds", "2", "--out", str(tmp_path), *given]
    )
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"wrote {out}; ")]
    words = shlex.split(line.split(" with ", 1)[1])
    init = f"controller_init={out / 'controller'}"
    assert words[:6] == ["python", "recipes/run.py", "--controller", "beta_reinforce", "--env", "mock"]
    assert words[6:] == [*given, init]
    run_dir = run.main([*words[2:], f"out_dir={tmp_path / 'runs'}", "plots=false"])
    decisions = [d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision"]
    assert len(decisions) == 10 and len(decisions[0]["alpha"]) == 2 and "pre trained" in run_dir.name


def pretrained_command(bank: Path, out_dir: Path, capsys) -> tuple[Path, list[str]]:
    """surrogate.py pre-trained for 2 episodes on `bank`: its directory and the command it printed."""
    import shlex

    capsys.readouterr()
    out = surrogate.main(["--bank", str(bank), "--episodes", "2", "--folds", "2", "--out", str(out_dir)])
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"wrote {out}; ")]
    return out, shlex.split(line.split(" with ", 1)[1])


def test_the_printed_command_carries_the_banks_env_config(tmp_path, capsys):
    """The command printed after pre-training carried only the --config and --set given: a bank
    recorded at another mock.hold_steps (or on an env given by id) printed a command that ran another
    env. It now sets each key where the bank's config differs, and goes on in bench.py for an id."""
    bench.main(["--env", "mock", "--seeds", "2", "--controllers", "random", "--baseline", "random",
                "--set", f"bank_dir={tmp_path / 'bank'}", "--set", "mock.total_steps=60",
                "--set", "mock.hold_steps=10", "--set", "plots=false",
                "--out", str(tmp_path / "b")])  # fmt: skip
    out, words = pretrained_command(tmp_path / "bank", tmp_path, capsys)
    assert words[:6] == ["python", "recipes/run.py", "--controller", "beta_reinforce", "--env", "mock"]
    assert words[6:] == ["--set", "mock.hold_steps=10", "--set", "mock.total_steps=60",
                         f"controller_init={out / 'controller'}"]  # fmt: skip
    run_dir = run.main([*words[2:], f"out_dir={tmp_path / 'runs'}", "plots=false"])
    assert len([d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision"]) == 6

    bench.main(["--env", "atesd/SkillChain-v0", "--env-set", "total_steps=40", "--env-set", "profile=wall",
                "--seeds", "2", "--controllers", "random", "--baseline", "random",
                "--set", f"bank_dir={tmp_path / 'skills'}", "--set", "plots=false",
                "--out", str(tmp_path / "b")])  # fmt: skip
    out, words = pretrained_command(tmp_path / "skills", tmp_path, capsys)
    assert words[:2] == ["python", "recipes/bench.py"]
    assert " ".join(words[2:8]) == "--env atesd/SkillChain-v0 --env-set total_steps=40 --env-set profile=wall"
    run_dir = bench.main([*words[2:], "--set", "plots=false", "--out", str(tmp_path / "again")])
    units = json.loads((run_dir / "results.json").read_text())["units"]
    (unit,) = [u for u in units if u["controller"].startswith("beta_reinforce:init=")]
    assert unit["controller_start"].endswith(str(out / "controller")) and len(unit["curve"]) == 1 + 40 // 5


def test_pre_trainings_of_two_seeds_share_no_episode(tmp_path, monkeypatch, bank_dir):
    """Episode e of a pre-training was seeded 1000 seed + e: seeds 0 and 1 shared 9,000 of 10,000
    episodes, and seed 1,000 pre-trained on the episodes its controller is scored on after (10**6 + e).
    Each episode's seed now comes from (seed, e) through a SeedSequence."""
    runs = [{surrogate.episode_seed(seed, e) for e in range(10_000)} for seed in (0, 1)]
    assert len(runs[0]) == len(runs[1]) == 10_000 and not runs[0] & runs[1]
    seen: list[int] = []
    real_episode = surrogate.run_episode

    def recorded(env, controller, seed=None, **kwargs):
        seen.append(seed)
        return real_episode(env, controller, seed=seed, **kwargs)

    monkeypatch.setattr(surrogate, "run_episode", recorded)
    surrogate.main(["--bank", str(bank_dir), "--episodes", "20", "--folds", "2", "--set", "seed=1000",
                    "--out", str(tmp_path)])  # fmt: skip
    assert len(seen) == 20 + 50 and not set(seen[:20]) & set(seen[20:])
