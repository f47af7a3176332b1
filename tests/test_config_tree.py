"""One config tree: the env owns H and gamma, --help lists the true defaults, keys reach every recipe."""

from __future__ import annotations

import ast
import json
import warnings

import pytest

from atesd import config as cfglib
from controllers import CONTROLLERS
from envs.mock_env import MockExposureEnv
from recipes.common import ENV_OWNED, RunConfig, build_controller, describe, resolved_dict


def _walk(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def test_help_lists_the_value_of_a_freshly_built_config():
    fresh = RunConfig()
    resolved = resolved_dict(fresh)
    rows = describe()
    assert len(rows) > 100
    for key, default, _ in rows:
        if key.startswith("controllers."):
            _, name, field = key.split(".", 2)
            built = cfglib.to_dict(build_controller(fresh, _StandIn(fresh), name).cfg)
            expected = built[field] if field != "seed" else fresh.seed
            assert ast.literal_eval(default) == expected, key
        else:
            assert default == repr(_walk(fresh, key)), key
    listed = dict((k, d) for k, d, _ in rows)
    # the nested defaults a parent sets for its child (the bug: these were listed as the child's own)
    assert listed["real.engine.loss.kind"] == "'reverse_kl'"
    assert listed["real.env.eval_every"] == "4"
    assert listed["controllers.beta_reinforce.gamma"] == repr(
        resolved["controllers"]["beta_reinforce"]["gamma"]
    )


class _StandIn:
    """What build_controller reads of an env: its spaces and reward spec."""

    def __init__(self, cfg: RunConfig) -> None:
        env = MockExposureEnv()
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self.unwrapped = self
        self.reward_spec = cfg.reward_spec


@pytest.mark.parametrize("env,key", [("real", "real.env."), ("mock", "mock.")])
def test_env_gamma_and_hold_reach_every_discounting_controller(env, key):
    cfg = cfglib.load(RunConfig, None, [f"env={env}", f"{key}gamma=0.8", f"{key}hold_steps=2"])
    owners = [name for name, (_, c) in CONTROLLERS.items() if "gamma" in c.__dataclass_fields__]
    assert {"beta_reinforce", "bandit", "ppo"} <= set(owners)
    for name in owners:
        unit = cfglib.load(RunConfig, None, [f"env={env}", f"{key}gamma=0.8", f"{key}hold_steps=2",
                                             f"controller={name}"])  # fmt: skip
        assert resolved_dict(unit)["controllers"][name]["gamma"] == 0.8  # what config.json shows
        controller = build_controller(unit, _StandIn(unit))
        assert (controller.cfg.gamma, controller.cfg.hold_steps) == (0.8, 2)  # what the controller uses
    assert cfg.reward_spec.gamma == 0.8


def test_the_controller_reads_the_env_it_is_built_for_not_a_copy():
    cfg = RunConfig(controller="ppo", env="mock")
    env = MockExposureEnv(gamma=0.7, hold_steps=5)
    assert build_controller(cfg, env).cfg.gamma == 0.7


@pytest.mark.parametrize("field", ENV_OWNED)
def test_a_contradicting_controller_setting_is_refused_naming_both_keys(field):
    value = {"gamma": 0.5, "hold_steps": 3}[field]
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.load(RunConfig, None, [f"controllers.beta_reinforce.{field}={value}"])
    message = str(err.value)
    assert f"controllers.beta_reinforce.{field}={value}" in message and f"real.env.{field}=" in message
    assert "\n" not in message
    # the same value as the env's is accepted
    same = {"gamma": 0.9, "hold_steps": 5}[field]
    assert cfglib.load(RunConfig, None, [f"controllers.beta_reinforce.{field}={same}"])


def test_a_lookahead_that_does_not_fit_the_env_window_is_refused_at_parse_time():
    with pytest.raises(
        cfglib.ConfigError, match=r"lookahead_steps=10 must be a multiple.*real.env.hold_steps=3"
    ):
        cfglib.load(RunConfig, None, ["real.env.hold_steps=3", "real.env.total_steps=99"])
    # a controller that is neither selected nor configured is not in the way
    fits = ["real.env.hold_steps=3", "real.env.total_steps=99", "controller=fixed"]
    assert cfglib.load(RunConfig, None, fits).hold_steps == 3


def test_a_stored_config_reloads_though_other_controllers_defaults_do_not_fit_its_env():
    """config.json holds every controller's config; only the selected one must fit the env (H = 4
    does not divide bandit's default lookahead of 10, which a fixed-alpha run never uses)."""
    cfg = cfglib.load(
        RunConfig, None, ["env=mock", "controller=fixed", "mock.hold_steps=4", "mock.total_steps=400"]
    )
    stored = resolved_dict(cfg)
    assert stored["controllers"]["bandit"]["lookahead_steps"] == 10
    assert resolved_dict(cfglib.from_dict(RunConfig, stored)) == stored
    with pytest.raises(cfglib.ConfigError, match="lookahead_steps=10 must be a multiple"):
        cfglib.from_dict(RunConfig, {**stored, "controller": "bandit"})  # selected: it must fit


def test_another_controllers_settings_that_fit_the_env_but_not_its_own_defaults_are_kept():
    """bandit's lookahead 6 fits the env's H = 2, not bandit's default H of 5: a run of fixed (or a
    bench of fixed and bandit) on these settings is accepted and keeps it."""
    overrides = ["env=mock", "controller=fixed", "mock.hold_steps=2", "mock.total_steps=20",
                 "controllers.bandit.lookahead_steps=6"]  # fmt: skip
    cfg = cfglib.load(RunConfig, None, overrides)
    assert cfg.controllers["bandit"]["lookahead_steps"] == 6
    bandit = cfglib.from_dict(RunConfig, {**resolved_dict(cfg), "controller": "bandit"})
    assert build_controller(bandit, MockExposureEnv(bandit.mock)).cfg.lookahead_steps == 6


def test_a_lookahead_longer_than_the_episode_is_flagged_where_nothing_would_be_credited():
    long = ["env=mock", "mock.total_steps=10", "controllers.beta_reinforce.lookahead_steps=20"]

    def build(overrides):
        cfg = cfglib.load(RunConfig, None, overrides)
        return build_controller(cfg, MockExposureEnv(cfg.mock))

    with pytest.warns(UserWarning, match=r"lookahead_steps=20 is longer than an episode.*will not learn"):
        build(long)
    # credited at the episode end instead, a mode that looks one window ahead, or another controller
    # selected (a bench of fixed on the same settings): no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build([*long, "controllers.beta_reinforce.finish_truncated=truncate"])
        build([*long, "controllers.beta_reinforce.reward_mode=immediate"])
        build([*long, "controller=fixed"])


def test_resolved_config_round_trips_and_switching_env_rebinds():
    import dataclasses

    cfg = cfglib.load(RunConfig, None, ["mock.gamma=0.7"])
    again = cfglib.from_dict(RunConfig, json.loads(json.dumps(resolved_dict(cfg))))
    assert resolved_dict(again) == resolved_dict(cfg)
    # a unit of bench.py: the same run config on the other env takes that env's gamma
    mock = dataclasses.replace(cfg, env="mock")
    assert resolved_dict(mock)["controllers"]["beta_reinforce"]["gamma"] == 0.7


def test_the_same_real_key_means_the_same_in_every_recipe():
    from atesd.builder import RealConfig
    from recipes.eval import EvalConfig
    from recipes.sweep import SweepConfig

    for cls in (RunConfig, SweepConfig, EvalConfig):
        cfg = cfglib.load(cls, None, ["real.engine.lr=3e-4", "real.task.eval_size=32"])
        assert isinstance(cfg.real, RealConfig), cls
        assert (cfg.real.engine.lr, cfg.real.task.eval_size) == (3e-4, 32), cls
    # eval's sampling section has the training sampler's keys
    assert cfglib.load(EvalConfig, None, ["sampling.backend=hf", "sampling.top_k=5"]).sampling.top_k == 5


def test_a_section_given_in_part_keeps_its_parents_defaults():
    """A parent may default a section otherwise than the section's class: one key given inside it
    used to rebuild it from the class, silently (real.env.total_steps=20 turned evaluations off,
    real.engine.loss.chunk_size=512 trained forward KL, any real.* key turned the sweep's probe on)."""
    from recipes.branch_alpha import BranchConfig
    from recipes.eval import EvalConfig
    from recipes.sweep import SweepConfig

    for cls, key in ((RunConfig, "real.env.total_steps=20"), (RunConfig, "real.engine.loss.chunk_size=512"),
                     (SweepConfig, "real.engine.lr=0.01"), (BranchConfig, "real.engine.lr=0.01"),
                     (EvalConfig, "real.hf.name_or_path=x")):  # fmt: skip
        given = cfglib.to_dict(cfglib.load(cls, None, [key]))
        default = cfglib.to_dict(cls())
        assert cfglib.differences(default, given) == [key.split("=")[0]], (cls, key)


def test_an_empty_section_keeps_its_parents_defaults_too(tmp_path):
    """A section header whose keys are all commented out (YAML's null), or `=null`, rebuilt the section
    from its class: `loss:` alone trained forward KL, `real.env=null` turned evaluations off."""
    (tmp_path / "empty.yaml").write_text("real:\n  engine:\n    loss:\n      # chunk_size: 512\n")
    default = cfglib.to_dict(RunConfig())
    for path, overrides in ((tmp_path / "empty.yaml", []), (None, ["real.env=null"])):
        assert cfglib.differences(default, cfglib.to_dict(cfglib.load(RunConfig, path, overrides))) == []


def test_yaml_merge_keys_read_as_yaml_reads_them(tmp_path):
    """`<<: *anchor` was refused ("could not determine a constructor for the tag ...merge"); its keys
    give way to the mapping's own, and a key given twice is still refused."""
    (tmp_path / "merge.yaml").write_text("a: &m\n  x: 1\n  y: 2\nb:\n  <<: *m\n  y: 3\n")
    assert cfglib.read_yaml(tmp_path / "merge.yaml") == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}
    (tmp_path / "twice.yaml").write_text("b:\n  <<: {x: 1}\n  y: 1\n  y: 3\n")
    with pytest.raises(cfglib.ConfigError, match="the key 'y' is given twice"):
        cfglib.read_yaml(tmp_path / "twice.yaml")


