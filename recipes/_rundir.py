"""A run's directory and what an invocation of run.py will do with it: a new run, or `--resume`
(the newest matching directory or the one named, its stored config, its newest intact checkpoint)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from atesd import checkpoint
from atesd import config as cfglib
from recipes._progress import fresh_dir, print_summary
from recipes.common import RunConfig, resolved_dict

SUMMARY = "summary.json"


def new_run_dir(cfg: RunConfig) -> Path:
    """`<out_dir>/<controller>__<name>__<seed>__<time>`, with a numeric suffix if that exists already."""
    stem = f"{cfg.controller}__{cfg.name}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        return fresh_dir(Path(cfg.out_dir), stem)
    except OSError as err:
        raise OSError(f"cannot create a run directory under out_dir={cfg.out_dir}: {err}") from err


def latest_run_dir(cfg: RunConfig) -> Path | None:
    """The newest run directory of this controller, name and seed, or None."""
    root = Path(cfg.out_dir)
    if not root.is_dir():
        return None
    runs = [
        p for p in root.glob(f"{cfg.controller}__{cfg.name}__{cfg.seed}__*") if (p / "config.json").exists()
    ]
    return max(runs, key=lambda p: (p / "config.json").stat().st_mtime) if runs else None


# ---- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int, before_seal=None) -> Path:
    """`checkpoints/ckpt-<window>/`, written atomically and sealed by a checksum manifest."""
    return checkpoint.save(run_dir / "checkpoints", state["loop"]["global_window"], state, keep, before_seal)


class Plan(NamedTuple):
    """What this invocation trains: a new run, or the run `--resume` names and its checkpoint."""

    cfg: RunConfig
    run_dir: Path | None = None  # None: a new run directory
    state: dict | None = None  # the checkpoint's state to resume from
    checkpoint: Path | None = None  # its directory
    finished: bool = False  # the run named had finished: nothing to do


def world_mismatch(written: int, world: int) -> str:
    return (f"the checkpoint was written by {written} process(es); resume it with the same number "
            f"(torchrun --nproc_per_node {written}), not {world}")  # fmt: skip


def plan_run(args: Any, cfg: RunConfig) -> Plan:
    """This invocation's plan: a new run, or the run `--resume` names with its stored config and
    newest intact checkpoint."""
    if not args.resume:
        return Plan(cfg)
    run_dir = latest_run_dir(cfg) if args.resume == "auto" else Path(args.resume)
    if run_dir is None:
        print(f"--resume auto: no earlier {cfg.controller}/{cfg.name}/seed {cfg.seed} run; starting fresh")
        return Plan(cfg)
    if not (run_dir / "config.json").exists():
        raise cfglib.ConfigError(f"--resume {run_dir}: not a run directory (no config.json)")
    if (run_dir / SUMMARY).exists():
        print(f"{run_dir} already finished; nothing to resume")
        print_summary(json.loads((run_dir / SUMMARY).read_text()))
        return Plan(cfg, run_dir, finished=True)
    stored = cfglib.from_dict(RunConfig, json.loads((run_dir / "config.json").read_text()))
    if args.resume == "auto" or args.config or args.overrides or args.set:
        differ = differences(resolved_dict(stored), resolved_dict(cfg))
        if differ and args.resume != "auto":
            raise cfglib.ConfigError(f"--resume {run_dir}: the given config differs from the run's: {differ}")
        if differ:
            raise cfglib.ConfigError(
                f"--resume auto found {run_dir}, whose config differs from the given one in "
                f"{differ}; resume it with --resume DIR and no overrides, or start a new run with "
                "another name"
            )
    found = checkpoint.load_latest(run_dir / "checkpoints", warn=lambda msg: print(f"warning: {msg}"))
    resume_state, ckpt = found if found is not None else (None, None)
    if resume_state is None:
        print(f"{run_dir} has no checkpoint yet; restarting it from the beginning")
        for name in ("metrics.jsonl", "decisions.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        print(f"resuming {run_dir} at window {resume_state['loop']['global_window']}")
    return Plan(stored, run_dir, resume_state, ckpt)


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{key}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            out.append(f"{prefix}{key}")
    return out
