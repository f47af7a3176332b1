"""A run's controller below the run config: its config from `controllers.<name>`, with the facts of the
reward that the env owns (H, gamma) taken from the env's reward spec; what it reads of an env, checked;
and the saved state it may start from (controller_init), checked and loaded with one-line errors. It
knows nothing of the run config: `recipes.common` builds `RunConfig` and `build_controller` (and where a
run's controller starts) on these, and re-exports them."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from atesd import config as cfglib
from atesd.progress import RewardSpec
from controllers import CONTROLLERS
from controllers.base import check_reads as check_entries
from controllers.base import observation_size

# Facts of the reward that the env owns and a controller must share: a controller's copy is set from
# the env's `reward_spec` when it is built; an explicit `controllers.<name>.<key>` must agree with it.
ENV_OWNED = ("hold_steps", "gamma")


def default_controller_configs() -> dict[str, dict[str, Any]]:
    """Every registered controller's default config as plain dicts, without the env-owned keys."""
    return {
        name: _without_env_owned(cfglib.to_dict(cfg_cls()), {}) for name, (_, cfg_cls) in CONTROLLERS.items()
    }


def _without_env_owned(resolved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resolved.items() if k not in ENV_OWNED or k in given}


# How an error names one of the env's own keys: a config prefix (`real.env.`, `mock.`) or, for an env
# whose keys are not this run config's (one given by Gymnasium id, a surrogate's bank), key -> label.
EnvKey = str | typing.Callable[[str], str]


def env_label(env_key: EnvKey, key: str) -> str:
    """The name of the env's `key` in an error: `real.env.hold_steps`, `--env-set hold_steps`, ..."""
    return env_key(key) if callable(env_key) else f"{env_key}{key}"


def _has_hold(name: str) -> bool:
    """Whether registered controller `name`'s config has a `hold_steps` field (False: unknown name)."""
    return name in CONTROLLERS and "hold_steps" in {f.name for f in dataclasses.fields(CONTROLLERS[name][1])}


def controller_config(
    name: str,
    data: dict[str, Any] | None = None,
    reward: RewardSpec | None = None,
    env_key: EnvKey = "",
    warn: bool = False,
) -> Any:
    """The config dataclass of controller `name` from (partial) `data`; clear errors for bad keys.

    With `reward` (the env's `reward_spec`; `env_key` the config prefix it came from, e.g.
    `real.env.`, or a function naming each key where it did not come from this run config),
    every env-owned field takes the env's value, and an explicit different value in `data` is
    refused in one line naming both keys. With `warn` (when the controller is built), a lookahead
    longer than the episode, under which nothing would be credited, is warned about.
    """
    if name not in CONTROLLERS:
        close = difflib.get_close_matches(name, list(CONTROLLERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise cfglib.ConfigError(f"unknown controller '{name}'{hint} (registered: {', '.join(CONTROLLERS)})")
    cfg_cls = CONTROLLERS[name][1]
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)} if dataclasses.is_dataclass(cfg_cls) else {}
    if "seed" in fields and data.get("seed") is not None:
        refuse_seed(name, cfg_cls, data["seed"])
    if reward is not None:
        take_env_owned(name, cfg_cls, data, reward, env_key, warn)
    return cfglib.from_dict(cfg_cls, data, f"controllers.{name}.")


def refuse_seed(name: str, cfg_cls: type, seed: Any) -> None:
    """Refuse a controller seed given in the config: the recipes give every controller the run's."""
    given = cfglib.coerce(typing.get_type_hints(cfg_cls)["seed"], seed, f"controllers.{name}.seed")
    if given != cfg_cls().seed:  # it was replaced by the run's seed, yet recorded as given
        raise cfglib.ConfigError(
            f"controllers.{name}.seed={given}: a controller's seed is the run's (seed=N or --seed; "
            f"bench.py: --seeds), which the recipes give it; drop controllers.{name}.seed"
        )


def take_env_owned(
    name: str, cfg_cls: type, data: dict[str, Any], reward: RewardSpec, env_key: EnvKey, warn: bool
) -> None:
    """Set the env-owned fields of `data` to the env's values (a different one given is refused), check
    the lookahead against the env's hold window and, with `warn`, warn of one longer than an episode."""
    hints = typing.get_type_hints(cfg_cls)
    for key in (k for k in ENV_OWNED if k in hints):
        env_value = getattr(reward, key)
        if data.get(key) is not None:
            given = cfglib.coerce(hints[key], data[key], f"controllers.{name}.{key}")
            if given != env_value:
                owner = env_label(env_key, key)
                raise cfglib.ConfigError(
                    f"controllers.{name}.{key}={given} contradicts {owner}={env_value}: the env owns "
                    f"{key} and every controller takes it from there; drop controllers.{name}.{key}"
                )
        data[key] = env_value
    lookahead = data.get("lookahead_steps", getattr(cfg_cls(), "lookahead_steps", None))
    if isinstance(lookahead, int) and lookahead % reward.hold_steps:
        raise cfglib.ConfigError(
            f"controllers.{name}.lookahead_steps={lookahead} must be a multiple of the env's "
            f"hold_steps ({env_label(env_key, 'hold_steps')}={reward.hold_steps})"
        )
    defaults = cfg_cls()
    mode = data.get("reward_mode", getattr(defaults, "reward_mode", None))
    finish = data.get("finish_truncated", getattr(defaults, "finish_truncated", None))
    if (
        warn
        and isinstance(lookahead, int)
        and lookahead > reward.total_steps
        and mode in ("discounted", "discounted_grounded")
        and finish == "drop"
    ):
        warnings.warn(  # a smoke run may mean it; a run meant to learn never would
            f"controllers.{name}.lookahead_steps={lookahead} is longer than an episode "
            f"({env_label(env_key, 'total_steps')}={reward.total_steps}): with finish_truncated=drop no "
            f"decision will be credited and the controller will not learn; shorten the lookahead or set "
            f"controllers.{name}.finish_truncated=truncate",
            stacklevel=1,  # one location: said once per process
        )


