"""Controllers x envs x seeds: final scores with 95% confidence intervals, Welch tests and regret.

    python recipes/bench.py --controllers beta_reinforce,bandit,fixed --env mock --seeds 20
    python recipes/bench.py --env mock --seeds 20                  # every registered controller
    python recipes/bench.py --set controllers.bandit.kind=ucb --set mock.variant=mix --seeds 10
    python recipes/bench.py --config recipes/configs/ci.yaml --env mock,real --seeds 2 --set threads=1
    python recipes/bench.py --env real --seeds 100-109 --controllers fixed:alpha=0.75,fixed:alpha=1,random

`--env` takes mock, real, or any registered Gymnasium id whose action space is one alpha in [0, 1]
(this package's ids, or an env of your own registered before bench.main runs): controllers take
H and gamma from its `reward_spec` where it has one, and learn from its step rewards where its info
lacks this package's keys; its score is `info["score"]` where given, else the last episode's return.
`--controllers` takes controller specs: a registered name, or `name:key=value[:key=value...]` with
overrides of that controller's config (values parsed as YAML, as in `--set`; no commas inside a
spec): every spec is its own row, labelled by the spec string (`fixed:alpha=0.75`), also as the
baseline (`--baseline fixed:alpha=0.75`); the key `init` sets that spec's `controller_init`
(`beta_reinforce:init=none` starts from Beta(2, 2) beside `beta_reinforce` from its shipped
prior). `--seeds N` runs seeds 0..N-1, `--seeds A-B` seeds A..B inclusive (tune on one range,
report on another). `--env-set key=value` (repeatable) passes keywords
to `gymnasium.make` of every env given by id: the held-out env's profiles and reward,
`--env atesd/SkillChain-wall-v0 --env-set lambda_gt=1 --env-set grounded_by=student`.

A unit of work is one (controller spec, env, seed): a fresh env and controller built by `recipes.common`
from the run config (`--config`, `--set`), trained for `episodes` runs with `controllers.base.run_episode`
(episode e of seed s seeded 1000 s + e; the controller's learned state carries across episodes). Its
result is the last episode's final `info["score"]` (mock: the competence; real: the mean greedy
accuracy over bands) and that episode's score per window (NaN on the real env between evaluations,
where it carries the last).
Per (env, controller): mean, 95% t confidence interval, Welch t-test p-values against the baseline
(`--baseline`, default `fixed`, alpha = 1 = OPSD; two-sided, and one-sided for "mean above the
baseline's"), and on the mock env the regret against the oracle
when it is in the run (`oracle` runs on the mock only). Prints a table and writes results.csv,
results.json and curves.png into a new directory <out>/bench__<name>__<YYYYmmdd-HHMMSS>/.

That directory holds plan.json (the units and settings, written first) and units.jsonl (a line per
finished unit, fsynced as each finishes): after Ctrl-C or a crash, `--resume DIR` runs only the units
units.jsonl lacks (with `--workers` as given now), then writes the results as an uncut bench would. One
process at a time works in it (a second one refuses, naming the first); the settings' local paths are
stored absolute, and a resume refuses a local data file or folder or controller_init state (inputs.json)
that changed since the bench started.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd.significance import finite_values, is_constant, mean_ci, paired_exact, paired_p, welch_p  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from atesd.threads import set_threads  # noqa: E402
from controllers import CONTROLLERS  # noqa: E402
from recipes._plots import plot_curves  # noqa: E402
from recipes._progress import discard_dir, fresh_dir, progress, user_errors, warmstart_progress  # noqa: E402
from recipes._rundir import (  # noqa: E402
    append_record,
    changed_inputs,
    git_commit,
    read_records,
    record_inputs,
    run_lock,
)
from recipes._tables import json_safe, print_table, write_csv  # noqa: E402
from recipes._workers import worker_pool  # noqa: E402
from recipes.common import (  # noqa: E402
    MOCK_ONLY,
    OWN_CONFIG,
    EnvFreeRunConfig,
    EnvKey,
    Once,
    RunConfig,
    absolute_paths,
    build_controller,
    check_bank_dir,
    controller_config,
    describe,
)

ENVS = ("mock", "real")


# ---- one unit of work -----------------------------------------------------------------------------
# what building a spec's controller warns (recipes/common.py), said once when the specs are checked
# (`plan`, `_say_unit_warnings`) and kept to itself by each unit: it was said again per unit and worker
SAID_AT_CHECK = ("this env has no reward_spec", r"controllers\.[\w.]+\.lookahead_steps=")


def run_unit(
    cfg_dict: dict[str, Any],
    env: str,
    controller: str,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    env_spec: Any = None,
) -> dict[str, Any]:
    """Train `controller` on a fresh `env` for cfg.episodes episodes under `seed` (runs in a worker too);
    `env_kwargs` go to `gymnasium.make` of an env given by id (`--env-set`); `env_spec`, its
    registration in the parent, registers it in a worker that lacks it (an env registered in the
    script that called bench.main).

    Torch runs on cfg.threads threads on the real env (0: the free cores, checked every window) and on
    one on the mock (its controllers' networks are a few hundred parameters: a second thread only
    spins); the caller's thread count is restored.
    """
    import torch

    from controllers.base import note_error, run_episode
    from recipes.common import build_env

    cfg = spec_config(cfg_dict, env, controller, seed)
    if env == "real":
        quiet_hf()
    previous = torch.get_num_threads()
    follower = set_threads(cfg.threads if env == "real" else 1)  # threads=0: follow the free cores
    evals: list[float] = []  # the last episode's evaluations (windows whose info has "eval")
    evaluated: list[bool] = []  # per window of the last episode: did an evaluation run there

    def on_step(step: int, transition: Any) -> None:
        if follower is not None:
            follower.update()
        evaluated.append("eval" in transition.info)
        if evaluated[-1]:
            evals.append(float(transition.info.get("score", math.nan)))

    try:
        t0 = time.perf_counter()
        if env in ENVS:
            gym_env = build_env(cfg)
        else:
            if env_spec is not None:
                import gymnasium as gym

                gym.registry.setdefault(env_spec.id, env_spec)
            gym_env = make_env(env, env_kwargs, cfg.bank_dir, cfg.controller, seed)
        starts: list[str] = []  # where the controller started, when not from its own config
        with warnings.catch_warnings():  # said once per spec when the specs were checked
            for message in SAID_AT_CHECK:
                warnings.filterwarnings("ignore", message=message)
            agent = build_controller(
                cfg, gym_env, announce=starts.append, env_key=unit_env_key(env, env_kwargs)
            )
        runs = []  # each episode's final score (its return where the env has no score)
        run_evals = []  # each episode's evaluations (`evals` below), for its --score other than final
        for episode in range(cfg.episodes):
            evals.clear(), evaluated.clear()
            result = run_episode(gym_env, agent, seed=1000 * seed + episode, on_step=on_step)
            runs.append(episode_score(result))
            run_evals.append(list(evals) or [float(s) for s in result.scores if math.isfinite(s)])
        gym_env.close()
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
            + [
                float(s) if done or not any(evaluated) else math.nan
                for s, done in zip(result.scores, evaluated)
            ],
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
    except Exception as err:  # which unit of the bench failed (a worker's error said nothing of it)
        note_error(err, f"bench unit {env}/{controller}/{seed}")
        raise
    finally:
        torch.set_num_threads(previous)


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


def parse_seeds(text: str) -> list[int]:
    """`N` -> 0..N-1; `A-B` -> A..B inclusive."""
    first, sep, last = text.strip().partition("-")
    try:
        seeds = list(range(int(first), int(last) + 1)) if sep else list(range(int(first)))
    except ValueError:
        raise cfglib.ConfigError(f"--seeds must be N or A-B (inclusive), got '{text}'") from None
    if not seeds or min(seeds) < 0:
        raise cfglib.ConfigError(f"--seeds '{text}' gives no seeds (N >= 1, 0 <= A <= B)")
    return seeds


def quiet_hf() -> None:
    """Turn off transformers' "Loading weights" bar: one per real unit would bury the progress lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_units(
    cfg_dict: dict[str, Any],
    units: list[tuple[str, str, int]],
    workers: int,
    env_kwargs: dict | None = None,
    keep: Any = None,
) -> list[dict]:
    """Every (env, controller, seed) unit, in this process (workers = 0) or a spawned process pool;
    results come back in the order of `units`, and `keep(result)` hears each as it finishes."""
    results: list[dict | None] = [None] * len(units)
    keep = keep or (lambda result: None)
    with progress("bench units", len(units)) as update:
        if workers == 0:
            for i, unit in enumerate(units):
                results[i] = run_unit(cfg_dict, *unit, env_kwargs)
                keep(results[i])
                update(i + 1, "/".join(map(str, unit)))
            return results  # type: ignore[return-value]
        specs = outside_specs({env for env, _, _ in units})
        with worker_pool(workers) as pool:  # workers die with this process; Ctrl-C stops them at once
            futures = {
                pool.submit(run_unit, cfg_dict, *unit, env_kwargs, specs.get(unit[0])): i
                for i, unit in enumerate(units)
            }
            for done, fut in enumerate(cf.as_completed(futures), start=1):
                results[futures[fut]] = fut.result()
                keep(results[futures[fut]])
                update(done, "/".join(map(str, units[futures[fut]])))
    return results  # type: ignore[return-value]


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


