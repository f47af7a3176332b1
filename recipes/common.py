"""What run.py and bench.py share: the run config, and building an env and a controller from it.

A run is one controller trained against one env (the embedded real env or the mock) for `episodes`
training runs, the controller's learned state carried across them. Every field of every component
config is reachable by a dotted key (`real.engine.lr`, `mock.variant`, `controllers.bandit.kind`);
`controllers.<name>` holds a config for every registered controller, so a controller added to
`controllers.CONTROLLERS` is configurable here without further code.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym

from atesd import config as cfglib
from atesd.builder import RealConfig, build_engine
from atesd.priors import absolute_path, local_path
from atesd.progress import RewardSpec
from controllers import CONTROLLERS
from envs.exposure_env import ExposureEnvConfig
from envs.mock_env import MockConfig
from recipes._controller import (  # a controller's own config and saved state; others import them from here
    ENV_OWNED,
    MOCK_ONLY,
    EnvKey,
    _has_hold,
    _without_env_owned,
    check_reads,
    controller_config,
    default_controller_configs,
    load_controller_init,
    no_saved_state,
    reward_spec_of,
    saved_state_base,
    saved_state_exists,
)

EnvKind = Literal["real", "mock"]
OWN_CONFIG = "its own config"  # where a controller starts without a prior or a saved state


@dataclass(frozen=True)
class RealEnvConfig(RealConfig):
    """The real env: the model, task and engine of `atesd.builder.RealConfig` (the same `real.*` keys
    in every recipe), and the episode around them (`env`)."""

    env: ExposureEnvConfig = field(default_factory=lambda: ExposureEnvConfig(eval_every=4))


@dataclass(frozen=True)
class RunConfig:
    """One training run of one controller against one env."""

    controller: str = field(default="beta_reinforce", metadata={"help": "a name in controllers.CONTROLLERS"})
    env: EnvKind = field(default="real", metadata={"help": "real (the embedded default) or mock"})
    name: str = field(default="default", metadata={"help": "run name (part of the run directory)"})
    seed: int = field(
        default=0,
        metadata={"help": "seed of the env and the controller (the controllers' own seed fields take it)"},
    )
    episodes: int = field(
        default=1, metadata={"help": "training runs of the student; the controller learns across them (>= 1)"}
    )
    out_dir: str = field(default="runs", metadata={"help": "where run directories are created"})
    checkpoint_every: int = field(
        default=5, metadata={"help": "save a resumable checkpoint every this many windows (>= 1)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "complete checkpoints kept (>= 1)"})
    threads: int = field(
        default=0,
        metadata={
            "help": "torch CPU threads (>= 1), or 0: the cores other processes leave free, checked every "
            "window (atesd/threads.py)"
        },
    )
    tensorboard: bool = field(
        default=False, metadata={"help": "also log to TensorBoard (extra [tensorboard])"}
    )
    plots: bool = field(default=True, metadata={"help": "write PNG plots at the end"})
    controller_init: str = field(
        default="auto",
        metadata={
            "help": "where the controller starts: auto (its shipped prior, atesd/priors.py, when one "
            "was pre-trained for this real env and controller config, else its own start), none (its "
            "own start: the paper's Beta(2, 2) for beta_reinforce), or a saved state (a run's "
            "<run_dir>/controller, or any atesd.state.save_state path without its suffix); the "
            "controller goes on learning from there"
        },
    )
    bank_dir: str = field(
        default="",
        metadata={
            "help": "record every window of the run into this bank directory (envs/bank.py), for "
            "recipes/surrogate.py; '' records nothing"
        },
    )
    real: RealEnvConfig = field(default_factory=RealEnvConfig)
    mock: MockConfig = field(default_factory=MockConfig)
    controllers: dict = field(
        default_factory=dict,
        metadata={"help": "per-controller configs, keyed by registered name"},
    )

    def __post_init__(self) -> None:
        checks = (
            ("episodes", self.episodes >= 1, ">= 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("threads", self.threads >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
            ("name", bool(self.name) and "/" not in self.name and "__" not in self.name,
             "non-empty, without '/' or '__'"),
        )  # fmt: skip
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        if self.controller in MOCK_ONLY and self.env != "mock" and self.reward_spec is not None:
            # refused before a run directory or a warm start: it failed at the first window
            raise ValueError(
                f"controller {self.controller} runs on the mock env only (env=mock): the {self.env} env "
                "reports no optimal alpha"
            )
        given = dict(self.controllers or {})
        for name, data in given.items():
            if data is not None and not isinstance(data, dict):
                raise ValueError(f"controllers.{name} must be a mapping of its config keys, got {data!r}")
        resolved = default_controller_configs()
        reward = self.reward_spec
        for name in dict.fromkeys([self.controller, *given]):
            data = given.get(name) or {}
            if reward is None:  # no env of its own (EnvFreeRunConfig): H is the env's, known once built
                # every field is checked but the lookahead's fit to H, at an H any lookahead fits (1);
                # build_controller checks it on the env. The 1 is not kept (an env-owned key not given)
                built = controller_config(name, {"hold_steps": 1, **data} if _has_hold(name) else data)
                resolved[name] = _without_env_owned(cfglib.to_dict(built), data)
                continue
            # every configured controller's fields are checked; the selected one's also against the env
            # (H, gamma, lookahead); another's settings may not fit this env and need not (a stored
            # config.json, a bench's shared settings hold them all): a bench unit selects its own
            try:  # as this env would build it
                built = controller_config(name, data, reward, self.env_key)
            except (cfglib.ConfigError, ValueError):
                if name == self.controller:
                    raise
                built = controller_config(name, data, None, self.env_key)  # another's: as its own
            resolved[name] = _without_env_owned(cfglib.to_dict(built), data)
        object.__setattr__(self, "controllers", resolved)

    @property
    def reward_spec(self) -> RewardSpec | None:
        """The selected env's reward facts (H, gamma, ...): the one source of the controllers' copies
        (None in `EnvFreeRunConfig`)."""
        return self.real.env.reward_spec if self.env == "real" else self.mock.reward_spec

    @property
    def env_key(self) -> str:
        """The config prefix of the selected env's own section."""
        return "real.env." if self.env == "real" else "mock."

    @property
    def hold_steps(self) -> int:
        return self.reward_spec.hold_steps

    @property
    def total_steps(self) -> int:
        return self.reward_spec.total_steps


