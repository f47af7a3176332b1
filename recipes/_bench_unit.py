"""One unit of a bench, (controller spec, env, seed): its run config from the spec, its env (mock, real
or a Gymnasium id), the checks of a spec on its env before any unit runs, the warm start the real units
share, and running a unit (in this process or a worker) into its record. It knows nothing of the
command line, the bench directory or the statistics over units (`_bench_stats`)."""

from __future__ import annotations

import dataclasses
import math
import time
import types
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from atesd import config as cfglib
from atesd.state import write_atomic
from atesd.threads import set_threads
from controllers import CONTROLLERS
from recipes._progress import warmstart_progress
from recipes.common import (
    MOCK_ONLY,
    OWN_CONFIG,
    EnvFreeRunConfig,
    EnvKey,
    RunConfig,
    build_controller,
    controller_config,
)

ENVS = ("mock", "real")


# ---- one unit of work -----------------------------------------------------------------------------
# what building a spec's controller warns (recipes/common.py, recipes/_controller.py), said once when the
# specs are checked (`check_specs`, `say_unit_warnings`) and kept to itself by each unit: it was said again
# per unit and worker
SAID_AT_CHECK = ("this env has no reward_spec", r"controllers\.[\w.]+\.lookahead_steps=")


def run_unit(
    cfg_dict: dict[str, Any],
    env: str,
    controller: str,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    env_spec: Any = None,
    bank_note: str | None = None,
) -> dict[str, Any]:
    """Train `controller` on a fresh `env` for cfg.episodes episodes under `seed` (runs in a worker too);
    `env_kwargs` go to `gymnasium.make` of an env given by id (`--env-set`); `env_spec`, its
    registration in the parent, registers it in a worker that lacks it (an env registered in the
    script that called bench.main); `bank_note`, a file where the unit writes the path of the bank
    file it records into (bank_dir) before its first window, for a resume to remove a cut unit's.

    Torch runs on cfg.threads threads on the real env (0: the free cores, checked every window) and on
    one on the mock (its controllers' networks are a few hundred parameters: a second thread only
    spins); the caller's thread count is restored.
    """
    import torch

    from controllers.base import note_error

    cfg = spec_config(cfg_dict, env, controller, seed)
    if env == "real":
        quiet_hf()
    previous = torch.get_num_threads()
    follower = set_threads(cfg.threads if env == "real" else 1)  # threads=0: follow the free cores
    try:
        t0 = time.perf_counter()
        gym_env = _unit_env(cfg, env, seed, env_kwargs, env_spec)
        note_bank_file(bank_note, gym_env)
        starts: list[str] = []  # where the controller started, when not from its own config
        with warnings.catch_warnings():  # said once per spec when the specs were checked
            for message in SAID_AT_CHECK:
                warnings.filterwarnings("ignore", message=message)
            agent = build_controller(
                cfg, gym_env, announce=starts.append, env_key=unit_env_key(env, env_kwargs)
            )
        trained = _train(cfg, gym_env, agent, seed, follower)
        gym_env.close()
        return _unit_record(cfg, env, controller, seed, starts, trained, t0)
    except Exception as err:  # which unit of the bench failed (a worker's error said nothing of it)
        note_error(err, f"bench unit {env}/{controller}/{seed}")
        raise
    finally:
        torch.set_num_threads(previous)


def _unit_env(cfg: RunConfig, env: str, seed: int, env_kwargs: dict[str, Any] | None, env_spec: Any) -> Any:
    """The unit's fresh env: mock and real built from `cfg`; an env given by id made with `env_kwargs`,
    registered from `env_spec` first where this process lacks it (see `run_unit`)."""
    from recipes.common import build_env

    if env in ENVS:
        return build_env(cfg)
    if env_spec is not None:
        import gymnasium as gym

        gym.registry.setdefault(env_spec.id, env_spec)
    return make_env(env, env_kwargs, cfg.bank_dir, cfg.controller, seed)


def note_bank_file(note: str | None, gym_env: Any) -> None:
    """Write to `note` the path of the bank file `gym_env` records into, where it records one."""
    from envs.bank import find_recorder

    recorder = find_recorder(gym_env)
    if note and recorder is not None:
        Path(note).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(note), str(recorder.path.resolve()))


