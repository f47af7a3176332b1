"""Shipped controller priors (atesd/priors.py): which runs load one, the checks on its files, and the
prior shipped for the embedded default."""

import json
from pathlib import Path

import pytest
import torch

import recipes.run as run
from atesd import config as cfglib
from atesd import priors
from atesd.state import load_state, save_state
from controllers.beta_reinforce import BetaReinforceConfig, BetaReinforceController
from recipes.bench import _spaces
from recipes.common import RealEnvConfig, RunConfig, controller_config

CI = "recipes/configs/ci.yaml"


@pytest.fixture
def priors_dir(tmp_path, monkeypatch):
    """An empty priors directory in place of the shipped one."""
    monkeypatch.setattr(priors, "PRIORS_DIR", tmp_path / "priors")
    monkeypatch.setattr(priors, "MANIFEST", tmp_path / "priors" / "manifest.json")
    return tmp_path / "priors"


def built(cfg: RunConfig, name: str = "beta_reinforce"):
    """The controller config a run of `cfg` builds (H and gamma from its env), and a controller."""
    ctl_cfg = controller_config(name, cfg.controllers.get(name), cfg.reward_spec, cfg.env_key)
    env = _spaces(cfg)
    return ctl_cfg, BetaReinforceController(env.observation_space, env.action_space, ctl_cfg)


def ship_for(cfg: RunConfig, tmp_path, concentration: float = 30.0):
    """Ship, as beta_reinforce's prior for `cfg`, a controller started at Beta mean 0.7 (a state no
    fresh controller has)."""
    ctl_cfg, _ = built(cfg)
    env = _spaces(cfg)
    pre = BetaReinforceController(
        env.observation_space,
        env.action_space,
        BetaReinforceConfig(
            **{**cfglib.to_dict(ctl_cfg), "init_mean": 0.7, "init_concentration": concentration}
        ),
    )
    save_state(pre.state_dict(), tmp_path / "pre")
    path, _ = priors.ship(
        "beta_reinforce", tmp_path / "pre", cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg), {"test": 1}
    )
    return pre, path


def test_first_difference_skips_the_ignored_keys_and_names_the_others():
    base = {
        "engine": {"seed": 0, "lr": 1e-4, "eval": {"top_p": 1.0}},
        "env": {"eval_every": 4, "lambda_gt": 30},
    }
    same = {
        "engine": {"seed": 7, "lr": 1e-4, "eval": {"top_p": 0.9}},
        "env": {"eval_every": 0, "lambda_gt": 30},
    }
    assert priors.first_difference(base, same, priors.IGNORED) is None
    other = json.loads(json.dumps(same))
    other["env"]["lambda_gt"] = 3
    assert priors.first_difference(base, other, priors.IGNORED) == ("env.lambda_gt", 3, 30)
    del other["engine"]["lr"]
    assert priors.first_difference(base, other, priors.IGNORED) == ("engine.lr", "<absent>", 1e-4)
    # a key one tree predates takes its default: equal there, a difference elsewhere
    newer = json.loads(json.dumps(same)) | {"data": {"band_field": None}}
    defaults = {"data": {"band_field": None}}
    assert priors.first_difference(base, newer, priors.IGNORED) == ("data.band_field", None, "<absent>")
    assert priors.first_difference(base, newer, priors.IGNORED, defaults) is None
    newer["data"]["band_field"] = "level"
    diff = priors.first_difference(base, newer, priors.IGNORED, defaults)
    assert diff == ("data.band_field", "level", None)


