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
units.jsonl lacks (with `--workers` as given now), then writes the results as an uncut bench would
(with a bank_dir, a cut unit's bank file goes first: bank_files/ notes each unit's). One
process at a time works in it (a second one refuses, naming the first); the settings' local paths are
stored absolute, and a resume refuses a local data file or folder or controller_init state (inputs.json)
that changed since the bench started.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd.priors import absolute_path  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from controllers import CONTROLLERS  # noqa: E402
from recipes._bench_stats import curve_bands, parse_score, run_scores, summarise, unit_score  # noqa: E402
from recipes._bench_unit import (  # noqa: E402
    ENVS,
    SPEC_INIT,
    _spaces,
    check_exposure_env,
    check_specs,
    episode_score,
    outside_specs,
    parse_spec,
    run_unit,
    say_unit_warnings,
    spec_config,
    warm_start_real,
)
from recipes._plots import plot_curves  # noqa: E402
from recipes._progress import discard_dir, fresh_dir, progress, user_errors  # noqa: E402
from recipes._rundir import (  # noqa: E402
    append_record,
    changed_inputs,
    drop_noted_bank,
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
    Once,
    RunConfig,
    absolute_paths,
    check_bank_dir,
    describe,
)

# what tests and scripts take from bench; the unit of work and the statistics live in `_bench_unit` and
# `_bench_stats`, but `run_unit`, `run_units`, `warm_start_real` and `plot_curves` are looked up here,
# where a test replaces them
__all__ = ["_spaces", "build_parser", "curve_bands", "episode_score", "main", "plan", "run_scores",
           "run_unit", "run_units", "summarise", "unit_score", "warm_start_real"]  # fmt: skip


MAX_SEEDS = 100_000  # a bench's units are listed before any runs


def parse_seeds(text: str) -> list[int]:
    """`N` -> 0..N-1; `A-B` -> A..B inclusive; at most `MAX_SEEDS` seeds, each below 2**63."""
    first, sep, last = text.strip().partition("-")
    try:
        seeds = range(int(first), int(last) + 1) if sep else range(int(first))
    except ValueError:
        raise cfglib.ConfigError(f"--seeds must be N or A-B (inclusive), got '{text}'") from None
    if not seeds or seeds[0] < 0:
        raise cfglib.ConfigError(f"--seeds '{text}' gives no seeds (N >= 1, 0 <= A <= B)")
    if len(seeds) > MAX_SEEDS or seeds[-1] >= 2**63:  # a list of 10**12 seeds ended in a MemoryError
        raise cfglib.ConfigError(
            f"--seeds '{text}' gives {len(seeds)} seeds up to {seeds[-1]}: at most {MAX_SEEDS}, each "
            "below 2**63 (torch's generators take 64-bit seeds)"
        )
    return list(seeds)


def run_units(
    cfg_dict: dict[str, Any],
    units: list[tuple[str, str, int]],
    workers: int,
    env_kwargs: dict | None = None,
    keep: Any = None,
    run_dir: Path | None = None,
) -> list[dict]:
    """Every (env, controller, seed) unit, in this process (workers = 0) or a spawned process pool;
    results come back in the order of `units`, and `keep(result)` hears each as it finishes. With
    `run_dir` and a bank_dir, each unit notes its bank file there (`bank_note`)."""
    results: list[dict | None] = [None] * len(units)
    keep = keep or (lambda result: None)

    def note(unit: tuple[str, str, int]) -> str | None:
        return str(bank_note(run_dir, unit)) if run_dir is not None and cfg_dict.get("bank_dir") else None

    with progress("bench units", len(units)) as update:
        if workers == 0:
            for i, unit in enumerate(units):
                results[i] = run_unit(cfg_dict, *unit, env_kwargs, None, note(unit))
                keep(results[i])
                update(i + 1, "/".join(map(str, unit)))
            return results  # type: ignore[return-value]
        specs = outside_specs({env for env, _, _ in units})
        with worker_pool(workers) as pool:  # workers die with this process; Ctrl-C stops them at once
            futures = {
                pool.submit(run_unit, cfg_dict, *unit, env_kwargs, specs.get(unit[0]), note(unit)): i
                for i, unit in enumerate(units)
            }
            for done, fut in enumerate(cf.as_completed(futures), start=1):
                results[futures[fut]] = fut.result()
                keep(results[futures[fut]])
                update(done, "/".join(map(str, units[futures[fut]])))
    return results  # type: ignore[return-value]