MOCK_ONLY = ("oracle",)  # controllers that need the mock env's `oracle_alpha`


def reward_spec_of(env: gym.Env) -> RewardSpec | None:
    """`env.unwrapped.reward_spec` as a RewardSpec (None where the env has none; a mapping is read by
    key); ConfigError in one line for one that lacks a field."""
    spec = getattr(env.unwrapped, "reward_spec", None)
    if spec is None or isinstance(spec, RewardSpec):
        return spec
    kind = type(spec).__name__
    if isinstance(spec, typing.Mapping):  # {"hold_steps": 5, ...}: read by key (hasattr said it had none)
        spec = types.SimpleNamespace(**spec)
    missing = [name for name in RewardSpec._fields[:5] if not hasattr(spec, name)]
    if missing:
        raise cfglib.ConfigError(
            f"the env's reward_spec ({kind}) has no {', '.join(missing)}: give it an "
            f"atesd.progress.RewardSpec ({', '.join(RewardSpec._fields)})"
        )
    return RewardSpec(*(getattr(spec, name) for name in RewardSpec._fields[:5]),
                      bool(getattr(spec, "grounded_change", False)))  # fmt: skip


def check_reads(cls: type, env: Any, name: str) -> None:
    """`controllers.base.check_reads` for `env`'s observation names, as a ConfigError."""
    try:
        names = getattr(getattr(env, "unwrapped", env), "observation_names", None)
        check_entries(cls, names, name, observation_size(env))
    except ValueError as err:
        raise cfglib.ConfigError(str(err)) from None


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


def saved_state_exists(path: str) -> bool:
    """Whether `path` (controller_init: a saved state, with or without its suffix) names a file here."""
    from atesd.state import state_files

    return _exists(path) or any(p.is_file() for p in state_files(saved_state_base(path)))


def saved_state_base(path: str) -> Path:
    """A saved state's path without its suffix (`load_controller_init` takes either)."""
    base = Path(path).expanduser()
    return base.with_suffix("") if base.suffix in (".json", ".safetensors") else base


def load_controller_init(controller: Any, path: str, name: str, env: Any = None) -> None:
    """Load the state saved at `path` (`<path>.json` + `<path>.safetensors`) into `controller`;
    ConfigError in one line when it is missing or does not fit (another controller, other spaces:
    `env`'s sizes are named), the loader's error chained for --debug."""
    from atesd.state import load_state

    base = saved_state_base(path)
    missing = no_saved_state(base)
    if missing:
        raise cfglib.ConfigError(missing)
    try:
        state = load_state(base)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: a traceback, or JSON's line alone
        raise cfglib.ConfigError(
            f"controller_init: the state at {base} does not read ({type(err).__name__}: {err}); was it "
            "cut short while it was written?"
        ) from err
    unknown = sorted(set(state) - set(controller.state_dict()))
    if unknown:  # another controller's: an open-loop one (fixed, random) loaded anything without a word
        raise cfglib.ConfigError(
            f"controller_init: the state at {base} does not fit a {name} controller: it holds "
            f"{', '.join(map(str, unknown[:4]))}, which a {name}'s state has not (its state: "
            f"{', '.join(map(str, controller.state_dict())) or 'nothing'}); a state saved by another "
            "controller?"
        )
    try:
        controller.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - whatever the state's mismatch, one line names it
        raise cfglib.ConfigError(
            f"controller_init: the state at {base} does not fit a {name} controller on this env "
            f"({misfit(err, env)})"
        ) from err


def no_saved_state(base: Path) -> str:
    """Why no saved state is at `base` (a path without its suffix), as controller_init's error; ''
    when both its files are there."""
    from atesd.state import state_files

    missing = [p for p in state_files(base) if not p.is_file()]
    if not missing:
        return ""
    old = base.with_suffix(".json")  # saved before names kept their dots: `ctl0.25` went to `ctl0.*`
    hint = (
        f"; a state saved under that name before 2026-12-07 is at {base.with_suffix('')}"
        if (base.suffix and old.is_file())
        else ""
    )
    if base.is_dir() and all(p.is_file() for p in state_files(base / "controller")):
        hint = f"; {base} is a run directory: its controller's state is {base / 'controller'}"
    word = difflib.get_close_matches(str(base).lower(), ["auto", "none"], n=1)
    if word and not base.parent.name:  # a word, not a path: `init=nonee`
        hint = f"; did you mean {word[0]!r}? (controller_init takes a saved state's path, auto or none)"
    return f"controller_init: no saved controller state at {base} ({missing[0]} is missing){hint}"


# torch's line for a tensor of another shape (under "Error(s) in loading state_dict for <Module>:")
SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def misfit(err: BaseException, env: Any = None) -> str:
    """Why a saved state did not load, in a few words: the first tensor of another shape (`net.0.weight:
    saved [64, 6], this controller [64, 8]`, and `env`'s sizes), else the error's first line with the
    first entry below it (torch heads its list of missing keys with a line that says none)."""
    text = str(err)
    match = SIZE_MISMATCH.search(text)
    if match:
        key, saved, mine = match.groups()
        sizes = ""
        if env is not None and getattr(env, "observation_space", None) is not None:
            from controllers.base import action_size

            obs = int(np.prod(env.observation_space.shape))
            sizes = f" than this env's {obs} observation entries and {action_size(env.action_space)} alpha(s)"
        return (
            f"{key}: saved [{saved}], this controller [{mine}]; the state was saved on an env of other "
            f"observation or action sizes{sizes}"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__
