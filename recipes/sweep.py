"""The fixed-exposure sweep: alpha in {0, .25, .5, .75, 1} x seeds on the embedded default.

    python recipes/sweep.py --seeds 5                      # the paper's sweep, ~22 min on 2 cores
    python recipes/sweep.py --seeds 3 --set real.engine.exposure.reference=path_matched   # the control

Warm-starts (or loads the cached) tiny model, trains one run per (alpha, seed) in worker processes,
and reports per band: greedy accuracy before/after, mismatch (mean KL(student||teacher) and top-1
disagreement at the run's alpha), and three checks: (a) the mismatch rises with alpha in every
seed, (b) which alphas beat alpha = 1 (OPSD) and (c) which beat alpha = 0 by more than two seed sds.
Every config field can be overridden with --set key.path=value.

Each sweep gets its own directory: --out DIR (default runs/sweep), or DIR-1, DIR-2, ... when
DIR exists. It holds config.json and seeds.json (written first: the config and the seed count a
resume keeps), runs.jsonl (a line per finished run, written as each run finishes, so Ctrl-C or a
crash keeps them) and, at the end, sweep.json (the config, the seed count, the summary and every run
in (seed, alpha) order) and sweep.png. `--resume DIR` goes on with the sweep in DIR: its config, only
the runs runs.jsonl lacks.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import eq
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd.builder import RealConfig, build_engine  # noqa: E402
from atesd.engine import EngineConfig  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from recipes._plots import savefig_whole  # noqa: E402
from recipes._progress import discard_dir, fresh_dir, progress, user_errors, warmstart_progress  # noqa: E402
from recipes._rundir import (  # noqa: E402
    append_record,
    changed_inputs,
    read_records,
    record_inputs,
    run_lock,
)
from recipes._tables import json_safe  # noqa: E402
from recipes._workers import worker_pool  # noqa: E402
from recipes.common import Once, absolute_paths, refuse_run_config  # noqa: E402

RUNS = "runs.jsonl"  # a line per finished run, appended as it finishes
C = TypeVar("C")


@dataclass(frozen=True)
class SweepConfig:
    """One fixed-exposure sweep."""

    # the same `real.*` sections as run.py, bench.py and eval.py; the sweep needs neither the probe NLL
    # nor the grounded score (they feed controllers), so its engine skips both by default
    real: RealConfig = field(
        default_factory=lambda: RealConfig(engine=EngineConfig(probe_every=0, grounded=False))
    )
    alphas: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "exposures to sweep"}
    )
    steps: int = field(default=150, metadata={"help": "student updates per run (>= 1)"})
    mismatch_size: int = field(
        default=64, metadata={"help": "problems per band for the mismatch measurement"}
    )
    threads: int = field(default=1, metadata={"help": "torch threads per worker process"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.mismatch_size < 1 or self.threads < 1:
            raise ValueError("steps, mismatch_size and threads must be >= 1")
        if not self.alphas or any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"alphas must be non-empty and in [0, 1], got {self.alphas}")
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must not repeat, got {self.alphas}")


def run_one(cfg_dict: dict, alpha: float, seed: int) -> dict:
    """One training run at a fixed alpha (executes in a worker process; the warm start is cached)."""
    import torch

    cfg = cfglib.from_dict(SweepConfig, cfg_dict)
    torch.set_num_threads(cfg.threads)
    engine = build_engine(cfg.real, seed)
    task = engine.task
    gen = torch.Generator(device=engine.student.device).manual_seed(10_000 + seed)  # where sampling runs
    bands = {b: ps[: cfg.mismatch_size] for b, ps in task.eval_sets().items()}
    t0 = time.perf_counter()
    mismatch_start = {b: engine.mismatch(alpha, ps, gen) for b, ps in bands.items()}
    trace = []
    for _ in range(cfg.steps):
        s = engine.step(alpha)
        trace.append(
            {
                "loss": s.loss,
                "probe_nll": s.probe_nll,
                "mismatch_top1": s.mismatch_top1,
                "acc": s.rollout_accuracy,
            }
        )
    final = engine.evaluate()
    mismatch_end = {b: engine.mismatch(alpha, ps, gen) for b, ps in bands.items()}
    return {
        "alpha": alpha,
        "seed": seed,
        "final": final,
        "mismatch_start": mismatch_start,
        "mismatch_end": mismatch_end,
        "trace": trace,
        "seconds": time.perf_counter() - t0,
    }


def summarise(results: list[dict], alphas: tuple[float, ...], bands: list[str]) -> dict:
    """Mean/sd per (band, alpha) and the three checks of the sweep; the per-seed accuracies (`acc`)
    are in seed order, whatever the order of `results`."""
    results = sorted(results, key=lambda r: (r["seed"], r["alpha"]))
    table: dict = {}
    for band in bands:
        row = {}
        for a in alphas:
            rs = [r for r in results if r["alpha"] == a]
            # dtype float: a NaN recorded as null in runs.jsonl reads back as NaN, as a fresh run has it
            acc = np.array([r["final"][f"accuracy/{band}"] for r in rs], dtype=float) * 100
            ok = acc[np.isfinite(acc)]  # a seed whose evaluation came out NaN is left out, not averaged in
            row[a] = {
                "acc_mean": ok.mean() if len(ok) else math.nan,
                "acc_sd": ok.std(ddof=1) if len(ok) > 1 else math.nan,  # one seed: no sd
                "n": len(ok),
                "kl": np.mean(np.array([r["mismatch_start"][band]["kl"] for r in rs], dtype=float)),
                "top1": np.mean(np.array([r["mismatch_start"][band]["top1"] for r in rs], dtype=float)),
                "acc": acc.tolist(),
            }
        table[band] = row
    checks = {
        band: {
            "mismatch_monotone_every_seed": _monotone_every_seed(results, alphas, band),
            "alphas_beating_1": _beating(table[band], alphas, 1.0),
            "alphas_beating_0": _beating(table[band], alphas, 0.0),
        }
        for band in bands
    }
    return {"table": table, "checks": checks}


def _monotone_every_seed(results: list[dict], alphas: tuple[float, ...], band: str) -> bool | None:
    """Both mismatch measures strictly increase with alpha within every seed (None: nothing to compare,
    one alpha or a measure that came out NaN)."""
    if len(alphas) < 2:
        return None
    by_key = {(r["seed"], r["alpha"]): r["mismatch_start"][band] for r in results}
    for seed in {r["seed"] for r in results}:
        for measure in ("kl", "top1"):
            values = np.array([by_key[(seed, a)][measure] for a in sorted(alphas)], dtype=float)
            if np.isnan(values).any():
                return None
            if np.any(np.diff(values) <= 0):
                return False
    return True


def _beating(row: dict, alphas: tuple[float, ...], ref: float) -> list[float] | None:
    """Alphas whose mean accuracy beats alpha=ref by more than two seed standard deviations (the
    larger of the two arms' sds); None when the check cannot be made: alpha=ref is not swept, or an
    arm has fewer than 2 seeds with a finite accuracy (no sd: any higher mean would pass)."""
    if ref not in row or any(row[a].get("n", len(row[a]["acc"])) < 2 for a in alphas):
        return None
    return [
        a
        for a in alphas
        if a != ref
        and row[a]["acc_mean"] - row[ref]["acc_mean"] > 2 * max(row[a]["acc_sd"], row[ref]["acc_sd"])
    ]


def _sd(sd: float) -> str:
    return "n/a" if math.isnan(sd) else f"{sd:.1f}"


def print_start(start: dict, teacher_start: dict) -> None:
    """Greedy accuracy of the warm-started model from the student prompt and the teacher's at each alpha."""
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title="warm-started model: greedy accuracy % from the student prompt and the teacher prompt at alpha"
    )
    t.add_column("band")
    t.add_column("student", justify="right")
    for a in teacher_start:
        t.add_column(f"teacher {a:g}", justify="right")
    for key, value in start.items():
        t.add_row(
            key.split("/")[1],
            f"{100 * value:.1f}",
            *(f"{100 * teacher_start[a][key]:.1f}" for a in teacher_start),
        )
    Console().print(t)