class Trained(NamedTuple):
    """What a unit's episodes left: the last episode's result and, per window of it, whether an
    evaluation ran there; each episode's final score and each episode's evaluations."""

    result: Any
    evaluated: list[bool]
    runs: list[float]
    run_evals: list[list[float]]


def _train(cfg: RunConfig, gym_env: Any, agent: Any, seed: int, follower: Any) -> Trained:
    """cfg.episodes episodes of `agent` on `gym_env`, episode e seeded 1000 seed + e (the controller's
    learned state carries across episodes); `follower` (threads=0) checks the free cores every window."""
    from controllers.base import run_episode

    evals: list[float] = []  # the last episode's evaluations (windows whose info has "eval")
    evaluated: list[bool] = []  # per window of the last episode: did an evaluation run there

    def on_step(step: int, transition: Any) -> None:
        if follower is not None:
            follower.update()
        evaluated.append("eval" in transition.info)
        if evaluated[-1]:
            evals.append(float(transition.info.get("score", math.nan)))

    runs = []  # each episode's final score (its return where the env has no score)
    run_evals = []  # each episode's evaluations (`evals` below), for its --score other than final
    for episode in range(cfg.episodes):
        evals.clear(), evaluated.clear()
        result = run_episode(gym_env, agent, seed=1000 * seed + episode, on_step=on_step)
        runs.append(episode_score(result))
        run_evals.append(list(evals) or [float(s) for s in result.scores if math.isfinite(s)])
    return Trained(result, evaluated, runs, run_evals)


def _unit_record(
    cfg: RunConfig, env: str, controller: str, seed: int, starts: list[str], trained: Trained, t0: float
) -> dict[str, Any]:
    """The unit's record (a line of units.jsonl): its final score, curve and evaluations, each
    episode's score, and the seconds since `t0`."""
    result, evaluated, runs, run_evals = trained
    final = episode_score(result)
    return {
        "env": env,
        "controller": controller,  # the spec string
        "seed": seed,
        "controller_start": starts[-1] if starts else OWN_CONFIG,
        "start": result.start_score,
        "final": final,
        # window 0: the start; an env that evaluates now and then (the real env, which carries
        # its last evaluation forward) has NaN between its evaluations
        "curve": [result.start_score]
        + [float(s) if done or not any(evaluated) else math.nan for s, done in zip(result.scores, evaluated)],
        # the real env carries its last evaluation forward between evaluations: these are the
        # evaluations themselves; an env that scores every window (the mock) has one per window
        "evals": run_evals[-1],
        "runs": runs,
        "run_evals": run_evals if cfg.episodes > 1 else [],
        "scored_by": "score" if "score" in result.final_info else "return",  # an env of others
        "alpha_mean": float(np.mean(result.alphas)),
        "final_eval": {k: float(v) for k, v in (result.final_info.get("eval") or {}).items()},
        "seconds": time.perf_counter() - t0,
    }


def episode_score(result: Any) -> float:
    """An episode's final `info["score"]`; for an env of others that reports none, its undiscounted
    return. A score reported as NaN stays NaN (dropped from the statistics, and `n` shows it), never
    a return averaged in with other seeds' scores."""
    if "score" not in result.final_info:
        return float(np.sum(result.rewards))
    return float(result.final_info["score"])