PLAN, UNITS = "plan.json", "units.jsonl"


# ---- statistics ------------------------------------------------------------------------------------
def parse_score(text: str) -> tuple[str, int]:
    """`final`, `best` or `tail:K` (K >= 1) -> (kind, K); ValueError naming the choices otherwise."""
    kind, _, k = text.strip().partition(":")
    if kind in ("final", "best") and not k:
        return kind, 1
    if kind == "tail" and k.isdigit() and int(k) >= 1:
        return kind, int(k)
    raise ValueError(f"--score must be final, best or tail:K (K >= 1), got {text!r}")


def unit_score(unit: dict, score: str) -> float:
    """A unit's score under `score`: its final score, the best of its evaluations (OPSD's best
    checkpoint), or the mean of its last K evaluations (`unit["evals"]`: the last episode's
    evaluations, the final one included; on the mock every window's competence)."""
    evals = unit.get("evals")
    if evals is None:  # a unit recorded before `evals` existed: its curve's windows
        evals = unit["curve"][1:]
    return _scored(evals, unit["final"], score)


def _scored(evals: list, final: float, score: str) -> float:
    """One episode's score under `score` from its evaluations and final score (see `unit_score`)."""
    kind, k = parse_score(score)
    if kind == "final":
        return final
    evals = [v for v in evals if v is not None and math.isfinite(v)]  # an evaluation without a score
    if not evals:
        return final
    return float(max(evals)) if kind == "best" else float(np.mean(evals[-k:]))