PLAN, UNITS = "plan.json", "units.jsonl"
BANK_NOTES = "bank_files"  # per unit, the bank file it records into (bank_dir)


def bank_note(run_dir: Path, unit: tuple[str, str, int]) -> Path:
    """Where `unit` of the bench in `run_dir` notes the bank file it records into."""
    key = hashlib.sha1(json.dumps(list(unit)).encode()).hexdigest()[:16]
    return run_dir / BANK_NOTES / f"{key}.txt"


def drop_cut_banks(run_dir: Path, units: list[tuple[str, str, int]]) -> None:
    """Remove the bank files that `units` (cut before their records) began: run again, their windows
    would be in the bank twice, the cut episode and its rerun (a bank file's tag names the controller
    and seed, not the spec, so the bank cannot tell them apart itself)."""
    for unit in units:
        drop_noted_bank(bank_note(run_dir, unit))


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
    cfg = _settings(args)
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
    controllers = _distinct(cfg_dict, controllers, notes)
    args.baseline = _same_baseline(cfg_dict, controllers, args.baseline, notes)
    if args.baseline not in controllers:
        controllers.append(args.baseline)
        notes.append(f"note: added the baseline '{args.baseline}' to the controllers")
    check_specs(cfg_dict, envs, controllers, cfg.seed, probes, args.env_kwargs, notes)
    for probe in probes.values():
        probe.close()
    check_bank_dir(cfg)
    return cfg, envs, controllers, notes


def _settings(args: argparse.Namespace) -> RunConfig:
    """The shared settings from --config, --set and --name; ConfigError for a --set of a key, or one in
    the --config file, that each unit takes from an option (`UNIT_KEYS`: the file's was dropped
    unread, and results.json recorded it as if it had run)."""
    given = cfglib.parse_overrides(list(args.overrides))
    in_file = cfglib.read_yaml(args.config) if args.config else {}
    for key, option in UNIT_KEYS.items():
        if key in given:
            raise cfglib.ConfigError(
                f"--set {key}={given[key]}: bench.py sets {key} for each unit from {option}; give it there"
            )
        if key in in_file:
            raise cfglib.ConfigError(
                f"{args.config} sets {key}: {in_file[key]}, but bench.py sets {key} for each unit from "
                f"{option}: remove it from the file and give it there"
            )
    overrides = cfglib.command_overrides(list(args.overrides), {"name": args.name})
    # the shared settings: each unit is checked against its own env (`plan`), not the default env (real);
    # their local paths absolute, so that a --resume from another directory reads the same files
    cfg = absolute_paths(cfglib.load(EnvFreeRunConfig, args.config, overrides))
    # parallel workers share the cores: one torch thread each, unless threads was asked for (--set or
    # --config), which each worker then uses (a 0 follows the free cores in each)
    if args.workers > 1 and "threads" not in cfglib.merge(in_file, given):
        cfg = dataclasses.replace(cfg, threads=1)
    if cfg.tensorboard:  # was taken and ignored: no events, no word
        where = "--set tensorboard" if "tensorboard" in given else f"{args.config} sets tensorboard"
        raise cfglib.ConfigError(
            f"{where}=true, but bench.py writes no TensorBoard events (each unit's record goes to "
            "units.jsonl and results.json); run.py writes them for one run"
        )
    return cfg


def _resolved(cfg_dict: dict[str, Any], spec: str) -> dict[str, Any] | None:
    """The run config `spec` spells (None for a bad spec: named by the checks that follow)."""
    try:
        return cfglib.to_dict(spec_config(cfg_dict, "mock", spec, 0))
    except (ValueError, KeyError):
        return None


def _distinct(cfg_dict: dict[str, Any], controllers: list[str], notes: list[str]) -> list[str]:
    """The specs, one per run config: `fixed:alpha=.75` beside `fixed:alpha=0.75` (or `fixed` beside
    `fixed:alpha=1`) ran the same runs twice, as two rows; the first spelling is kept, and said."""
    kept: list[tuple[str, dict[str, Any] | None]] = []
    for spec in controllers:
        mine = _resolved(cfg_dict, spec)
        same = next((other for other, theirs in kept if mine is not None and theirs == mine), None)
        if same is None:
            kept.append((spec, mine))
        else:
            notes.append(f"note: '{spec}' is the run config of '{same}'; one row, '{same}'")
    return [spec for spec, _ in kept]


