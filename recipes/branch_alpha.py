"""Which exposure helps most at each stage of a run: branch every alpha from the same training state.

    python recipes/branch_alpha.py --seeds 100-103                       # ~15 min on 2 cores
    python recipes/branch_alpha.py --seeds 100-101 --stages 0,10 --alphas 0.5,0.75,1

A learned or scheduled exposure can beat the best fixed one only if the best alpha moves during a
run (or differs between states the controller can see). This measures that directly, without the
between-run noise of whole-run comparisons. For each seed the embedded default's student (the
shipped warm start, the default engine) trains at the base exposure (`--base`, 0.75: the sweep's
best fixed alpha) and, at each stage (a window index: `--stages`, windows of 5 updates), its whole
state (weights, optimiser, generators) is copied; from that copy every alpha in `--alphas` trains
`--branch-windows` windows on the same problems and the same sampling stream (common random
numbers), and the greedy accuracy over the four evaluation bands is measured at the branch's end.
The table gives, per stage, each alpha's accuracy gain over the stage's start and its paired
difference to the base alpha's branch (mean over seeds, one-sided paired t-test p for "better than
the base"). Writes runs/branch_alpha/branch_alpha.json. The probe and the grounded score are off
(they feed controllers and change no update).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import embedded_engine  # noqa: E402

HOLD = 5  # updates per window: the env's default H


def seed_list(text: str) -> list[int]:
    """ "A-B" (inclusive) or "N" (0..N-1), as bench.py reads --seeds."""
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-", 1))
        if hi < lo:
            raise SystemExit(f"error: --seeds {text}: the range is empty")
        return list(range(lo, hi + 1))
    return list(range(int(text)))


def floats(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or any(not 0 <= a <= 1 for a in out):
        raise SystemExit(f"error: alphas must be numbers in [0, 1], got {text!r}")
    return out


def mean_accuracy(engine) -> float:
    return float(np.mean(list(engine.evaluate().values())))


def run_seed(
    seed: int, base: float, alphas: list[float], stages: list[int], branch: int, threads: int
) -> dict:
    engine, source = embedded_engine(threads)
    engine.cfg = dataclasses.replace(engine.cfg, probe_every=0, grounded=False)
    engine.reseed(seed)
    out = {"seed": seed, "source": source, "stages": {}}
    window = 0
    for stage in stages:
        while window < stage:  # the base trajectory up to this stage
            engine.run_window(base, HOLD)
            window += 1
        snapshot = engine.state_dict()
        start = mean_accuracy(engine)
        row = {"start": start, "after": {}}
        for alpha in alphas:
            engine.load_state_dict(snapshot)
            engine.reseed(10_000 * seed + stage)  # every branch of this stage: the same problems and draws
            for _ in range(branch):
                engine.run_window(alpha, HOLD)
            row["after"][alpha] = mean_accuracy(engine)
        engine.load_state_dict(snapshot)  # the base trajectory goes on from where it was
        out["stages"][stage] = row
        print(
            f"seed {seed} stage {stage:2d} (update {stage * HOLD:3d}) start {start:.3f}  "
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="100-103", help='"A-B" inclusive, or N for 0..N-1')
    parser.add_argument("--base", type=float, default=0.75, help="exposure of the trajectory between stages")
    parser.add_argument("--alphas", default="0.25,0.5,0.75,1", help="exposures branched at each stage")
    parser.add_argument("--stages", default="0,5,10,15", help="window indices to branch at (of 20)")
    parser.add_argument("--branch-windows", type=int, default=2, help="windows each branch trains")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/branch_alpha")
    args = parser.parse_args(argv)
    alphas = floats(args.alphas)
    if args.base not in alphas:
        alphas = sorted([*alphas, args.base])
    stages = sorted({int(s) for s in args.stages.split(",")})
    if stages[0] < 0 or args.branch_windows < 1:
        raise SystemExit("error: stages must be >= 0 and --branch-windows >= 1")
    t0 = time.perf_counter()
    runs = [
        run_seed(s, args.base, alphas, stages, args.branch_windows, args.threads)
        for s in seed_list(args.seeds)
    ]
    rows = summarise(runs, args.base, alphas, stages)
    print(f"\ngain in mean greedy accuracy over {args.branch_windows} windows from each stage; "
          f"vs base: paired difference to alpha {args.base:g} (mean, sd; one-sided paired t p)")  # fmt: skip
    print("stage  alpha   gain     vs base    sd      p(better)")
    for r in rows:
        print(f"{r['stage']:5d}  {r['alpha']:5.2f}  {r['gain']:+.3f}   {r['vs_base']:+.3f}   "
              f"{r['sd_vs_base']:.3f}   {r['p_better']:.3g}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "alphas": alphas, "stages": stages, "runs": runs, "summary": rows,
              "seconds": time.perf_counter() - t0}  # fmt: skip
    (out / "branch_alpha.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'branch_alpha.json'} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