def run_scores(unit: dict, score: str) -> list[float]:
    """Each episode's score under `score` (several episodes a unit, learned state kept): [] for a unit
    of one episode, or one recorded before each episode's evaluations were (`run_evals`) under a score
    other than final (its first run's score is then unknown: NaN, not the final score beside another)."""
    runs = unit.get("runs") or []
    if len(runs) < 2:
        return []
    if parse_score(score)[0] == "final":
        return list(runs)
    run_evals = unit.get("run_evals") or []
    if len(run_evals) != len(runs):
        return [math.nan] * len(runs)
    return [_scored(evals, final, score) for evals, final in zip(run_evals, runs, strict=True)]


def episode_score(result: Any) -> float:
    """An episode's final `info["score"]`; for an env of others that reports none, its undiscounted
    return. A score reported as NaN stays NaN (dropped from the statistics, and `n` shows it), never
    a return averaged in with other seeds' scores."""
    if "score" not in result.final_info:
        return float(np.sum(result.rewards))
    return float(result.final_info["score"])


def summarise(
    results: list[dict], baseline: str, score: str = "final"
) -> dict[str, dict[str, dict[str, Any]]]:
    """summary[env][controller]: n, mean, sd, 95% CI, Welch p vs `baseline` (two-sided, and one-sided
    `p_greater` for mean above the baseline's; NaN for itself), regret vs
    the oracle (mock env, oracle in the run; else NaN), mean alpha of the last episode, seconds per unit
    and the per-seed scores (`finals`, under `score`: see `unit_score`). Controllers keep their order
    of first appearance."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in results:
        groups.setdefault(r["env"], {}).setdefault(r["controller"], []).append(r)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for env, by_ctl in groups.items():
        finals = {
            ctl: [unit_score(r, score) for r in sorted(rs, key=lambda r: r["seed"])]
            for ctl, rs in by_ctl.items()
        }
        oracle = mean_ci(finals["oracle"])[0] if env == "mock" and "oracle" in finals else math.nan
        summary[env] = {}
        for ctl, rs in by_ctl.items():
            x = finite_values(finals[ctl])
            mean, low, high = mean_ci(x)
            ordered = sorted(rs, key=lambda r: r["seed"])
            scored = [run_scores(r, score) or [math.nan] for r in ordered]  # per seed, per episode
            if any(len(r.get("runs") or []) > 1 and math.isnan(s[0]) for r, s in zip(ordered, scored)):
                # a unit recorded before each episode's evaluations were (a resumed older bench): run 1
                # over the other seeds only would sit beside a mean over all of them, unsaid
                scored = [[math.nan] for _ in ordered]
            first, last = [s[0] for s in scored], [s[-1] for s in scored]
            tested = ctl != baseline and baseline in finals
            base = finite_values(finals[baseline]) if tested else np.array([])
            constant = tested and len(x) > 1 and len(base) > 1 and is_constant(x) and is_constant(base)
            summary[env][ctl] = {
                "n": len(x),
                "mean": mean,
                "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "p_value": welch_p(x, finals[baseline]) if tested else math.nan,
                "p_greater": welch_p(x, finals[baseline], "greater") if tested else math.nan,
                # both constant over seeds (fixed exposures, the oracle on the mock): no test, and the
                # difference of the means is exact
                "p_note": "both constant" if constant else "",
                "regret": oracle - mean,
                # several episodes a unit (learned state kept): the first's score (under `score`), and the
                # paired one-sided p that the last episode ends below the first (the learner degrades)
                "run1_mean": float(np.mean(finite_values(first))) if np.isfinite(first).any() else math.nan,
                "p_worse": paired_p(last, first, "less"),
                # every seed moved by the same from run 1 (a deterministic controller): no test, exact
                "p_worse_note": "constant difference" if paired_exact(last, first) else "",
                "alpha_mean": float(np.mean([r["alpha_mean"] for r in rs])),
                "seconds": float(np.mean([r["seconds"] for r in rs])),
                "seeds": [r["seed"] for r in sorted(rs, key=lambda r: r["seed"])],
                "finals": finals[ctl],
                "scored_by": "return" if any(r.get("scored_by") == "return" for r in rs) else "score",
            }
    return summary


def curve_bands(results: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """bands[env][controller]: per window of the last episode, from window 0 (its start) on, the mean
    score over seeds and its 95% CI (NaN where no seed has a finite score: the real env between
    evaluations)."""
    groups: dict[str, dict[str, list[list[float]]]] = {}
    for r in results:
        groups.setdefault(r["env"], {}).setdefault(r["controller"], []).append(r["curve"])
    bands: dict[str, dict[str, dict[str, list[float]]]] = {}
    for env, by_ctl in groups.items():
        bands[env] = {}
        for ctl, curves in by_ctl.items():
            width = max(len(c) for c in curves)
            grid = np.full((len(curves), width), np.nan)  # (seeds, windows)
            for i, c in enumerate(curves):
                grid[i, : len(c)] = c
            cols = [mean_ci(grid[:, w]) for w in range(width)]
            bands[env][ctl] = {key: [c[i] for c in cols] for i, key in enumerate(("mean", "low", "high"))}
    return bands


# ---- output ----------------------------------------------------------------------------------------
def new_run_dir(out: Path, name: str) -> Path:
    """A new <out>/bench__<name>__<YYYYmmdd-HHMMSS>[-k] directory; an existing one is never reused."""
    return fresh_dir(out, f"bench__{name}__{time.strftime('%Y%m%d-%H%M%S')}")


# ---- the command -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fields = "\n".join(f"  {key} = {default}    {help_}" for key, default, help_ in describe())
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (set any with --set key=value; env, controller and seed come from the options):"
        f"\n{fields}",
    )
    parser.add_argument(
        "--controllers",
        default="",
        help="comma list of specs: name or name:key=value[:key=value] (default: every registered one)",
    )
    parser.add_argument(
        "--env",
        default="mock",
        help="comma list of mock, real, or registered Gymnasium ids with the exposure action space",
    )
    parser.add_argument(
        "--env-set",
        dest="env_overrides",
        action="append",
        default=[],
        help="key=value for gymnasium.make of every env given by id, e.g. --env-set lambda_gt=1",
    )
    parser.add_argument("--seeds", default="5", help="N: seeds 0..N-1; A-B: seeds A..B inclusive (default 5)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (0 = in this process); with 2 or more, each runs torch on one thread on the "
        "real env unless threads is set (--set threads=N or in --config), which each worker then uses",
    )
    parser.add_argument("--baseline", default="fixed", help="controller spec the p-values test against")
    parser.add_argument(
        "--score",
        default="final",
        help="what a unit scores: final (the last evaluation), best (the best evaluation of the last "
        "episode: OPSD's best checkpoint) or tail:K (the mean of its last K evaluations; on the real env "
        "evaluations come every real.env.eval_every windows and at the end)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, action=Once, help="YAML file of RunConfig fields (once)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="override, e.g. episodes=5"
    )
    parser.add_argument("--out", type=Path, default=None, help="parent of the run directory (default: runs)")
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a bench directory stopped before its results: run only the units its units.jsonl lacks",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def _split(text: str) -> list[str]:
    """Comma-separated items; a comma inside brackets stays (`fixed:alphas=[0.75,0.25],random`)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth <= 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