def test_an_int_field_reads_a_whole_number_written_with_an_exponent():
    """`episodes=1e3` was refused (YAML reads it as text: no dot) while `1.0e+3` was read."""
    assert cfglib.load(RunConfig, None, ["episodes=1e3"]).episodes == 1000
    with pytest.raises(cfglib.ConfigError, match="episodes must be a number"):
        cfglib.load(RunConfig, None, ["episodes=1.5e0"])


def test_a_key_without_its_leading_sections_is_pointed_to_its_full_name():
    for given, meant in (("engine.lr=1", "'real.engine'"),
                         ("lambda_gt=0.1", "'mock.lambda_gt' or 'real.env.lambda_gt'")):  # fmt: skip
        with pytest.raises(cfglib.ConfigError, match=f"did you mean {meant}\\?"):
            cfglib.load(RunConfig, None, [given])


@pytest.mark.parametrize("recipe,given", [("sweep", "steps=150"), ("branch_alpha", "base=0.75")])
def test_resume_accepts_the_config_a_directory_was_started_with(tmp_path, recipe, given):
    """config.json holds real.task.bands as lists of lists, the config given as tuples of tuples: every
    `--resume DIR --set <its own value>` and `--config <its own file>` was refused as differing."""
    import importlib

    module = importlib.import_module(f"recipes.{recipe}")
    cls = module.SweepConfig if recipe == "sweep" else module.BranchConfig
    stored = cfglib.to_dict(cls())
    (tmp_path / "config.json").write_text(json.dumps(stored, indent=1))  # as the recipe writes it
    (tmp_path / "same.yaml").write_text(json.dumps(stored))  # JSON is YAML: the very file it started from
    assert module.resume_config(cls, tmp_path, tmp_path / "same.yaml", [given]) == cls()
    with pytest.raises(
        cfglib.ConfigError, match=r"differs from the one it was started with in real\.task\.bands;"
    ):
        module.resume_config(cls, tmp_path, None, [given, "real.task.bands=[[3, 0], [0, 3]]"])