def print_report(summary: dict, start: dict, alphas: tuple[float, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for band, row in summary["table"].items():
        t = Table(title=f"band {band} (start accuracy {100 * start[f'accuracy/{band}']:.1f}%)")
        for col in ("alpha", "accuracy % (mean +- sd)", "KL(S||T) at start", "top-1 disagree at start"):
            t.add_column(col, justify="right")
        for a in alphas:
            c = row[a]
            t.add_row(
                f"{a:g}", f"{c['acc_mean']:.1f} +- {_sd(c['acc_sd'])}", f"{c['kl']:.3f}", f"{c['top1']:.3f}"
            )
        console.print(t)
        ck = summary["checks"][band]
        na = {  # what `_beating` lacked: the reference alpha, or 2 seeds with a finite accuracy per alpha
            r: "n/a (needs >= 2 seeds per alpha)" if r in alphas else f"n/a (needs alpha={r} in the sweep)"
            for r in (1, 0)
        }
        beat1, beat0 = (
            na[r] if ck[f"alphas_beating_{r}"] is None else ck[f"alphas_beating_{r}"] for r in (1, 0)
        )
        rises = ck["mismatch_monotone_every_seed"]
        rises = "n/a (one alpha, or a NaN measure)" if rises is None else rises
        console.print(
            f"  (a) mismatch rises with alpha in every seed: {rises}   "
            f"(b) alphas beating alpha=1 by > 2 sd: {beat1}   "
            f"(c) alphas beating alpha=0 by > 2 sd: {beat0}"
        )


def plot(summary: dict, start: dict, alphas: tuple[float, ...], path: Path) -> None:
    from recipes._plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for i, (band, row) in enumerate(summary["table"].items()):
        color = f"C{i}"
        means = [row[a]["acc_mean"] for a in alphas]
        sds = [0.0 if math.isnan(row[a]["acc_sd"]) else row[a]["acc_sd"] for a in alphas]  # one seed: none
        axes[0].errorbar(alphas, means, yerr=sds, marker="o", capsize=3, color=color, label=band)
        axes[0].axhline(100 * start[f"accuracy/{band}"], color=color, ls=":", lw=1)
        axes[1].plot(alphas, [row[a]["kl"] for a in alphas], marker="o", color=color, label=band)
        axes[2].plot(alphas, [row[a]["top1"] for a in alphas], marker="o", color=color, label=band)
    axes[0].set(
        xlabel="teacher exposure alpha",
        ylabel="final greedy accuracy (%)",
        title="Accuracy per band after training (mean +- sd; dotted: start)",
    )
    axes[1].set(
        xlabel="teacher exposure alpha",
        ylabel="mean KL(student || teacher) per token",
        title="Mismatch at the start: KL",
    )
    axes[2].set(
        xlabel="teacher exposure alpha", ylabel="fraction of positions", title="Mismatch at the start: top-1"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    savefig_whole(fig, path, dpi=110)  # a kill while it draws leaves no half-written PNG
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    fields = "\n".join(f"  {k} = {d}    {h}" for k, d, h in cfglib.describe(SweepConfig))
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        epilog=f"config fields (set any with --set key=value):\n{fields}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per alpha (0..N-1; default 5, a resume: the sweep's)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (1 = in process)")
    parser.add_argument(
        "--config", type=Path, default=None, action=Once, help="YAML file of SweepConfig fields (once)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="override, e.g. steps=50"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the sweep's directory, or DIR-1, DIR-2, ... if DIR exists (default: runs/sweep)",
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="go on with the sweep in DIR (its config)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    if (args.seeds is not None and args.seeds < 1) or args.workers < 1:
        parser.error("--seeds and --workers must be >= 1")
    if args.resume is not None and args.out is not None:
        parser.error("--resume DIR goes on in DIR: give no --out")
    with user_errors(args.debug, "the sweep stopped before its runs started"):
        refuse_run_config(args.config, SweepConfig, "sweep.py")
        if args.resume is not None:
            cfg, out = resume_config(SweepConfig, args.resume, args.config, args.overrides), args.resume
        else:  # its local paths absolute: a --resume from another directory reads the same files
            cfg = absolute_paths(cfglib.load(SweepConfig, args.config, args.overrides))
            out = args.out if args.out is not None else Path("runs/sweep")
            out = fresh_dir(out.parent, out.name)  # a bad --out fails now; an existing one is never reused
            (out / "config.json").write_text(json.dumps(cfglib.to_dict(cfg), indent=1))
            record_inputs(out, cfg.real)
        seeds = seeds_for(out, args.seeds, 5, fresh=args.resume is None)
        with run_lock(out, doing="swept"):  # a second --resume of a running sweep would run its runs again
            changed = changed_inputs(out) if args.resume is not None else None
            if changed:  # the runs still to run would read what is there now
                raise cfglib.ConfigError(f"--resume {out}: {changed}")
            return run_sweep(cfg, seeds, args.workers, out, fresh=args.resume is None, debug=args.debug)


def seeds_for(out: Path, given: C | None, default: C, fresh: bool, same: Callable[[C, C], bool] = eq) -> C:
    """The --seeds of the experiment in `out`: when fresh, `given` (else `default`), recorded in
    out/seeds.json; on a resume the recorded value, which a given --seeds must equal (`same`):
    ConfigError in one line otherwise. Also used by branch_alpha.py."""
    path = out / "seeds.json"
    if fresh:
        seeds = default if given is None else given
        write_atomic(path, json.dumps({"seeds": seeds}))
        return seeds
    try:
        recorded = json.loads(path.read_text())["seeds"]
    except FileNotFoundError:  # a directory from before the seeds were recorded
        return default if given is None else given
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise cfglib.ConfigError(f"--resume {out}: {path.name} does not read ({err})") from None
    valid = type(recorded) is type(default) and (not isinstance(recorded, int) or recorded >= 1)
    if not valid:  # a hand-edited or damaged file: it failed later in range() or `in`
        raise cfglib.ConfigError(
            f"--resume {out}: {path.name} holds seeds {recorded!r}, which this recipe never writes"
        )
    if given is not None and not same(given, recorded):
        raise cfglib.ConfigError(
            f"--resume {out}: it was started with --seeds {recorded}, not {given}; go on with --resume "
            "DIR alone, or start anew"
        )
    return recorded


def resume_config(cls: type[C], run_dir: Path, config: Path | None, overrides: list[str]) -> C:
    """The config (a `cls`) that `run_dir` was started with, from its config.json; ConfigError in one
    line where there is none, or where a config given on the command line differs from it (the keys
    named). Also used by branch_alpha.py."""
    try:
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        cfg = cfglib.from_dict(cls, stored)
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        raise cfglib.ConfigError(f"--resume {run_dir}: no usable config.json ({message})") from None
    if config is not None or overrides:  # what is given goes on top of the directory's own config
        base = cfglib.merge(stored, cfglib.read_yaml(config)) if config is not None else stored
        given = cfglib.from_dict(cls, cfglib.merge(base, cfglib.parse_overrides(overrides)))
        # local paths compared as absolute paths here: a new sweep's config.json holds them so
        differ = cfglib.differences(
            cfglib.to_dict(absolute_paths(cfg)), cfglib.to_dict(absolute_paths(given))
        )
        if differ:
            raise cfglib.ConfigError(
                f"--resume {run_dir}: the given config differs from the one it was started with in "
                f"{', '.join(differ)}; go on with --resume DIR alone, or start anew"
            )
    return cfg


def run_sweep(cfg: SweepConfig, seeds: int, workers: int, out: Path, fresh: bool, debug: bool = False) -> int:
    """Every (alpha, seed) run that `out`/runs.jsonl lacks, then the report, sweep.json and sweep.png.
    Ctrl-C or a failure keeps the finished runs and says how to go on (a fresh sweep with none
    finished leaves no directory)."""
    jobs = [(a, s) for s in range(seeds) for a in cfg.alphas]
    recorded = {(r["alpha"], r["seed"]): r for r in read_records(out / RUNS)}
    beyond = sorted({s for _, s in recorded if s >= seeds})
    if beyond:
        raise cfglib.ConfigError(
            f"--resume {out}: it holds runs of seed {beyond[-1]}; give --seeds {beyond[-1] + 1} or more"
        )
    results = [recorded[j] for j in jobs if j in recorded]
    if not fresh:
        if len(results) == len(jobs) and (out / "sweep.json").exists():
            print(f"{out} is finished (sweep.json holds its results); nothing to resume")
            return 0
        print(f"resuming {out}: {len(results)} of {len(jobs)} runs recorded")
    else:
        print(f"sweep directory: {out}", flush=True)
    try:
        return _sweep(cfg, seeds, workers, out, jobs, results)
    except BaseException as err:  # Ctrl-C and crashes too: keep the finished runs, say how to go on
        stopped(
            err,
            out,
            fresh,
            (len(results), len(jobs), "runs"),
            f"sweep.py --resume {out} --seeds {seeds}",
            debug,
        )
        raise


def stopped(
    err: BaseException, out: Path, fresh: bool, kept: tuple[int, int, str], command: str, debug: bool
) -> None:
    """After Ctrl-C or a failure while `out` filled its runs.jsonl: a fresh directory with nothing
    kept is removed; else one line says what was kept ((done, total, "runs")) and the `command` that
    goes on (recipes/<command>). Ctrl-C exits 130 (without `debug`); a failure returns, for the
    caller to re-raise. Also used by branch_alpha.py."""
    done, total, noun = kept
    if fresh and not done:
        discard_dir(out)
        line = f"no {noun[:-1]} had finished; removed {out}"
    else:
        line = f"kept {done} of {total} {noun} in {out / RUNS}; go on with: python recipes/{command}"
    if isinstance(err, KeyboardInterrupt) and not debug:
        print(f"interrupted: {line}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    print(line, file=sys.stderr, flush=True)


def _sweep(
    cfg: SweepConfig, seeds: int, workers: int, out: Path, jobs: list[tuple[float, int]], results: list[dict]
) -> int:
    """The sweep proper: `results` (the runs recorded already) grows as each run finishes."""
    import torch

    torch.set_num_threads(max(1, workers * cfg.threads))
    t0 = time.perf_counter()
    bar = warmstart_progress()  # once here, the workers read the cache; a bar only when it trains
    try:
        engine = build_engine(cfg.real, cfg.real.engine.seed, bar)
    finally:
        bar.close()
    print(f"warm start ready ({time.perf_counter() - t0:.0f} s)")
    task = engine.task
    start = engine.evaluate()
    teacher_start = {a: engine.evaluate(teacher_alpha=a) for a in cfg.alphas}
    print_start(start, teacher_start)
    done = {(r["alpha"], r["seed"]) for r in results}

    def keep(run: dict) -> None:
        append_record(out / RUNS, run)
        results.append(run)

    run_jobs(cfglib.to_dict(cfg), [j for j in jobs if j not in done], workers, keep)
    results.sort(key=lambda r: (r["seed"], r["alpha"]))
    bands = list(task.eval_sets())
    summary = summarise(results, cfg.alphas, bands)
    print_report(summary, start, cfg.alphas)
    record = {
        "config": cfglib.to_dict(cfg),
        "seeds": seeds,
        "start": start,
        "teacher_start": teacher_start,
        "summary": summary,
        "runs": results,
        "wall_s": time.perf_counter() - t0,  # this invocation's (a resumed sweep: the part it ran)
    }
    plot(summary, start, cfg.alphas, out / "sweep.png")  # first: sweep.json marks the sweep finished
    write_atomic(out / "sweep.json", json.dumps(json_safe(record), indent=1))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'} in {record['wall_s'] / 60:.1f} min")
    return 0


def run_jobs(
    cfg_dict: dict, jobs: list[tuple[float, int]], workers: int, keep: Callable[[dict], None]
) -> None:
    """Every (alpha, seed) run, in worker processes (spawned: each loads the cached warm start itself);
    `keep` gets each run's result as soon as it finishes."""
    finished = 0
    with progress("sweep runs", len(jobs)) as update:
        if workers <= 1:
            for a, s in jobs:
                keep(run_one(cfg_dict, a, s))
                finished += 1
                update(finished, f"alpha={a:g} seed={s}")
            return
        with worker_pool(workers) as pool:  # workers die with this process; Ctrl-C stops them at once
            futures = [pool.submit(run_one, cfg_dict, a, s) for a, s in jobs]
            for fut in cf.as_completed(futures):
                run = fut.result()
                keep(run)
                finished += 1
                update(finished, f"alpha={run['alpha']:g} seed={run['seed']}")


if __name__ == "__main__":
    raise SystemExit(main())