# run config keys a bench sets per unit from its options: a --set of one would be overwritten unread
UNIT_KEYS = {"env": "--env", "controller": "--controllers", "seed": "--seeds"}


def plan(args: argparse.Namespace) -> tuple[RunConfig, list[str], list[str], list[str]]:
    """(config, envs, controller specs, notes) from the command line; ConfigError on anything unusable."""
    given = cfglib.parse_overrides(list(args.overrides))
    for key, option in UNIT_KEYS.items():
        if key in given:
            raise cfglib.ConfigError(
                f"--set {key}={given[key]}: bench.py sets {key} for each unit from {option}; give it there"
            )
    overrides = cfglib.command_overrides(list(args.overrides), {"name": args.name})
    # the shared settings: each unit is checked against its own env below, not the default env (real);
    # their local paths absolute, so that a --resume from another directory reads the same files
    cfg = absolute_paths(cfglib.load(EnvFreeRunConfig, args.config, overrides))
    # parallel workers share the cores: one torch thread each, unless threads was asked for (--set or
    # --config), which each worker then uses (a 0 follows the free cores in each)
    if args.workers > 1 and "threads" not in cfglib.merge(
        cfglib.read_yaml(args.config) if args.config else {}, given
    ):
        cfg = dataclasses.replace(cfg, threads=1)
    envs = _split(args.env)
    if not envs:
        raise cfglib.ConfigError("--env names no env (choose from mock, real, or a Gymnasium id)")
    args.env_kwargs = cfglib.parse_overrides(args.env_overrides)
    if args.env_kwargs and all(env in ENVS for env in envs):
        raise cfglib.ConfigError(
            "--env-set applies to envs given by Gymnasium id; set mock.* or real.* with --set"
        )
    probes = {env: check_exposure_env(env, args.env_kwargs) for env in envs if env not in ENVS}
    # one row per spec: two spellings of one spec (spaces) would count its seeds twice
    controllers = list(dict.fromkeys(_normal(s) for s in _split(args.controllers))) or list(CONTROLLERS)
    args.baseline = _normal(args.baseline)
    notes = []
    try:
        kind, k = parse_score(args.score)
    except ValueError as err:
        raise cfglib.ConfigError(str(err)) from err
    windows = cfg.real.env.total_steps // cfg.real.env.hold_steps
    evals = 1 + (windows - 1) // cfg.real.env.eval_every if cfg.real.env.eval_every else 1
    if "real" in envs and kind != "final" and evals < (k if kind == "tail" else 2):
        notes.append(
            f"note: --score {args.score} on real sees {evals} evaluation(s) a run "
            f"(real.env.eval_every={cfg.real.env.eval_every})"
        )
    cfg_dict = cfglib.to_dict(cfg)
    args.baseline = _same_baseline(cfg_dict, controllers, args.baseline, notes)
    if args.baseline not in controllers:
        controllers.append(args.baseline)
        notes.append(f"note: added the baseline '{args.baseline}' to the controllers")
    for env in envs:
        for spec in controllers:
            if env != "mock" and parse_spec(spec)[0] in MOCK_ONLY:
                notes.append(f"note: '{spec}' runs on the mock env only; skipped on {env}")
                continue
            try:  # fail now, not after the warm start: unknown names and keys, bad values
                check_spec(cfg_dict, env, spec, cfg.seed, probes.get(env), args.env_kwargs)
            except ValueError as err:
                said = str(err).startswith(f"controller spec '{spec}'")  # parse_spec's own names it
                raise cfglib.ConfigError(str(err) if said else f"controller spec '{spec}': {err}") from err
    for probe in probes.values():
        probe.close()
    check_bank_dir(cfg)
    return cfg, envs, controllers, notes


