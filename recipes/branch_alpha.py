"""Which exposure helps most at each stage of a run: branch every alpha from the same training state.

    python recipes/branch_alpha.py --seeds 100-105                       # ~30 min on 2 cores
    python recipes/branch_alpha.py --seeds 100-101 --set stages=[0,10] --set alphas=[0.5,0.75,1]
    python recipes/branch_alpha.py --seeds 100-101 --set real.engine.lr=3e-4   # any real.* key

A learned or scheduled exposure can beat the best fixed one only if the best alpha moves during a
run (or differs between states the controller can see). This measures that directly, without the
between-run noise of whole-run comparisons. For each seed the student of `real.*` (by default the
embedded default: the shipped warm start, the default engine) trains at the base exposure (`base`,
0.75: the sweep's best fixed alpha) and, at each stage (a window index: `stages`, windows of
`hold_steps` updates), its whole state (weights, optimiser, generators) is copied; from that copy
every alpha in `alphas` trains `branch_windows` windows on the same problems and the same sampling
stream (common random numbers), and the greedy accuracy over the evaluation bands is measured at the
branch's end. Every field can be set with `--set key=value` or a YAML file (`--config`).
The table gives, per stage, each alpha's accuracy gain over the stage's start and its paired
difference to the base alpha's branch (mean over seeds, one-sided paired t-test p for "better than
the base"). The probe and the grounded score are off by default (they feed controllers and change
no update).

Each experiment gets its own directory: --out DIR (default runs/branch_alpha), or DIR-1, DIR-2,
... when DIR exists. It holds config.json (written first), runs.jsonl (a line per finished seed,
written as each seed finishes, so Ctrl-C or a crash keeps them) and, at the end, branch_alpha.json
(the config, the seeds, every seed's run and the table); its local paths (a data file, a model
folder, the cache) are stored absolute, and inputs.json records the size and sha256 of each input file.
`--resume DIR` goes on with the experiment in DIR, from any directory: its config, only the seeds
runs.jsonl lacks; it refuses a data file or model changed since the start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd.builder import RealConfig, build_engine  # noqa: E402
from atesd.engine import EngineConfig  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from recipes._progress import fresh_dir, user_errors  # noqa: E402
from recipes._rundir import append_record, changed_inputs, read_records, record_inputs, run_lock  # noqa: E402
from recipes._tables import json_safe  # noqa: E402
from recipes.common import Once, absolute_paths, refuse_run_config  # noqa: E402
from recipes.sweep import RUNS, resume_config, seeds_for, stopped  # noqa: E402


@dataclass(frozen=True)
class BranchConfig:
    """One branching experiment (the `real.*` sections as in run.py, bench.py and sweep.py)."""

    real: RealConfig = field(
        default_factory=lambda: RealConfig(engine=EngineConfig(probe_every=0, grounded=False))
    )
    base: float = field(default=0.75, metadata={"help": "exposure of the trajectory between stages"})
    alphas: tuple[float, ...] = field(
        default=(0.25, 0.5, 0.75, 1.0), metadata={"help": "exposures branched at each stage (base added)"}
    )
    stages: tuple[int, ...] = field(default=(0, 5, 10, 15), metadata={"help": "window indices to branch at"})
    branch_windows: int = field(default=2, metadata={"help": "windows each branch trains (>= 1)"})
    hold_steps: int = field(default=5, metadata={"help": "updates per window, H (>= 1)"})
    threads: int = field(default=2, metadata={"help": "torch threads (>= 1)"})

    def __post_init__(self) -> None:
        if not 0 <= self.base <= 1 or not self.alphas or any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"base and alphas must be in [0, 1], got {self.base} and {self.alphas}")
        if not self.stages or min(self.stages) < 0:
            raise ValueError(f"stages must be non-empty window indices >= 0, got {self.stages}")
        for name in ("branch_windows", "hold_steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def seed_list(text: str) -> list[int]:
    """ "A-B" (inclusive) or "N" (0..N-1), as bench.py reads --seeds; ValueError when it gives none."""
    try:
        lo, hi = (int(x) for x in text.split("-", 1)) if "-" in text else (0, int(text) - 1)
    except ValueError:
        raise ValueError(f"--seeds must be N or A-B, got {text!r}") from None
    if hi < lo:
        raise ValueError(f"--seeds {text} gives no seeds")
    return list(range(lo, hi + 1))


def mean_accuracy(engine) -> float:
    return float(np.mean(list(engine.evaluate().values())))


def run_seed(cfg: BranchConfig, seed: int) -> dict:
    import torch

    torch.set_num_threads(cfg.threads)
    engine = build_engine(cfg.real, seed)
    alphas = sorted({*cfg.alphas, cfg.base})
    out = {"seed": seed, "stages": {}}
    window = 0
    for stage in sorted(set(cfg.stages)):
        while window < stage:  # the base trajectory up to this stage
            engine.run_window(cfg.base, cfg.hold_steps)
            window += 1
        snapshot = engine.state_dict()
        start = mean_accuracy(engine)
        row = {"start": start, "after": {}}
        for alpha in alphas:
            engine.load_state_dict(snapshot)
            engine.reseed(10_000 * seed + stage)  # every branch of this stage: the same problems and draws
            for _ in range(cfg.branch_windows):
                engine.run_window(alpha, cfg.hold_steps)
            row["after"][alpha] = mean_accuracy(engine)
        engine.load_state_dict(snapshot)  # the base trajectory goes on from where it was
        out["stages"][stage] = row
        print(
            f"seed {seed} stage {stage:2d} (update {stage * cfg.hold_steps:3d}) start {start:.3f}  "
            + "  ".join(f"{a:g}: {row['after'][a] - start:+.3f}" for a in alphas),
            flush=True,
        )
    return out


def summarise(runs: list[dict], base: float, alphas: list[float], stages: list[int]) -> list[dict]:
    rows = []
    for stage in stages:
        gains = {a: np.array([r["stages"][stage]["after"][a] - r["stages"][stage]["start"] for r in runs])
                 for a in alphas}  # fmt: skip
        for a in alphas:
            diff = gains[a] - gains[base]
            p = float("nan")
            if a != base and len(diff) > 1 and np.std(diff) > 0:
                p = float(sps.ttest_rel(gains[a], gains[base], alternative="greater").pvalue)
            rows.append({"stage": stage, "alpha": a, "gain": float(gains[a].mean()),
                         "vs_base": float(diff.mean()), "sd_vs_base": float(diff.std(ddof=1)) if len(diff) > 1
                         else float("nan"), "p_better": p, "n": len(diff)})  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line; its epilog lists the BranchConfig fields that --set takes."""
    fields = "\n".join(f"  {k} = {d}    {h}" for k, d, h in cfglib.describe(BranchConfig))
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config fields (set any with --set key=value):\n{fields}",
    )
    parser.add_argument(
        "--seeds", default=None, help='"A-B" inclusive, or N for 0..N-1 (default 100-103; a resume: its own)'
    )
    parser.add_argument(
        "--config", type=Path, default=None, action=Once, help="YAML file of BranchConfig fields (once)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="override, e.g. base=0.5"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the experiment's directory, or DIR-1, DIR-2, ... if DIR exists (default: runs/branch_alpha)",
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="go on with the experiment in DIR")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def open_experiment(args: argparse.Namespace) -> tuple[BranchConfig, Path]:
    """The experiment's config and writable directory: --resume's own, or a fresh directory with
    config.json written first (a bad --seeds, --config or --out fails before any training)."""
    if args.seeds is not None:
        seed_list(args.seeds)  # a bad --seeds fails before a directory is made
    refuse_run_config(args.config, BranchConfig, "branch_alpha.py")
    if args.resume is not None:
        cfg, out = resume_config(BranchConfig, args.resume, args.config, args.overrides), args.resume
    else:  # its local paths absolute: a --resume from another directory reads the same files
        cfg = absolute_paths(cfglib.load(BranchConfig, args.config, args.overrides))
        out = args.out if args.out is not None else Path("runs/branch_alpha")
        out = fresh_dir(out.parent, out.name)  # a bad --out fails now, not after the training
        (out / "config.json").write_text(json.dumps(cfglib.to_dict(cfg), indent=1))
        record_inputs(out, cfg.real)  # a resume refuses a data file or model changed since
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out} is not writable")
    return cfg, out