def test_find_loads_only_for_the_config_it_was_trained_for_and_checks_its_files(priors_dir, tmp_path):
    cfg = RunConfig()
    ctl_cfg, _ = built(cfg)
    assert priors.find("beta_reinforce", cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg)) == (None, "")
    pre, path = ship_for(cfg, tmp_path)
    env_cfg, ctl = cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg)
    assert priors.find("beta_reinforce", env_cfg, ctl) == (path, "")
    seeded = cfglib.load(
        RunConfig,
        None,
        ["seed=5", "real.env.eval_every=0", "real.engine.seed=3", "real.engine.loss.chunk_size=256"],
    )
    ctl_seeded, _ = built(seeded)
    assert priors.find("beta_reinforce", cfglib.to_dict(seeded.real), cfglib.to_dict(ctl_seeded))[0] == path
    longer = cfglib.load(RunConfig, None, ["real.env.total_steps=500"])
    found, why = priors.find("beta_reinforce", cfglib.to_dict(longer.real), ctl)
    assert found is None and "real.env.total_steps=500" in why and "100" in why
    found, why = priors.find("beta_reinforce", env_cfg, {**ctl, "reward_mode": "immediate"})
    assert found is None and "controllers.beta_reinforce.reward_mode=immediate" in why
    assert priors.find("ppo", env_cfg, ctl) == (None, "")
    manifest = json.loads(priors.MANIFEST.read_text())
    manifest["beta_reinforce"]["files"].pop("controller.safetensors")  # an entry that checks less
    priors.MANIFEST.write_text(json.dumps(manifest))
    found, why = priors.find("beta_reinforce", env_cfg, ctl)
    assert found is None and "manifest entry lists ['controller.json']" in why
    ship_for(cfg, tmp_path)
    (priors_dir / "beta_reinforce" / "controller.safetensors").write_bytes(b"not the shipped state")
    found, why = priors.find("beta_reinforce", env_cfg, ctl)
    assert found is None and "sha256" in why


@pytest.mark.slow
def test_run_py_starts_from_the_prior_of_its_config_and_none_starts_fresh(priors_dir, tmp_path, capsys):
    cfg = cfglib.load(RunConfig, CI, [])
    pre, _ = ship_for(cfg, tmp_path, concentration=200.0)
    run_dir = run.main(
        ["--config", CI, "--controller", "beta_reinforce", f"out_dir={tmp_path / 'a'}", "plots=false"]
    )
    assert "beta_reinforce starts from" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["controller_start"].startswith("beta_reinforce starts from")
    first = json.loads((run_dir / "decisions.jsonl").read_text().splitlines()[0])
    a, b = first["beta_a"], first["beta_b"]
    assert a / (a + b) == pytest.approx(0.7, abs=0.02) and a + b > 100  # the prior's Beta, not Beta(2, 2)
    fresh = run.main(
        ["--config", CI, "--controller", "beta_reinforce", f"out_dir={tmp_path / 'b'}", "plots=false",
         "controller_init=none"]
    )  # fmt: skip
    first = json.loads((fresh / "decisions.jsonl").read_text().splitlines()[0])
    assert first["beta_a"] + first["beta_b"] < 10
    assert json.loads((fresh / "summary.json").read_text())["controller_start"] == "its own config"
    other = run.main(
        ["--config", CI, "--controller", "beta_reinforce", f"out_dir={tmp_path / 'c'}", "plots=false",
         "real.engine.lr=0.002"]
    )  # fmt: skip
    assert "real.engine.lr=0.002" in capsys.readouterr().out
    assert "own config" in json.loads((other / "summary.json").read_text())["controller_start"]


def test_the_shipped_prior_fits_the_embedded_default_and_loads():
    """The prior shipped for beta_reinforce is for today's default config and loads into the
    controller a run of the default builds (a config field added since, at its default, compares as
    its default: `real.data.band_field` made the main command start from Beta(2, 2)). When this fails
    after a config change: a default that changes training needs a new bank first (docs/BENCHMARKS.md,
    "The shipped prior"); a changed default that changes nothing the bank measured needs only a
    re-ship from the committed bank (`python recipes/surrogate.py --bank banks/embedded --controller
    beta_reinforce --episodes 10000 --ship`, 3 CPU minutes)."""
    cfg = RunConfig()
    ctl_cfg, controller = built(cfg)
    defaults = cfglib.to_dict(RealEnvConfig()), cfglib.to_dict(type(ctl_cfg)())
    path, why = priors.find("beta_reinforce", cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg), *defaults)
    assert path is not None, why
    controller.load_state_dict(load_state(path))
    entry = priors.manifest()["beta_reinforce"]
    assert entry["provenance"]["episodes"] > 0 and entry["provenance"]["bank"]["runs"] > 0
    with torch.no_grad():  # a learnt policy: not the Beta(2, 2) start of a fresh controller
        dist = controller.policy(torch.zeros(1, controller.policy.net[0].in_features))
    a, b = float(dist.concentration1[0, 0]), float(dist.concentration0[0, 0])
    assert a + b > 10 and 0.5 < a / (a + b) < 0.95