def _same_baseline(cfg_dict: dict[str, Any], controllers: list[str], baseline: str, notes: list[str]) -> str:
    """The baseline as the listed spec that spells its run config (`fixed` is `fixed:alpha=1`, alpha's
    default), so it is that spec's row, not a row added beside it (which ran, and recorded into a
    bank, the same runs twice); the baseline itself where no listed spec is it."""
    if baseline in controllers:
        return baseline

    def resolved(spec: str) -> dict[str, Any] | None:
        try:
            return cfglib.to_dict(spec_config(cfg_dict, "mock", spec, 0))
        except (ValueError, KeyError):  # a bad spec: named by the checks that follow
            return None

    base = resolved(baseline)
    same = next((spec for spec in controllers if base is not None and resolved(spec) == base), None)
    if same is None:
        return baseline
    notes.append(f"note: the baseline '{baseline}' is the run config of '{same}'; tested against that row")
    return same


def _normal(spec: str) -> str:
    """A spec without spaces around its parts: the row label."""
    return ":".join(part.strip() for part in spec.split(":"))


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


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the run directory. Bad input prints one line and exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    STOPPED[:] = ["the bench stopped (its workers too); no results were written"]
    with user_errors(args.debug, lambda: STOPPED[-1]):
        argv = sys.argv[1:] if argv is None else argv
        return _resume(args, argv, parser) if args.resume is not None else _main(args, argv)


