"""How each grounded score moves with the exposure alone: one batch, the weights fixed, alpha swept.

    python recipes/grounded_vs_alpha.py            # the embedded default's warm start, 32 rollouts
    python recipes/grounded_vs_alpha.py --batches 4

The paper's grounded score (`real.engine.grounded_by=teacher`) is the teacher's log-prob of the gold
answer after the student's reasoning, with the reference revealed at the window's alpha, so it moves
with alpha whatever the student learns. On the embedded default it falls as alpha rises (by about
0.15 nats from alpha 0 to 1, docs/BENCHMARKS.md): a teacher shown more of the reference is less sure
of the gold answer after the student's own reasoning, whose chain is not the reference's. A reward
that weights it therefore charges for exposure by itself. `teacher_fixed` (the teacher at
`grounded_alpha`) and `student` (the student on its own prompt) read the same rollouts without the
window's alpha, so at fixed weights they cannot move with it. Prints one row per alpha.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import embedded_engine  # noqa: E402

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MODES = ("teacher", "teacher_fixed", "student")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batches", type=int, default=1, help="batches of 32 rollouts (each its own seed; >= 1)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (>= 1)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    engine, source = embedded_engine(args.threads)
    print(f"{source}; {args.batches} x {engine.cfg.batch_size} rollouts, weights fixed")
    scores = {m: {a: [] for a in ALPHAS} for m in MODES}
    for b in range(args.batches):
        problems = engine.task.sample(np.random.default_rng(b), engine.cfg.batch_size)
        batch = engine.rollout(problems, torch.Generator().manual_seed(b))
        for mode in MODES:
            engine.cfg = dataclasses.replace(engine.cfg, grounded_by=mode)
            for alpha in ALPHAS:
                scores[mode][alpha].append(engine.batch_loss(batch, alpha)[1])
    print("alpha  " + "  ".join(f"{m:>13s}" for m in MODES))
    for alpha in ALPHAS:
        print(f"{alpha:5.2f}  " + "  ".join(f"{np.mean(scores[m][alpha]):13.4f}" for m in MODES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