def test_a_damaged_manifest_starts_controllers_from_their_own_config_and_ship_refuses(priors_dir, tmp_path):
    """A manifest cut by a crash (it used to be rewritten in place) made every default real run fail
    on a JSON error, controllers without a prior too; now find says why, and ship replaces nothing."""
    cfg = RunConfig()
    ctl_cfg, _ = built(cfg)
    _, path = ship_for(cfg, tmp_path)
    text = priors.MANIFEST.read_text()
    assert not list(priors_dir.rglob(".tmp-*"))
    priors.MANIFEST.write_text(text[: len(text) // 2])
    for name in ("beta_reinforce", "ppo"):
        found, why = priors.find(name, cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg))
        assert found is None and f"the priors' manifest {priors.MANIFEST} does not read" in why
    kept = (path.with_suffix(".safetensors")).read_bytes()
    with pytest.raises(ValueError, match="does not read"):
        ship_for(cfg, tmp_path, concentration=5.0)
    assert path.with_suffix(".safetensors").read_bytes() == kept


def test_a_bank_without_configs_ships_a_prior_for_the_embedded_default_only():
    """banks/embedded records no env config; --ship trusted it for any run config, so `--set
    real.engine.lr=0.001 --ship` labelled a prior trained on lr 1e-4 runs as one for lr 1e-3, and
    controller_init=auto then loaded it for those runs."""
    import warnings
    from pathlib import Path

    import recipes.surrogate as surrogate
    from envs.bank import read_bank

    bank = read_bank(Path(__file__).resolve().parents[1] / "banks" / "embedded")
    assert bank.unconfigured == bank.files > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        surrogate.check_shippable(bank, RunConfig())  # the default: on trust, said
    assert any("shipped for the embedded default" in str(w.message) for w in caught)
    other = cfglib.load(RunConfig, None, ["real.engine.lr=0.001"])
    with pytest.raises(cfglib.ConfigError, match=r"not the embedded default \(real.engine.lr=0.001"):
        surrogate.check_shippable(bank, other)


def test_a_prior_of_another_config_is_replaced_only_with_force_and_the_line_says_what_went(
    priors_dir, tmp_path
):
    """The manifest holds one prior per controller: `--ship` for a user's own config silently replaced
    the embedded default's, whose runs then started from Beta(2, 2). Now a prior of another config is
    kept unless forced, and what a ship replaces is said, with the command that made it."""
    cfg, short = RunConfig(), cfglib.load(RunConfig, None, ["real.env.total_steps=20"])
    _, path = ship_for(cfg, tmp_path)
    made = {"command": ["recipes/surrogate.py", "--bank", "banks/embedded", "--ship"], "commit": "abc1234",
            "date": "2026-12-06"}  # fmt: skip
    manifest = json.loads(priors.MANIFEST.read_text())
    manifest["beta_reinforce"]["provenance"] = made
    priors.MANIFEST.write_text(json.dumps(manifest))
    kept = priors.MANIFEST.read_text(), path.with_suffix(".safetensors").read_bytes()
    ctl_short, _ = built(short)
    args = ("beta_reinforce", tmp_path / "pre", cfglib.to_dict(short.real), cfglib.to_dict(ctl_short), {})
    refused = (
        r"pre-trained at real\.env\.total_steps=100, this one at 20 \(made by python recipes/surrogate.py "
        r"--bank banks/embedded --ship at commit abc1234"
    )
    with pytest.raises(ValueError, match=refused):
        priors.ship(*args)
    assert (priors.MANIFEST.read_text(), path.with_suffix(".safetensors").read_bytes()) == kept
    env_cfg, ctl = cfglib.to_dict(cfg.real), cfglib.to_dict(built(cfg)[0])
    assert priors.find("beta_reinforce", env_cfg, ctl) == (path, "")  # the default's prior still loads
    _, replaced = priors.ship(*args, force=True)
    assert replaced.startswith(
        "replaced beta_reinforce's prior pre-trained at real.env.total_steps=100 (this"
    )
    assert "made by python recipes/surrogate.py --bank banks/embedded --ship at commit abc1234" in replaced
    assert priors.find("beta_reinforce", cfglib.to_dict(short.real), cfglib.to_dict(ctl_short))[0] == path
    _, again = priors.ship(*args)  # the same config: replaced without force, and said
    assert again.startswith("replaced beta_reinforce's prior for the same config")
    # ... but not by a shorter pre-training: a trial --ship replaced the default's 10,000-episode prior
    long = {"episodes": 10000}
    priors.ship(*args[:4], long)
    with pytest.raises(ValueError, match=r"pre-trained for 10000 episodes, this one for 200 .*pass --force"):
        priors.ship(*args[:4], {"episodes": 200})
    assert json.loads(priors.MANIFEST.read_text())["beta_reinforce"]["provenance"] == long
    assert priors.ship(*args[:4], {"episodes": 200}, force=True)[1].startswith(
        "replaced beta_reinforce's prior"
    )
    assert priors.ship(*args[:4], {"episodes": 20000})[1].startswith("replaced")  # a longer one: no question


def test_surrogate_ship_refuses_to_replace_a_prior_of_another_config_before_pretraining(
    priors_dir, tmp_path, capsys
):
    """`surrogate.py --ship` is refused, naming the first key that differs, before it pre-trains; with
    --force it ships and prints what it replaced."""
    import recipes.surrogate as surrogate

    short = cfglib.load(RunConfig, None, ["real.env.total_steps=20"])
    ship_for(short, tmp_path)
    kept = priors.MANIFEST.read_text()
    bank = Path(__file__).resolve().parents[1] / "banks" / "embedded"
    argv = ["--bank", str(bank), "--episodes", "2", "--folds", "2", "--alphas", "0.5", "--ship",
            "--out", str(tmp_path / "out")]  # fmt: skip
    capsys.readouterr()
    with pytest.warns(UserWarning, match="shipped for the embedded default"):
        with pytest.raises(SystemExit) as exc:
            surrogate.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--ship: beta_reinforce's shipped prior was pre-trained at " in err, err
    assert "real.env.total_steps=20, this one at 100" in err and "--force" in err
    assert priors.MANIFEST.read_text() == kept and not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="shipped for the embedded default"):
        surrogate.main([*argv, "--force"])
    out = capsys.readouterr().out
    assert "replaced beta_reinforce's prior pre-trained at real.env.total_steps=20 (this one: 100" in out
    cfg = RunConfig()
    assert priors.find("beta_reinforce", cfglib.to_dict(cfg.real), cfglib.to_dict(built(cfg)[0]))[1] == ""