STOPPED = [""]  # what Ctrl-C says: what was kept, and how to go on


def _main(args: argparse.Namespace, argv: list[str]) -> Path:
    seeds = parse_seeds(args.seeds)
    cfg, envs, controllers, notes = plan(args)
    for note in notes:
        print(note)
    t0 = time.perf_counter()
    units = [
        (env, name, seed)
        for env in envs
        for name in controllers
        if not (env != "mock" and parse_spec(name)[0] in MOCK_ONLY)
        for seed in seeds
    ]
    cfg_dict = cfglib.to_dict(cfg)
    # the directory first: an unusable --out fails now, not after the warm start (minutes when it is
    # not cached) or hours of units
    run_dir = new_run_dir(args.out if args.out is not None else Path(cfg.out_dir), cfg.name)
    plan_record = {"command": ["recipes/bench.py", *argv], "envs": envs, "env_kwargs": args.env_kwargs,
                   "controllers": controllers, "seeds": seeds, "baseline": args.baseline, "score": args.score,
                   "config": cfg_dict, "units": units}  # fmt: skip
    write_atomic(run_dir / PLAN, json.dumps(json_safe(plan_record), indent=1))
    record_inputs(run_dir, cfg.real if "real" in envs else None, cfg.controller_init)
    with run_lock(run_dir, doing="benched"):  # a --resume of it meanwhile would run its units again
        return _guarded(run_dir, units, cfg, lambda: _bench(args, plan_record, cfg, units, {}, run_dir, t0))