def main(argv: list[str] | None = None) -> int:
    """Branch every seed (or go on with --resume), print the table and write branch_alpha.json."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None and args.out is not None:
        parser.error("--resume DIR goes on in DIR: give no --out")
    with user_errors(args.debug, "the branching stopped before its first seed started"):
        cfg, out = open_experiment(args)
        seeds_text = seeds_for(
            out, args.seeds, "100-103", args.resume is None, same=lambda a, b: seed_list(a) == seed_list(b)
        )
        seeds = seed_list(seeds_text)
        t0 = time.perf_counter()
        with run_lock(out, doing="branched"):  # a second --resume of a running one would run its seeds again
            changed = changed_inputs(out) if args.resume is not None else None
            if changed:  # the seeds still to run would read what is there now
                raise cfglib.ConfigError(f"--resume {out}: {changed}")
            runs = run_seeds(cfg, seeds, seeds_text, out, fresh=args.resume is None, debug=args.debug)
    if runs is None:
        return 0
    report(cfg, seeds, runs, out, t0)
    return 0


def report(cfg: BranchConfig, seeds: list[int], runs: list[dict], out: Path, t0: float) -> None:
    """Print the per-stage table and write branch_alpha.json (the config, the seeds, every seed's run,
    the table and the seconds since `t0`)."""
    alphas, stages = sorted({*cfg.alphas, cfg.base}), sorted(set(cfg.stages))
    rows = summarise(runs, cfg.base, alphas, stages)
    print(
        f"\ngain in mean greedy accuracy over {cfg.branch_windows} windows from each stage; "
        f"vs base: paired difference to alpha {cfg.base:g} (mean, sd; one-sided paired t p)"
    )
    print("stage  alpha   gain     vs base    sd      p(better)")
    for r in rows:
        print(
            f"{r['stage']:5d}  {r['alpha']:5.2f}  {r['gain']:+.3f}   {r['vs_base']:+.3f}   "
            f"{r['sd_vs_base']:.3f}   {r['p_better']:.3g}"
        )
    result = {"config": cfglib.to_dict(cfg), "seeds": seeds, "runs": runs, "summary": rows,
              "seconds": time.perf_counter() - t0}  # fmt: skip
    write_atomic(out / "branch_alpha.json", json.dumps(json_safe(result), indent=1))
    print(f"wrote {out / 'branch_alpha.json'} ({result['seconds']:.0f} s)")


def run_seeds(
    cfg: BranchConfig, seeds: list[int], seeds_text: str, out: Path, fresh: bool, debug: bool = False
) -> list[dict] | None:
    """Every seed's run, in seed order: those `out`/runs.jsonl holds read back, the others run and
    appended as each finishes; None when a resumed experiment is finished already. Ctrl-C or a
    failure keeps the finished seeds and says how to go on (a fresh experiment with none finished
    leaves no directory)."""
    recorded = {r["seed"]: from_record(r) for r in read_records(out / RUNS)}
    others = sorted(set(recorded) - set(seeds))
    if others:
        raise cfglib.ConfigError(
            f"--resume {out}: it holds seed {others[0]}, which --seeds {seeds_text} leaves out; "
            "give the seeds it was started with"
        )
    runs = [recorded[s] for s in seeds if s in recorded]
    if not fresh:
        if len(runs) == len(seeds) and (out / "branch_alpha.json").exists():
            print(f"{out} is finished (branch_alpha.json holds its results); nothing to resume")
            return None
        print(f"resuming {out}: {len(runs)} of {len(seeds)} seeds recorded", flush=True)
    else:
        print(f"branching directory: {out}", flush=True)
    try:
        for seed in seeds:
            if seed not in recorded:
                run = run_seed(cfg, seed)
                append_record(out / RUNS, run)
                runs.append(run)
    except BaseException as err:  # Ctrl-C and crashes too: keep the finished seeds, say how to go on
        command = f"branch_alpha.py --resume {out} --seeds {seeds_text}"
        stopped(err, out, fresh, (len(runs), len(seeds), "seeds"), command, debug)
        raise
    return sorted(runs, key=lambda r: r["seed"])


def from_record(record: dict) -> dict:
    """A seed's run as `run_seed` returns it from its runs.jsonl line (JSON made its stage and alpha
    keys text)."""
    stages = {
        int(stage): {"start": row["start"], "after": {float(a): acc for a, acc in row["after"].items()}}
        for stage, row in record["stages"].items()
    }
    return {"seed": record["seed"], "stages": stages}


if __name__ == "__main__":
    raise SystemExit(main())