def make_env(
    env_id: str, kwargs: dict[str, Any] | None = None, bank_dir: str = "", controller: str = "", seed: int = 0
) -> Any:
    """A registered Gymnasium env by id, built with `kwargs` (this package's ids are registered by
    importing `envs`: atesd/MockExposure-v0, atesd/TeacherExposure-v0, atesd/SkillChain-v0, ...);
    with `bank_dir`, recording every window there as `build_env` does for mock and real (the bank's
    config: the id and `kwargs`, so runs of two ids or settings do not mix in one fit)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers this package's envs)

    env = gym.make(env_id, **(kwargs or {}))
    if bank_dir:
        from envs.bank import BankRecorder

        config = {"id": env_id, **(kwargs or {})}
        env = BankRecorder(env, bank_dir, tag=f"{env_id}__{controller}__{seed}", config=config)
    return env


def check_exposure_env(env_id: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Build the env `env_id` (with `kwargs`) once and check it has the exposure action space (one
    alpha in [0, 1], or one per band: `Box(0, 1, (K,))`); returns it (the caller closes it).
    ConfigError for an unknown id, keywords the env refuses or another action space."""
    import gymnasium as gym

    try:
        env = make_env(env_id, kwargs)
    except gym.error.Error as err:
        raise cfglib.ConfigError(
            f"unknown env '{env_id}' in --env: not mock, real or a registered Gymnasium id ({err}); an env "
            "of your own: --env module:Id imports the module that registers it"
        ) from None
    except (TypeError, ValueError) as err:
        given = " ".join(f"{k}={v}" for k, v in (kwargs or {}).items()) or "nothing"
        raise cfglib.ConfigError(f"env '{env_id}' could not be built from --env-set {given}: {err}") from None
    space = env.action_space
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.shape[0] >= 1
            and float(space.low.min()) >= 0.0 and float(space.high.max()) <= 1.0):  # fmt: skip
        env.close()
        raise cfglib.ConfigError(
            f"env '{env_id}' has the action space {space}; exposure controllers need Box(0, 1, (K,))"
        )
    return env


SPEC_INIT = "init"  # the spec key for the unit's controller_init, not a controller config field


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """`name` or `name:key=value[:key=value...]` -> (name, ["controllers.name.key=value", ...]); the
    key `init` sets the unit's `controller_init` (`beta_reinforce:init=none` beside `beta_reinforce`:
    the paper's start against the shipped prior, in one bench)."""
    name, *parts = (part.strip() for part in spec.split(":"))
    overrides, keys = [], set()
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise cfglib.ConfigError(f"controller spec '{spec}': '{part}' must look like key=value")
        if key in keys:
            raise cfglib.ConfigError(f"controller spec '{spec}' sets {key} twice")
        keys.add(key)
        overrides.append(f"controller_init={value}" if key == SPEC_INIT else f"controllers.{name}.{part}")
    if not name:
        raise cfglib.ConfigError(f"controller spec '{spec}' names no controller")
    return name, overrides


def spec_config(cfg_dict: dict[str, Any], env: str, spec: str, seed: int) -> RunConfig:
    """The run config of one unit: `cfg_dict` with the spec's controller and overrides, env (mock,
    real, or a Gymnasium id: an `EnvFreeRunConfig`, its controller checked on the env) and seed."""
    name, overrides = parse_spec(spec)
    controller_config(name)  # unknown name: ConfigError with the closest registered one
    cfg_cls = CONTROLLERS[name][1]
    if dataclasses.is_dataclass(cfg_cls) and SPEC_INIT in {f.name for f in dataclasses.fields(cfg_cls)}:
        raise cfglib.ConfigError(f"controller {name} has a config field '{SPEC_INIT}', which specs reserve")
    data = cfglib.merge(cfg_dict, cfglib.parse_overrides(overrides))
    data |= {"env": env if env in ENVS else "mock", "controller": name, "seed": seed}
    return cfglib.from_dict(RunConfig if env in ENVS else EnvFreeRunConfig, data)


def unit_env_key(env: str, env_kwargs: dict[str, Any] | None) -> EnvKey | None:
    """How a controller's errors name the env's H and gamma: by their config keys on mock and real
    (None: `cfg.env_key`); on an env given by id, as the `--env-set` that gave them, else the env's."""
    if env in ENVS:
        return None
    given = dict(env_kwargs or {})
    return lambda key: f"--env-set {key}" if key in given else f"the env's {key}"


