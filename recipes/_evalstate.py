"""eval.py's saved state: what a stopped evaluation keeps, and how `--resume` continues it.

An evaluation directory holds problems.jsonl (one line per problem done, appended a chunk at a time
and fsynced) and, after each chunk, sampling_state.json (problems done, seconds spent, the device
and the sampling generator's state), replaced atomically. Resuming cuts problems.jsonl back to the
count the state holds and restores the generator, so the rest is sampled as if never stopped.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from pathlib import Path
from typing import Any

import torch

from atesd import config as cfglib
from atesd.state import write_atomic
from atesd.tasks.base import Problem

PROBLEMS, SUMMARY = "problems.jsonl", "summary.json"
STATE = "sampling_state.json"  # problems done, and the sampling generator after them: what --resume reads


def save_state(run_dir: Path, done: int, total: int, seconds: float, generator: torch.Generator) -> None:
    """The state after `done` of `total` problems (their lines already fsynced), atomically."""
    raw = generator.get_state().numpy().tobytes()
    state = {"problems_done": done, "problems": total, "seconds": seconds, "device": generator.device.type,
             "generator": base64.b64encode(raw).decode()}  # fmt: skip
    write_atomic(run_dir / STATE, json.dumps(state))


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """`run_dir`'s saved sampling state; None where it has none (no chunk finished yet)."""
    path = run_dir / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise cfglib.ConfigError(f"--resume {run_dir}: {STATE} is not readable JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("problems_done"), int):
        raise cfglib.ConfigError(f"--resume {run_dir}: {STATE} holds no count of problems done")
    return state


def restore(
    run_dir: Path, state: dict[str, Any], items: list[tuple[str, int, Problem]], generator: torch.Generator
) -> tuple[int, float]:
    """Sets `generator` to its state after the last finished chunk and cuts problems.jsonl back to
    the problems `state` counts (a line written after it, or torn by a crash, is dropped); returns
    (problems done, seconds spent). ConfigError where `state` cannot continue this evaluation."""
    done, where = state["problems_done"], f"--resume {run_dir}"
    if state.get("problems") != len(items) or not 0 < done <= len(items):
        raise cfglib.ConfigError(
            f"{where}: {STATE} counts {done} of {state.get('problems')} problems; this evaluation has "
            f"{len(items)} (did the task's data change?)"
        )
    if state.get("device") != generator.device.type:
        device = state.get("device")
        raise cfglib.ConfigError(
            f"{where}: it was sampled on {device}, this run samples on {generator.device.type}; continue it "
            f"on {device} with: python recipes/eval.py --resume {shlex.quote(str(run_dir))} "
            f"real.device={device}"
        )
    try:
        raw = base64.b64decode(state["generator"], validate=True)
        generator.set_state(torch.tensor(list(raw), dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise cfglib.ConfigError(f"{where}: {STATE} holds no usable generator state ({err})") from None
    for k, (record, (name, i, problem)) in enumerate(zip(read_records(run_dir / PROBLEMS, done), items)):
        if (record.get("set"), record.get("index"), record.get("question")) != (name, i, problem.question):
            raise cfglib.ConfigError(
                f"{where}: line {k + 1} of {PROBLEMS} is not problem {name}/{i} of this task (did the "
                "task's data change?)"
            )
    return done, float(state.get("seconds", 0.0))


def read_records(path: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` lines of problems.jsonl, parsed; what follows them (lines written after the
    last saved state, a line torn by a crash) is cut off the file."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")[:-1]  # whole lines: after the last newline is nothing or a torn line
    if len(lines) < count:
        raise cfglib.ConfigError(f"{path} holds {len(lines)} whole lines, not the {count} problems done")
    keep = sum(len(line) + 1 for line in lines[:count])
    if keep < len(data):
        with path.open("r+b") as fh:
            fh.truncate(keep)
            os.fsync(fh.fileno())
    try:
        return [json.loads(line) for line in lines[:count]]
    except ValueError as err:
        raise cfglib.ConfigError(f"{path} holds a line that is not JSON ({err})") from None