@dataclass(frozen=True)
class EnvFreeRunConfig(RunConfig):
    """A run config that holds no env of its own: bench.py's shared settings (each unit takes its env
    and controller from the options) and a bench unit on an env given by Gymnasium id (made by
    `gymnasium.make` with --env-set, not from `mock.*` or `real.*`). Its controllers' H and gamma are
    those of the env they are built for, known once it is built, so `build_controller` checks them
    there (checked here against `env`'s section instead, a lookahead that fitted the env was refused
    for not fitting mock.hold_steps or real.env.hold_steps, and the error named that key)."""

    @property
    def reward_spec(self) -> None:
        return None


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The run config as written to config.json: the selected controller's env-owned keys filled in
    with the values it actually uses."""
    out = cfglib.to_dict(cfg)
    name = cfg.controller
    out["controllers"][name] = cfglib.to_dict(
        controller_config(name, cfg.controllers.get(name), cfg.reward_spec, cfg.env_key)
    )
    return out


C = typing.TypeVar("C")


def absolute_paths(cfg: C) -> C:
    """`cfg` (a RunConfig, a config with a `real` section such as the sweep's, or a RealConfig) with
    its local paths absolute (`~` expanded, against this directory, symlinks kept as named:
    `atesd.priors.absolute_path`), for config.json: a resume from another directory then reads the
    same files, not the ones that directory holds under the same relative names. Inputs are made
    absolute where they exist here (real.data.source when it is not a named source, real.data.data_dir,
    real.hf.name_or_path, controller_init: a hub id, a named source or a missing path stays as given),
    the places a run writes to always (bank_dir, real.cache_dir); out_dir stays as given. The `real`
    keys are made so by `atesd.priors.local_path`, as a prior's and a bank's configs are compared."""
    if isinstance(cfg, RealConfig):
        data, hf = cfg.data, cfg.hf
        source, data_dir = local_path("data.source", data.source), local_path("data.data_dir", data.data_dir)
        data = dataclasses.replace(data, source=source, data_dir=data_dir)
        hf = dataclasses.replace(hf, name_or_path=local_path("hf.name_or_path", hf.name_or_path))
        return dataclasses.replace(cfg, data=data, hf=hf, cache_dir=local_path("cache_dir", cfg.cache_dir))
    changes: dict[str, Any] = {}
    if isinstance(getattr(cfg, "real", None), RealConfig):
        changes["real"] = absolute_paths(cfg.real)
    init = getattr(cfg, "controller_init", None)
    if init and init.strip().lower() not in ("auto", "none") and saved_state_exists(init.strip()):
        changes["controller_init"] = absolute_path(init.strip())
    if getattr(cfg, "bank_dir", None):
        changes["bank_dir"] = absolute_path(cfg.bank_dir)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def describe() -> list[tuple[str, str, str]]:
    """(dotted key, default, help) of every RunConfig field, the controllers' included (with the
    default env's H and gamma, which they take from it): the text of --help."""
    defaults = RunConfig()
    rows = [row for row in cfglib.describe(RunConfig, "", defaults) if row[0] != "controllers"]
    for name, (_, cfg_cls) in CONTROLLERS.items():
        built = controller_config(name, {}, defaults.reward_spec, defaults.env_key)
        rows += cfglib.describe(cfg_cls, f"controllers.{name}.", built)
    return rows


def build_env(cfg: RunConfig, warmstart_progress=None, dist=None) -> gym.Env:
    """The env of a run: the mock, or the real env over the engine `atesd.builder` makes of `cfg.real`.
    Under torchrun (`dist`, an atesd.distributed.Dist) rank 0 warm-starts first and the others then
    read the cache; every rank's engine samples its own shard and averages gradients and statistics."""
    if cfg.env == "mock":
        from envs.mock_env import MockExposureEnv

        env: gym.Env = MockExposureEnv(cfg.mock)
    else:
        from envs.exposure_env import TeacherExposureEnv

        engine = build_engine(cfg.real, cfg.seed, warmstart_progress, dist)
        env = TeacherExposureEnv(cfg.real.env, engine=engine)
    if cfg.bank_dir and (dist is None or dist.is_main):
        from envs.bank import BankRecorder

        env_cfg = cfglib.to_dict(cfg.real if cfg.env == "real" else cfg.mock)
        env = BankRecorder(env, cfg.bank_dir, tag=f"{cfg.env}__{cfg.controller}__{cfg.seed}", config=env_cfg)
    return env


def build_controller(
    cfg: RunConfig,
    env: gym.Env,
    name: str | None = None,
    announce: typing.Callable[[str], None] | None = None,
    env_key: EnvKey | None = None,
):
    """Controller `name` (default: cfg.controller) for `env`: its config from cfg.controllers with the
    run's seed, and H and gamma from the env itself (`env.unwrapped.reward_spec`; an env of others
    without one leaves the controller's own values), started as `cfg.controller_init` says
    (`controller_start`); `announce(line)` hears where it starts when that is not `OWN_CONFIG`.
    `env_key` names the env's keys in errors (`env_label`) where `env` was not built from
    `cfg.env`'s section (default: `cfg.env_key`)."""
    name = name or cfg.controller
    cls, cfg_cls = CONTROLLERS[name]
    reward = reward_spec_of(env)
    env_key = env_key if env_key is not None else cfg.env_key
    ctl_cfg = controller_config(name, cfg.controllers.get(name), reward, env_key, warn=True)
    own = [k for k in ENV_OWNED if hasattr(ctl_cfg, k) and k not in (cfg.controllers.get(name) or {})]
    if reward is None and own:  # an outside env without reward_spec: H and gamma cannot be read from it
        warnings.warn(
            f"this env has no reward_spec, so controller {name} uses its own "
            f"{', '.join(f'{k}={getattr(ctl_cfg, k)}' for k in own)}: if the env's differ, set "
            f"{', '.join(f'controllers.{name}.{k}' for k in own)} (or give the env a reward_spec, "
            "atesd.progress.RewardSpec)",
            stacklevel=2,
        )
    if "seed" in {f.name for f in dataclasses.fields(cfg_cls)}:
        try:
            ctl_cfg = dataclasses.replace(ctl_cfg, seed=cfg.seed)
        except ValueError as err:
            raise cfglib.ConfigError(f"controllers.{name}: {err}") from err
    check_reads(cls, env, name)
    controller = cls(env.observation_space, env.action_space, ctl_cfg)
    init, note = controller_start(cfg, env, name, ctl_cfg)
    if init:
        load_controller_init(controller, init, name, env)
    if announce is not None and note:
        announce(note)
    return controller


def controller_start(cfg: RunConfig, env: gym.Env, name: str, ctl_cfg: Any) -> tuple[str, str]:
    """(the state a run's controller loads, '' for its own config; a line saying where it starts, ''
    for its own config when no shipped prior was in question). `controller_init=auto` loads the
    shipped prior (atesd/priors.py) on the real env only."""
    init = cfg.controller_init.strip()
    if init.lower() in ("", "none"):
        return "", ""
    if init.lower() != "auto":
        return init, f"{name} starts from {init}"
    from envs.exposure_env import TeacherExposureEnv

    if cfg.env != "real" or not isinstance(getattr(env, "unwrapped", env), TeacherExposureEnv):
        return "", ""
    from atesd import priors

    defaults = cfglib.to_dict(RealEnvConfig()), cfglib.to_dict(type(ctl_cfg)())  # keys a prior predates
    path, why = priors.find(name, cfglib.to_dict(cfg.real), cfglib.to_dict(ctl_cfg), *defaults)
    if path is None:
        return (
            "",
            f"{name} starts from its own config (its shipped prior does not apply: {why})" if why else "",
        )
    return str(path), (
        f"{name} starts from its shipped prior for this env ({priors.describe(name)}; "
        "controller_init=none starts it from its own config)"
    )


def check_controller_init(cfg: RunConfig) -> None:
    """ConfigError when controller_init names a saved state that is not there: said before the env is
    built (a warm start can train for minutes first), in `load_controller_init`'s words."""
    init = cfg.controller_init.strip()
    if init.lower() not in ("", "auto", "none"):
        missing = no_saved_state(saved_state_base(init))
        if missing:
            raise cfglib.ConfigError(missing)


def check_bank_dir(cfg: RunConfig) -> None:
    """ConfigError where `bank_dir` cannot be the directory a run records into (a file is there, no
    permission): said before the env is built (a warm start can train for minutes first) and before a
    bench's units, not as the recorder's bare OS error. Creates the directory (the recorder would)."""
    if not cfg.bank_dir:
        return
    bank = Path(cfg.bank_dir)
    if bank.exists() and not bank.is_dir():
        raise cfglib.ConfigError(f"bank_dir={cfg.bank_dir} is a file: a bank is a directory of JSONL files")
    try:
        bank.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cfglib.ConfigError(f"cannot record a bank into bank_dir={cfg.bank_dir}: {err}") from err


def refuse_run_config(path: str | Path | None, cls: type, recipe: str) -> None:
    """ConfigError where the YAML at `path` is a run.py config (it sets keys of RunConfig that `cls`,
    the recipe's own config, lacks): said as such, not as the first of its unknown keys."""
    refuse_other_config(
        path, cls, recipe, RunConfig, "run.py",
        "give a file with those, or the model and task by --set real.<key>=<value> (its real section, "
        "without real.env)",
    )  # fmt: skip


def refuse_other_config(
    path: str | Path | None, cls: type, recipe: str, other: type, other_recipe: str, advice: str
) -> None:
    """ConfigError where the YAML at `path` is `other_recipe`'s config (it sets keys of `other` that
    `cls`, the recipe's own config, lacks), ending with `advice`: said as such, not as the first of
    its unknown keys with a guess among this recipe's."""
    if path is None:
        return
    data = cfglib.read_yaml(path)
    own = {f.name for f in dataclasses.fields(cls)}
    theirs = [key for key in data if key not in own and key in {f.name for f in dataclasses.fields(other)}]
    if theirs:
        raise cfglib.ConfigError(
            f"{path} is {'an' if other_recipe[0] in 'aeiou' else 'a'} {other_recipe} config (it sets "
            f"{', '.join(theirs)}); {recipe} reads a config of "
            f"its own, with the keys {', '.join(sorted(own))}: {advice}"
        )


class Once(argparse.Action):
    """An option that may be given once (`--config`): argparse keeps the last of a repeated option, so
    `--config a.yaml --config b.yaml` silently read b.yaml alone; a second one is refused."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        before = getattr(namespace, self.dest, self.default)
        if before is not self.default:  # argparse sets the default first; a value given is a new object
            raise argparse.ArgumentError(
                self,
                f"given twice ({before}, then {values}): one file is read; merge them into one, or give "
                "the second file's keys with --set",
            )
        setattr(namespace, self.dest, values)
