"""Fault injection for the reliability tests: with ATESD_FAULT=<point>:<n>, run.py SIGKILLs itself at
the n-th occurrence of a point in this process. Unset (always, outside tests), nothing happens.

Points: `update` (right after the n-th student update: mid-window when n is not a multiple of H),
`checkpoint` (the n-th checkpoint, after its state files are written and before its manifest seals
it), `sealed` (right after the n-th checkpoint is sealed), `eval` (as the n-th evaluation starts),
`final_model` (the final model written, before it takes its name), `plot` (after the n-th plot).
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

_counts: dict[str, int] = {}


def hit(point: str) -> None:
    """Count `point`; kill this process (no cleanup, as a crash) when ATESD_FAULT names it and this count."""
    spec = os.environ.get("ATESD_FAULT", "")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def before_seal(tmp_dir: Path) -> None:
    hit("checkpoint")


def install(engine) -> None:
    """Route the engine's updates and evaluations through `hit` when ATESD_FAULT is set."""
    if not os.environ.get("ATESD_FAULT"):
        return
    step, evaluate = engine.step, engine.evaluate

    @functools.wraps(step)
    def step_then_hit(*args, **kwargs):
        out = step(*args, **kwargs)
        hit("update")
        return out

    @functools.wraps(evaluate)
    def hit_then_evaluate(*args, **kwargs):
        hit("eval")
        return evaluate(*args, **kwargs)

    engine.step, engine.evaluate = step_then_hit, hit_then_evaluate