def _same_baseline(cfg_dict: dict[str, Any], controllers: list[str], baseline: str, notes: list[str]) -> str:
    """The baseline as the listed spec that spells its run config (`fixed` is `fixed:alpha=1`, alpha's
    default), so it is that spec's row, not a row added beside it (which ran, and recorded into a
    bank, the same runs twice); the baseline itself where no listed spec is it."""
    if baseline in controllers:
        return baseline
    base = _resolved(cfg_dict, baseline)
    same = next(
        (spec for spec in controllers if base is not None and _resolved(cfg_dict, spec) == base), None
    )
    if same is None:
        return baseline
    notes.append(f"note: the baseline '{baseline}' is the run config of '{same}'; tested against that row")
    return same


def _normal(spec: str) -> str:
    """A spec as its row label: no spaces around its parts or their `=` (`fixed:alpha = 0.75` was the
    key 'alpha '), and an `init=` path absolute, so that a resume from another directory reads the
    same saved state (and inputs.json records it: a state changed since was read unnoticed)."""
    parts = []
    for i, part in enumerate(spec.split(":")):
        key, sep, value = (text.strip() for text in part.partition("="))
        if i and sep and key == SPEC_INIT and value.lower() not in ("", "auto", "none"):
            value = absolute_path(value)
        parts.append(f"{key}={value}" if sep else key)
    return ":".join(parts)


def spec_inits(controllers: list[str]) -> list[str]:
    """The saved states the specs' `init=` name (none, auto: none here)."""
    inits = [
        o.partition("=")[2]
        for spec in controllers
        for o in parse_spec(spec)[1]
        if o.startswith("controller_init=")
    ]
    return [init for init in inits if init.lower() not in ("", "auto", "none")]


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
    if not units:  # every spec mock-only on another env: the table of no rows ended in a traceback
        raise cfglib.ConfigError(
            f"no units to run: {', '.join(controllers)} run on the mock env only, and --env is "
            f"{', '.join(envs)}"
        )
    cfg_dict = cfglib.to_dict(cfg)
    # the directory first: an unusable --out fails now, not after the warm start (minutes when it is
    # not cached) or hours of units
    run_dir = new_run_dir(args.out if args.out is not None else Path(cfg.out_dir), cfg.name)
    plan_record = {"command": ["recipes/bench.py", *argv], "envs": envs, "env_kwargs": args.env_kwargs,
                   "controllers": controllers, "seeds": seeds, "baseline": args.baseline, "score": args.score,
                   "config": cfg_dict, "units": units}  # fmt: skip
    write_atomic(run_dir / PLAN, json.dumps(json_safe(plan_record), indent=1))
    inits = [cfg.controller_init, *spec_inits(controllers)]  # a resume refuses one changed since
    record_inputs(run_dir, cfg.real if "real" in envs else None, inits)
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
    # a flag given at its default value (`--seeds 5`) was let through and silently ignored
    written = {word.split("=", 1)[0] for word in argv if word.startswith("--")}
    default = {key: parser.get_default(key) for key in flags}
    given = [flag for key, flag in flags.items() if flag in written or getattr(args, key) != default[key]]
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
        plan_record = _read_plan(run_dir)
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
        say_unit_warnings(plan_record["config"], [u for u in units if u not in done], args.env_kwargs)
        t0 = time.perf_counter()
        return _guarded(run_dir, units, cfg, lambda: _bench(args, plan_record, cfg, units, done, run_dir, t0))


def _read_plan(run_dir: Path) -> dict[str, Any]:
    """DIR's plan.json; ConfigError naming it where it does not read or lacks what a resume reads (a
    damaged one gave a bare KeyError: 'units', or JSON's line and column without the file)."""
    path = run_dir / PLAN
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise cfglib.ConfigError(
            f"--resume {run_dir}: {path} does not read ({err}); start the bench again"
        ) from None
    keys = ("units", "config", "baseline", "score", "env_kwargs", "envs")
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise cfglib.ConfigError(
            f"--resume {run_dir}: {path} lacks {', '.join(missing)}; start the bench again"
        )
    return record


def _bench(args, plan_record, cfg, units, done, run_dir, t0) -> Path:
    """The units not `done` (recorded: (env, spec, seed) -> result), then the table and the files."""
    cfg_dict, envs = plan_record["config"], plan_record["envs"]
    todo = [u for u in units if u not in done]
    drop_cut_banks(run_dir, todo)
    fresh = run_units(
        cfg_dict,
        todo,
        args.workers,
        args.env_kwargs,
        keep=lambda r: append_record(run_dir / UNITS, r, strict=False),
        run_dir=run_dir,
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