def _guarded(run_dir: Path, units: list, cfg: RunConfig, bench: Any) -> Path:
    """Run `bench()`; on Ctrl-C or a failure before the results, keep the units that finished and
    say how to go on, or remove a directory that holds none (none that looks like some)."""
    try:
        if any(env == "real" for env, _, _ in units):
            warm_start_real(cfg)
        return bench()
    except BaseException as err:
        if not (run_dir / "results.json").exists():
            kept = len(read_records(run_dir / UNITS))
            if kept:
                STOPPED.append(
                    f"the bench stopped (its workers too); kept {kept} of {len(units)} units in "
                    f"{run_dir / UNITS}; go on with: python recipes/bench.py --resume {run_dir}"
                )
                if not isinstance(err, KeyboardInterrupt):  # Ctrl-C's line says it; a failure's, here
                    print(STOPPED[-1], file=sys.stderr, flush=True)
            else:
                discard_dir(run_dir)
        raise


def _resume(args: argparse.Namespace, argv: list[str], parser: argparse.ArgumentParser) -> Path:
    """--resume DIR: the units of DIR's plan that units.jsonl lacks, then the results."""
    run_dir = args.resume
    flags = {"controllers": "--controllers", "env": "--env", "env_overrides": "--env-set", "seeds": "--seeds",
             "baseline": "--baseline", "score": "--score", "config": "--config", "overrides": "--set",
             "out": "--out", "name": "--name"}  # fmt: skip
    given = [flag for key, flag in flags.items() if getattr(args, key) != parser.get_default(key)]
    if given:
        raise cfglib.ConfigError(
            f"--resume {run_dir} goes on with the bench's own settings; drop {', '.join(given)} (only "
            "--workers may change)"
        )
    if not (run_dir / PLAN).is_file():
        raise cfglib.ConfigError(f"--resume {run_dir}: not a bench directory (no {PLAN})")
    # two resumes at once both ran the units units.jsonl lacked, each recording them
    with run_lock(run_dir, doing="benched"):
        if (run_dir / "results.json").exists():
            print(f"{run_dir} is finished (results.json holds its results); nothing to resume")
            return run_dir
        changed = changed_inputs(run_dir)  # the units still to run would read what is there now
        if changed:
            raise cfglib.ConfigError(f"--resume {run_dir}: {changed}")
        plan_record = json.loads((run_dir / PLAN).read_text())
        units = [tuple(u) for u in plan_record["units"]]
        done = {(r["env"], r["controller"], r["seed"]): r for r in read_records(run_dir / UNITS)}
        print(f"resuming {run_dir}: {len(done)} of {len(units)} units recorded")
        cfg = cfglib.from_dict(EnvFreeRunConfig, plan_record["config"])
        args.baseline, args.score, args.env_kwargs = (
            plan_record["baseline"],
            plan_record["score"],
            plan_record["env_kwargs"],
        )
        plan_record["resumed"] = ["recipes/bench.py", *argv]
        _say_unit_warnings(plan_record["config"], [u for u in units if u not in done], args.env_kwargs)
        t0 = time.perf_counter()
        return _guarded(run_dir, units, cfg, lambda: _bench(args, plan_record, cfg, units, done, run_dir, t0))