def test_a_manifest_entry_ship_did_not_write_starts_the_controller_from_its_own_config(priors_dir):
    """An entry without `files` (or not a mapping, or without its configs) crashed run.py with
    KeyError: 'files'; find now says why, as for a manifest that does not read."""
    cfg = RunConfig()
    env_cfg, ctl = cfglib.to_dict(cfg.real), cfglib.to_dict(built(cfg)[0])
    priors_dir.mkdir()
    for entry, message in (
        ({"env": env_cfg, "controller": ctl}, "has no 'files' mapping"),
        ({"controller": ctl, "files": {}}, "has no 'env' mapping"),
        ({"env": env_cfg, "files": {}}, "has no 'controller' mapping"),
        (["not", "an", "entry"], "is not a JSON object"),
    ):
        priors.MANIFEST.write_text(json.dumps({"beta_reinforce": entry}))
        found, why = priors.find("beta_reinforce", env_cfg, ctl)
        assert found is None and f"its entry in {priors.MANIFEST} " in why and message in why, why
        assert priors.replacing("beta_reinforce", env_cfg, ctl).startswith(
            "replaced beta_reinforce's unusable"
        )


def test_local_paths_compare_absolute_in_a_priors_and_a_banks_config(priors_dir, tmp_path, monkeypatch):
    """run.py stores real.hf.name_or_path=models/qwen as its absolute path, and records its bank so;
    surrogate.py kept it as given: `--ship` with the same --set refused the bank run.py recorded, and a
    prior shipped from a relative config never matched run.py's, whose runs silently started from
    Beta(2, 2). Both sides now compare the absolute path: a prior or a bank recorded relative too."""
    import recipes.surrogate as surrogate
    from envs.bank import read_bank
    from recipes.common import absolute_paths

    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models" / "qwen"
    models.mkdir(parents=True)
    given = "real.hf.name_or_path=models/qwen"
    relative = cfglib.load(RunConfig, None, [given])
    stored = absolute_paths(relative)  # run.py's config.json, and its bank's files
    assert stored.real.hf.name_or_path == str(models)
    tree = cfglib.to_dict(relative.real) | {"cache_dir": "cache"}
    assert priors.absolute_paths(tree) == cfglib.to_dict(stored.real) | {"cache_dir": str(tmp_path / "cache")}
    assert tree["hf"]["name_or_path"] == "models/qwen"  # a copy: the tree given is left as it was
    for key, value in (
        ("data.source", "opsd"),
        ("data.source", "data/missing.jsonl"),
        ("hf.name_or_path", "Qwen/Qwen3-1.7B"),
    ):
        assert priors.local_path(key, value) == value  # a named source, a missing path, a hub id
    embedded = Path(__file__).resolve().parents[1] / "banks" / "embedded"
    for name, cfg in (("bank", stored), ("older_bank", relative)):  # recorded by run.py now, and before
        (tmp_path / name).mkdir()
        for path in sorted(embedded.glob("*.jsonl")):
            lines = path.read_text().splitlines(keepends=True)
            lines[0] = json.dumps({**json.loads(lines[0]), "config": cfglib.to_dict(cfg.real)}) + "\n"
            (tmp_path / name / path.name).write_text("".join(lines))
    surrogate.check_shippable(read_bank(tmp_path / "older_bank"), stored)
    surrogate.main(["--bank", "bank", "--set", given, "--episodes", "2", "--folds", "2", "--alphas", "0.5",
                    "--ship", "--out", "out"])  # fmt: skip
    assert priors.manifest()["beta_reinforce"]["env"]["hf"]["name_or_path"] == str(models)
    ctl = cfglib.to_dict(built(stored)[0])
    for cfg in (stored, relative):
        assert priors.find("beta_reinforce", cfglib.to_dict(cfg.real), ctl) == (
            priors_dir / "beta_reinforce" / "controller",
            "",
        )
    ship_for(relative, tmp_path)  # shipped before surrogate.py made its paths absolute
    assert priors.manifest()["beta_reinforce"]["env"]["hf"]["name_or_path"] == "models/qwen"
    assert priors.find("beta_reinforce", cfglib.to_dict(stored.real), ctl)[1] == ""
    monkeypatch.chdir(tmp_path / "out")  # where models/qwen names nothing: not the prior's model
    found, why = priors.find("beta_reinforce", cfglib.to_dict(stored.real), ctl)
    assert found is None and f"real.hf.name_or_path={models}, the prior was pre-trained at models/qwen" in why


def test_a_bank_mixing_relative_and_absolute_paths_reads(tmp_path, monkeypatch):
    """A bank whose older files hold a local model path relative (recorded before run.py stored paths
    absolute) and newer ones absolute is one config, not two."""
    from envs.bank import read_bank
    from recipes.common import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    relative = cfglib.load(RunConfig, None, ["real.hf.name_or_path=models/qwen"])
    (tmp_path / "bank").mkdir()
    embedded = sorted((Path(__file__).resolve().parents[1] / "banks" / "embedded").glob("*.jsonl"))
    for i, path in enumerate(embedded):
        cfg = absolute_paths(relative) if i % 2 else relative
        lines = path.read_text().splitlines(keepends=True)
        lines[0] = json.dumps({**json.loads(lines[0]), "config": cfglib.to_dict(cfg.real)}) + "\n"
        (tmp_path / "bank" / path.name).write_text("".join(lines))
    assert read_bank(tmp_path / "bank").files == len(embedded) > 1
