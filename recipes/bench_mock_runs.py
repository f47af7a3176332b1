"""The controller family on the mock env over repeated runs (numbers go to docs/BENCHMARKS.md).

    python recipes/bench_mock_runs.py                 # ~95 s on one core (2026-12-06, ppo half of it)
    python recipes/bench_mock_runs.py --runs 1 2 5 10 20 --seeds 8

Every arm trains for max(--runs) runs of the default (rising) mock env, 100 windows each, its learned
state carried from run to run; printed: the mean and the sample sd (ddof = 1, as bench.py's) over
seeds of the competence at the end of each listed run. `tests/test_controllers_mock.py` checks the
issue's ranking on the same protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controllers import CONTROLLERS  # noqa: E402
from controllers.bandit import BanditConfig  # noqa: E402
from controllers.base import run_episode  # noqa: E402
from controllers.beta_reinforce import BetaReinforceConfig  # noqa: E402
from controllers.fixed import FixedConfig  # noqa: E402
from envs.mock_env import MockExposureEnv  # noqa: E402

ARMS = {
    "fixed_1": ("fixed", FixedConfig(alpha=1.0)),
    "random": ("random", None),
    "bandit_thompson": ("bandit", BanditConfig(kind="thompson")),
    "bandit_ucb": ("bandit", BanditConfig(kind="ucb")),
    "ppo": ("ppo", None),
    "beta_reinforce": ("beta_reinforce", None),
    "beta_reinforce_paper": ("beta_reinforce", BetaReinforceConfig(baseline="batch")),  # batch-mean baseline
    "beta_reinforce_immediate": ("beta_reinforce", BetaReinforceConfig(reward_mode="immediate")),
    "oracle": ("oracle", None),
}


def competence_after_runs(name: str, cfg, seed: int, runs: int, **env_kwargs) -> list[float]:
    """End-of-run competence for runs 1..`runs` of one controller (seeded by `seed`) on the mock."""
    cls, cfg_cls = CONTROLLERS[name]
    cfg = cfg if cfg is not None else cfg_cls()
    if "seed" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, seed=seed)
    env = MockExposureEnv(**env_kwargs)
    controller = cls(env.observation_space, env.action_space, cfg)
    return [
        float(run_episode(env, controller, seed=1000 * seed + run).final_info["score"]) for run in range(runs)
    ]


def run_stats(scores: np.ndarray, runs: list[int]) -> list[tuple[float, float]]:
    """(mean, sample sd with ddof = 1, as bench.py and sweep.py report it; NaN for one seed) over
    seeds of the end-of-run competence, for each listed run (1-based) of `scores` (seeds, runs)."""
    out = []
    for r in runs:
        column = scores[:, r - 1]
        out.append((float(column.mean()), float(column.std(ddof=1)) if len(column) > 1 else float("nan")))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="runs to report (1-based, >= 1)"
    )
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 (>= 1)")
    args = parser.parse_args(argv)
    if min(args.runs) < 1:
        parser.error(f"--runs must be >= 1 (run 1 is the first), got {min(args.runs)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    print(f"{'arm':26s}" + "".join(f"  run {r:>2d}        " for r in args.runs))
    for arm, (name, cfg) in ARMS.items():
        scores = np.array([competence_after_runs(name, cfg, s, max(args.runs)) for s in range(args.seeds)])
        cells = "".join(f"  {mean:.3f} ± {sd:.3f}   " for mean, sd in run_stats(scores, args.runs))
        print(f"{arm:26s}{cells}", flush=True)


if __name__ == "__main__":
    main()