def check_spec(cfg_dict: dict[str, Any], env: str, spec: str, seed: int, probe: Any, env_kwargs) -> None:
    """Build spec's controller for env as its units will (an env given by id: against `probe`, that env
    itself; mock and real: a stand-in with their spaces), raising what they would and warning what
    they would (`SAID_AT_CHECK`)."""
    unit_cfg = spec_config(cfg_dict, env, spec, seed)
    build_controller(unit_cfg, probe or _spaces(unit_cfg), env_key=unit_env_key(env, env_kwargs))


def _say_unit_warnings(cfg_dict: dict[str, Any], units: list[tuple[str, str, int]], env_kwargs) -> None:
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


def _bench(args, plan_record, cfg, units, done, run_dir, t0) -> Path:
    """The units not `done` (recorded: (env, spec, seed) -> result), then the table and the files."""
    cfg_dict, envs = plan_record["config"], plan_record["envs"]
    todo = [u for u in units if u not in done]
    fresh = run_units(
        cfg_dict,
        todo,
        args.workers,
        args.env_kwargs,
        keep=lambda r: append_record(run_dir / UNITS, r, strict=False),
    )
    done = done | dict(zip(todo, fresh))
    results = [done[u] for u in units]
    summary = summarise(results, args.baseline, args.score)
    wall = time.perf_counter() - t0
    print_table(summary, args.baseline, score=args.score)
    for env, name, start in sorted({(u["env"], u["controller"], u["controller_start"]) for u in results}):
        if start != OWN_CONFIG:  # a shipped prior (controller_init=auto) or a saved state
            print(f"{name} on {env}: {start}")
    write_csv(summary, run_dir / "results.csv")
    bands = curve_bands(results)
    record = {
        "command": plan_record["command"],
        **({"resumed": plan_record["resumed"]} if "resumed" in plan_record else {}),
        "commit": git_commit(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "envs": envs,
        "env_kwargs": args.env_kwargs,
        "controllers": plan_record["controllers"],
        "seeds": plan_record["seeds"],
        "baseline": args.baseline,
        "score": args.score,
        "workers": args.workers,
        "wall_s": wall,  # this invocation's (a resumed bench: the units it ran)
        "config": cfg_dict,
        "summary": summary,
        "curves": bands,
        "units": results,
    }
    write_atomic(run_dir / "results.json", json.dumps(json_safe(record), indent=1))
    if cfg.plots:  # written whole or not at all; the results are kept if it fails
        hold = {"mock": cfg.mock.hold_steps, "real": cfg.real.env.hold_steps}
        hold |= {env: 0 for env in envs if env not in ENVS}  # an env of others: its own step
        plot_curves(bands, hold, len(plan_record["seeds"]), run_dir / "curves.png")
    print(f"{len(todo)} units in {wall:.1f} s; wrote {run_dir}")
    return run_dir


if __name__ == "__main__":
    main()