def quiet_hf() -> None:
    """Turn off transformers' "Loading weights" bar: one per real unit would bury the progress lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def check_spec(cfg_dict: dict[str, Any], env: str, spec: str, seed: int, probe: Any, env_kwargs) -> None:
    """Build spec's controller for env as its units will (an env given by id: against `probe`, that env
    itself; mock and real: a stand-in with their spaces), raising what they would and warning what
    they would (`SAID_AT_CHECK`)."""
    unit_cfg = spec_config(cfg_dict, env, spec, seed)
    build_controller(unit_cfg, probe or _spaces(unit_cfg), env_key=unit_env_key(env, env_kwargs))


def check_specs(
    cfg_dict: dict[str, Any],
    envs: list[str],
    controllers: list[str],
    seed: int,
    probes: dict[str, Any],
    env_kwargs: dict[str, Any],
    notes: list[str],
) -> None:
    """Check every spec on every env it runs on (`check_spec`), noting the mock-only ones skipped on the
    others; ConfigError naming the spec."""
    for env in envs:
        for spec in controllers:
            if env != "mock" and parse_spec(spec)[0] in MOCK_ONLY:
                notes.append(f"note: '{spec}' runs on the mock env only; skipped on {env}")
                continue
            try:  # fail now, not after the warm start: unknown names and keys, bad values
                check_spec(cfg_dict, env, spec, seed, probes.get(env), env_kwargs)
            except ValueError as err:
                said = str(err).startswith(f"controller spec '{spec}'")  # parse_spec's own names it
                raise cfglib.ConfigError(str(err) if said else f"controller spec '{spec}': {err}") from err


def say_unit_warnings(cfg_dict: dict[str, Any], units: list[tuple[str, str, int]], env_kwargs) -> None:
    """--resume: what checking the specs said when the bench began (`SAID_AT_CHECK`), which each unit
    keeps to itself (`run_unit`), for the specs still to run."""
    for env in dict.fromkeys(e for e, _, _ in units):
        probe = check_exposure_env(env, env_kwargs) if env not in ENVS else None
        try:
            for spec, seed in {s: seed for e, s, seed in units if e == env}.items():
                check_spec(cfg_dict, env, spec, seed, probe, env_kwargs)
        finally:
            if probe is not None:
                probe.close()


def _spaces(cfg: RunConfig) -> Any:
    """A stand-in env holding only what a controller is built from: the spaces and the reward spec
    (the mock is built, it is cheap; the real env's bands are read from its task without a model)."""
    from envs import spec

    if cfg.env == "mock":
        from envs.mock_env import MockExposureEnv

        return MockExposureEnv(cfg.mock)
    bands: tuple[str, ...] = ()
    if cfg.real.env.action == "per_band":
        from atesd.builder import build_task
        from atesd.tasks.base import action_bands

        bands = action_bands(build_task(cfg.real))
    return types.SimpleNamespace(
        observation_space=spec.observation_space(bands),
        action_space=spec.action_space(len(bands) or 1),
        unwrapped=types.SimpleNamespace(reward_spec=cfg.reward_spec),
    )


def outside_specs(env_ids: set[str]) -> dict[str, Any]:
    """The registrations of the envs given by id, for the workers (a spawned worker imports this
    package's envs, not an env the calling script registered); ConfigError in one line for one whose
    entry point cannot be sent to another process (a lambda, a local class)."""
    import pickle

    import gymnasium as gym

    specs = {}
    for env_id in sorted(env_ids - set(ENVS)):
        if ":" in env_id:  # `module:Id`: a worker's gymnasium.make imports the module, which registers it
            continue
        spec = gym.spec(env_id)
        try:
            pickle.dumps(spec)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise cfglib.ConfigError(
                f"--env {env_id}: its registration cannot be sent to the worker processes ({err}); register "
                "it with an importable entry point ('module:Class'), or run with --workers 0"
            ) from None
        specs[env_id] = spec
    return specs


def warm_start_real(cfg: RunConfig) -> None:
    """Train or load the embedded warm start once, here, so units (and workers) read it from the cache."""
    import torch

    from atesd.builder import build_student, build_task

    if not cfg.real.embedded:
        return  # an HF checkpoint: nothing to warm-start
    quiet_hf()
    previous = torch.get_num_threads()
    set_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        bar = warmstart_progress()  # a bar only when it trains (a cache hit showed a frozen 0/N)
        try:
            build_student(cfg.real, build_task(cfg.real), bar)
        finally:
            bar.close()
        print(f"warm start ready ({time.perf_counter() - t0:.0f} s)")
    finally:
        torch.set_num_threads(previous)
