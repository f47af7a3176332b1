"""One training run of one exposure controller, with live progress, logs, checkpoints and plots.

    python recipes/run.py --controller beta_reinforce                # the embedded default (real env)
    python recipes/run.py --controller bandit --env mock             # the mock env: seconds
    python recipes/run.py --config recipes/configs/tiny.yaml real.engine.lr=3e-4 --seed 1
    python recipes/run.py --controller beta_reinforce --resume auto  # continue the latest such run

Any config field can be set by its dotted key, as `key=value` arguments or `--set key=value`; the
fields, their defaults and their ranges are listed by --help. A run writes
`runs/<controller>__<name>__<seed>__<time>/`: config.json (the resolved config), metrics.jsonl (every
student update and every window, namespaced keys), decisions.jsonl (every decision: alpha, Beta a/b,
reward terms; and each decision's return and advantage once the controller used it), checkpoints/,
plots/*.png and summary.json. A run directory is never overwritten; `--resume auto` continues the
latest unfinished run with the same controller, name and seed from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import checkpoint  # noqa: E402
from atesd import config as cfglib  # noqa: E402
from atesd.distributed import Dist, gather_state  # noqa: E402
from controllers.base import Transition, run_episode  # noqa: E402
from controllers.shared import SharedDecisions  # noqa: E402
from recipes import _faults as faults  # noqa: E402
from recipes._progress import USER_ERRORS, fresh_dir, user_errors, warmstart_progress  # noqa: E402
from recipes.common import RunConfig, build_controller, build_env, describe, resolved_dict  # noqa: E402

SUMMARY = "summary.json"


# ---- the run directory -------------------------------------------------------------------------
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


class NullLines:
    """Where the logs of a non-zero torchrun rank go."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def offset(self) -> int:
        return 0

    def truncate(self, offset: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLines:
    """An append-only JSON-lines file, flushed per line; `truncate(offset)` drops lines after a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        self.file.flush()

    def offset(self) -> int:
        return self.file.tell()

    def truncate(self, offset: int) -> None:
        self.file.truncate(offset)
        self.file.seek(offset)

    def close(self) -> None:
        self.file.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _finite(value: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


# ---- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int, before_seal=None) -> Path:
    """`checkpoints/ckpt-<window>/`, written atomically and sealed by a checksum manifest."""
    return checkpoint.save(run_dir / "checkpoints", state["loop"]["global_window"], state, keep, before_seal)


def rng_state() -> dict[str, Any]:
    """The process-wide RNGs (python, numpy's legacy global, torch's CPU generator and, on a GPU, the
    current device's: LoRA dropout on the GPU draws from it)."""
    import torch

    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": list(np.random.get_state()),
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8))


# ---- live display -------------------------------------------------------------------------------
class Display:
    """A rich progress bar with the run's vital signs on a terminal; plain lines (at most one per
    second, and the last window) otherwise."""

    def __init__(self, total: int, title: str, done: int = 0, quiet: bool = False) -> None:
        from rich.console import Console

        self.console = Console()
        self.total, self.t0, self.done0, self.last_line = total, time.perf_counter(), done, 0.0
        self.bar, self.quiet = None, quiet
        if quiet:
            return
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(title, total=total, completed=done, note="")
        else:
            print(f"{title}: {total} windows ({done} done)", flush=True)

    def update(self, done: int, note: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, note=note)
            return
        now = time.perf_counter()
        if now - self.last_line >= 1.0 or done == self.total:
            self.last_line = now
            rate = (now - self.t0) / max(done - self.done0, 1)
            eta = rate * (self.total - done)
            print(f"window {done}/{self.total} {note} ({now - self.t0:.0f} s, eta {eta:.0f} s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---- the run ------------------------------------------------------------------------------------
class Run:
    """Owns one run directory: builds the env and controller, drives the episodes, logs, checkpoints."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path | None,
        resume: dict[str, Any] | None = None,
        dist: Dist | None = None,
    ) -> None:
        import torch

        self.cfg, self.run_dir = cfg, run_dir
        self.dist = dist or Dist.single()
        self.main = self.dist.is_main  # under torchrun only rank 0 logs, checkpoints and plots
        torch.set_num_threads(cfg.threads)
        progress = _warmstart_progress(cfg) if self.main else None
        self.env = build_env(cfg, warmstart_progress=progress, dist=self.dist)
        self.controller = build_controller(cfg, self.env)
        if cfg.env == "real":
            faults.install(self.env.unwrapped.engine)
        if self.dist.active:
            self.controller = SharedDecisions(self.controller, self.dist.is_main, self.dist.broadcast_float)
        self.windows_per_episode = math.ceil(cfg.total_steps / cfg.hold_steps)
        self.total_windows = self.windows_per_episode * cfg.episodes
        self.metrics = JsonLines(run_dir / "metrics.jsonl") if self.main else NullLines()
        self.decisions = JsonLines(run_dir / "decisions.jsonl") if self.main else NullLines()
        self.loop = {"episode": 0, "window": 0, "global_window": 0, "updates": 0, "obs": None, "seconds": 0.0}
        self.tb = _tensorboard(run_dir) if cfg.tensorboard and self.main else None
        if resume is not None:
            ranks = resume["ranks"] if "ranks" in resume else [{"rng": resume["rng"], "engine": None}]
            if len(ranks) != self.dist.world_size:  # (under torchrun `_main` has checked it on every rank)
                raise cfglib.ConfigError(_world_mismatch(len(ranks), self.dist.world_size))
            self.controller.load_state_dict(resume["controller"])
            if resume["env"] is not None:
                self.env.unwrapped.load_state_dict(resume["env"])
            self.loop = resume["loop"]
            mine = ranks[self.dist.rank]  # each rank's own problem stream, sampler and global RNGs
            if mine.get("engine") is not None:
                self.env.unwrapped.engine.load_rank_state(mine["engine"])
            set_rng_state(mine["rng"])
            self.metrics.truncate(int(resume["offsets"]["metrics"]))
            self.decisions.truncate(int(resume["offsets"]["decisions"]))

    def train(self) -> dict[str, Any]:
        cfg, loop = self.cfg, self.loop
        title = f"{cfg.controller} on {cfg.env}"
        self.display = Display(self.total_windows, title, done=loop["global_window"], quiet=not self.main)
        t_start = time.perf_counter() - loop["seconds"]
        try:
            for episode in range(loop["episode"], cfg.episodes):
                mid = loop["obs"] is not None and loop["episode"] == episode and loop["window"] > 0
                start = (np.asarray(loop["obs"], dtype=np.float32), loop["window"]) if mid else None
                loop["episode"] = episode
                self.t_start = t_start
                run_episode(
                    self.env,
                    self.controller,
                    seed=1000 * cfg.seed + episode,
                    start=start,
                    on_step=self.on_step,
                )
        finally:
            self.display.close()
            self.metrics.close()
            self.decisions.close()
            if self.tb is not None:
                self.tb.close()
        summary = self.summary(time.perf_counter() - t_start)
        engine = self.env.unwrapped.engine if cfg.env == "real" else None
        # FSDP: every rank helps gather the whole weights; rank 0 writes them
        weights = gather_state(engine.student)[0] if engine is not None and engine.sharded else None
        if self.main and engine is not None:  # the trained student (with LoRA: its adapter) and tokenizer
            final = self.run_dir / "final_model"
            extra = {} if weights is None else {"state_dict": weights}
            engine.student.save_pretrained(final, safe_serialization=True, **extra)
            engine.tokenizer.save_pretrained(final)
            summary["final_model"] = str(final)
        if self.main:
            (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=1, default=_jsonable))
        return summary

    def on_step(self, step: int, tr: Transition) -> None:
        cfg, loop, info = self.cfg, self.loop, tr.info
        loop["window"], loop["global_window"] = step, loop["global_window"] + 1
        gw, episode = loop["global_window"], loop["episode"]
        for j, stats in enumerate(info.get("step_stats") or _steps_from_losses(info), start=1):
            head = {"kind": "step", "episode": episode, "window": gw, "update": loop["updates"] + j}
            self.metrics.write(head | {k: _finite(v) for k, v in stats.items()})
        loop["updates"] += len(info["losses"]) - 1
        record = {"kind": "window", "episode": episode, "window": gw, "update": loop["updates"],
                  "env/alpha": float(info["alpha"]), "env/reward": tr.reward}  # fmt: skip
        record |= {k: _finite(v) for k, v in info.items() if "/" in k and _is_number(v)}
        record |= {f"eval/{k}": _finite(v) for k, v in (info.get("eval") or {}).items()}
        record["env/score"] = _finite(info["score"])
        record |= {k: _finite(v) for k, v in tr.metrics.items()}
        self.metrics.write(record)
        decision = {"kind": "decision", "decision": gw - 1, "episode": episode, "window": gw,
                    "alpha": float(info["alpha"]), "reward/total": tr.reward,
                    "reward/progress": _finite(info["reward/progress"]),
                    "reward/grounded": _finite(info["reward/grounded"])}  # fmt: skip
        for key in ("beta_a", "beta_b", "beta_mean"):
            if f"controller/{key}" in tr.metrics:
                decision[key] = _finite(tr.metrics[f"controller/{key}"])
        if math.isfinite(float(info.get("oracle_alpha", math.nan))):  # the mock's optimum for the next window
            decision["oracle_alpha_after"] = float(info["oracle_alpha"])
        self.decisions.write(decision)
        for credit in self.controller.pop_credits():
            credit = {k: int(v) if k == "decision" else _finite(v) for k, v in credit.items()}
            self.decisions.write({"kind": "credit"} | credit)
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, float) and "/" in key:
                    self.tb.add_scalar(key, value, gw)
        loop["seconds"] = time.perf_counter() - self.t_start
        done = tr.terminated or tr.truncated
        if done:
            loop["final_score"] = _finite(info["score"])
            loop["final_eval"] = {k: _finite(v) for k, v in (info.get("eval") or {}).items()}
        if done or gw % cfg.checkpoint_every == 0:
            self.checkpoint(tr, done)  # every rank: each gives its RNG states; rank 0 writes
        score = info["score"]
        acc = f" score {score:.3f}" if math.isfinite(float(score)) else ""
        note = f"ep {episode + 1}/{cfg.episodes} alpha {tr.action[0]:.2f} loss {_fmt(info.get('stats/loss'))}"
        self.display.update(gw, f"{note} reward {tr.reward:.4f}{acc}")

    def checkpoint(self, tr: Transition, episode_done: bool) -> None:
        engine = self.env.unwrapped.engine if self.cfg.env == "real" else None
        ranks = self.dist.gather_objects(
            {"rng": rng_state(), "engine": engine.rank_state() if engine is not None else None}
        )  # what differs between torchrun ranks (one entry in a single process)
        sharded = engine is not None and engine.sharded  # FSDP: every rank helps gather the weights
        env_state = None if episode_done or not (self.main or sharded) else self.env.unwrapped.state_dict()
        if not self.main:
            return
        loop = dict(self.loop)
        if episode_done:  # resume starts the next episode
            loop |= {"episode": loop["episode"] + 1, "window": 0, "obs": None}
        else:
            loop["obs"] = np.asarray(tr.next_obs, dtype=np.float32)
        state = {
            "controller": self.controller.state_dict(),
            "env": env_state,
            "loop": loop,
            "offsets": {"metrics": self.metrics.offset(), "decisions": self.decisions.offset()},
            "ranks": ranks,  # per rank: global RNGs, and on the real env its problem stream and sampler
        }
        save_checkpoint(self.run_dir, state, self.cfg.keep_checkpoints, faults.before_seal)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "controller": self.cfg.controller,
            "env": self.cfg.env,
            "seed": self.cfg.seed,
            "episodes": self.cfg.episodes,
            "windows": self.loop["global_window"],
            "updates": self.loop["updates"],
            "final_score": self.loop.get("final_score"),
            "final_eval": self.loop.get("final_eval", {}),
            "seconds": seconds,
            "run_dir": str(self.run_dir),
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return f"{float(value):.4f}" if value is not None and math.isfinite(float(value)) else "-"


def _steps_from_losses(info: dict) -> list[dict[str, float]]:
    """Per-update records where the env gives only the tracked losses (the mock)."""
    return [{"step/tracked_loss": loss} for loss in info["losses"][1:]]


def _warmstart_progress(cfg: RunConfig):
    """The warm start's progress callback on the real env (the mock has none)."""
    return warmstart_progress() if cfg.env == "real" else None


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "tensorboard=true needs the optional extra: pip install -e '.[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---- plots --------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path) -> list[Path]:
    """plots/alpha.png, reward.png, accuracy.png, mismatch.png from the run's logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import beta as beta_dist

    windows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "window"]
    decisions = [r for r in read_jsonl(run_dir / "decisions.jsonl") if r["kind"] == "decision"]
    cfg = json.loads((run_dir / "config.json").read_text())
    title = f"{cfg['controller']} on {cfg['env']} (seed {cfg['seed']})"
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    x = np.array([d["window"] for d in decisions])
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [d["alpha"] for d in decisions], ".", color="C0", label="alpha used", zorder=3)
    if decisions and "beta_a" in decisions[0]:
        a, b = np.array([d["beta_a"] for d in decisions]), np.array([d["beta_b"] for d in decisions])
        ax.plot(x, a / (a + b), color="C1", label="Beta mean")
        ax.fill_between(x, beta_dist.ppf(0.05, a, b), beta_dist.ppf(0.95, a, b), color="C1", alpha=0.2,
                        label="Beta 90% interval")  # fmt: skip
    if decisions and "oracle_alpha_after" in decisions[0]:  # the optimum each decision faced
        ax.plot(
            x + 1, [d["oracle_alpha_after"] for d in decisions], "--", color="k", label="optimal alpha (mock)"
        )
    ax.set(xlabel="window (hold of H student updates)", ylabel="exposure alpha", ylim=(-0.02, 1.02),
           title=f"Exposure: {title}")  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    save(fig, "alpha.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    by_episode(ax, windows, "env/reward", color="C0", label="reward (total)")
    by_episode(ax, windows, "reward/progress", color="C2", alpha=0.7, label="learning progress")
    ax.set(xlabel="window", ylabel="reward per window", title=f"Reward: {title}")
    ax.legend(loc="best", fontsize=8)
    save(fig, "reward.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    bands = sorted({k for w in windows for k in w if k.startswith("eval/accuracy/")})
    if bands:
        for band in bands:
            label = band.removeprefix("eval/accuracy/")
            by_episode(ax, windows, band, 100.0, color=f"C{bands.index(band)}", marker="o", label=label)
        ax.set(ylabel="greedy accuracy (%)")
    else:
        by_episode(ax, windows, "env/score", color="C0", label="competence (mock)")
        ax.set(ylabel="student competence")
    ax.set(xlabel="window", title=f"Accuracy per difficulty: {title}")
    ax.legend(loc="best", fontsize=8)
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    by_episode(ax, windows, "stats/mismatch", color="C3")
    ax.set(xlabel="window", ylabel="top-1 student-teacher mismatch", title=f"Mismatch: {title}")
    save(fig, "mismatch.png")
    return paths


def by_episode(ax, records: list[dict], key: str, scale: float = 1.0, color: str = "C0", **kwargs) -> None:
    """Plot `key` against the window, one line per episode (no line across a reset), finite points only;
    a dotted rule marks where each later episode starts."""
    episodes = sorted({r["episode"] for r in records})
    for i, episode in enumerate(episodes):
        rows = [r for r in records if r["episode"] == episode]
        pts = [(r["window"], scale * r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), color=color, **(kwargs if i == 0 else kwargs | {"label": None}))
        if i > 0:
            ax.axvline(rows[0]["window"] - 0.5, color="grey", lw=0.8, ls=":")


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="run summary")
    table.add_column("field")
    table.add_column("value")
    for key, value in summary.items():
        if key == "final_eval":
            for band, acc in value.items():
                table.add_row(band, "-" if acc is None else f"{100 * acc:.1f}%")
        else:
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


# ---- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    fields = "\n".join(f"  {key} = {default}    {help_}" for key, default, help_ in describe())
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"config fields (set any with key=value or --set key=value):\n{fields}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides by dotted key")
    parser.add_argument("--controller", help="controller name (config field `controller`)")
    parser.add_argument("--env", help="real (embedded default) or mock (config field `env`)")
    parser.add_argument("--config", help="a YAML config file; overrides apply on top")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--name", help="run name (config field `name`)")
    parser.add_argument("--seed", type=int, help="seed (config field `seed`)")
    parser.add_argument("--resume", metavar="auto|DIR", help="continue the latest matching run, or DIR")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides) + list(args.set)
    for key in ("controller", "env", "name", "seed"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise cfglib.ConfigError(f"override '{bad[0]}' must look like key.path=value")
    return cfglib.load(RunConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    with user_errors(args.debug):
        return _main(args)


class Plan(NamedTuple):
    """What this invocation trains: a new run, or the run `--resume` names and its checkpoint."""

    cfg: RunConfig
    run_dir: Path | None = None  # None: a new run directory
    state: dict | None = None  # the checkpoint's state to resume from
    checkpoint: Path | None = None  # its directory
    finished: bool = False  # the run named had finished: nothing to do


def _main(args: argparse.Namespace) -> Path | None:
    cfg = resolve_config(args)
    dist = Dist.from_env()  # torchrun: rank 0 decides, logs and saves; every rank trains on its shard
    if not dist.active:
        return _run(dist, _plan(args, cfg))
    # Under torchrun rank 0 plans (new run or resume, with every check) and tells the others, which
    # read the very checkpoint it chose; all ranks confirm they can before anything else runs.
    plan, error = None, None
    if dist.is_main:
        try:
            plan = _plan(args, cfg)
        except USER_ERRORS as err:
            error = err
    word = dist.broadcast_object(
        None if plan is None else plan._replace(cfg=cfglib.to_dict(plan.cfg), state=None)
    )
    if word is None:  # rank 0 refused the run and reports why
        dist.close()
        if error is not None:
            raise error
        return None
    why = None
    if not dist.is_main:
        plan = word._replace(cfg=cfglib.from_dict(RunConfig, word.cfg))
        if plan.checkpoint is not None:
            try:
                plan = plan._replace(state=checkpoint.load(plan.checkpoint))
            except (OSError, ValueError) as err:
                why = f"{err} (on several nodes the run directory must be on a file system every rank sees)"
    written = len(plan.state.get("ranks", [None])) if plan.state is not None else dist.world_size
    if written != dist.world_size:
        why = why or _world_mismatch(written, dist.world_size)
    problems = [(rank, w) for rank, w in enumerate(dist.gather_objects(why)) if w]
    if problems:
        dist.close()
        rank, first = problems[0]
        raise cfglib.ConfigError(f"rank {rank} cannot resume: {first}")
    return _run(dist, plan)


def _world_mismatch(written: int, world: int) -> str:
    return (f"the checkpoint was written by {written} process(es); resume it with the same number "
            f"(torchrun --nproc_per_node {written}), not {world}")  # fmt: skip


def _plan(args: argparse.Namespace, cfg: RunConfig) -> Plan:
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
        differ = _differences(resolved_dict(stored), resolved_dict(cfg))
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


def _run(dist: Dist, plan: Plan) -> Path | None:
    """Train the planned run to its end (rank 0: in `plan.run_dir`, a new one when None); returns the
    run directory on rank 0, None on the others."""
    cfg, run_dir, resume_state = plan.cfg, plan.run_dir, plan.state
    if plan.finished:
        dist.close()
        return run_dir if dist.is_main else None
    if not dist.is_main:
        Run(cfg, None, resume_state, dist).train()
        dist.close()  # the Run is unreachable now: close() collects it before leaving the group
        return None
    fresh = run_dir is None
    if fresh:
        run_dir = new_run_dir(cfg)
        (run_dir / "config.json").write_text(json.dumps(resolved_dict(cfg), indent=1))
    print(f"run directory: {run_dir}", flush=True)
    try:
        runner = Run(cfg, run_dir, resume_state, dist)  # builds the env: data, model and warm start
    except USER_ERRORS:
        if fresh:  # nothing ran yet: remove the directory just made rather than leave a husk
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary = runner.train()
    del runner  # unreachable before close() collects the garbage and leaves the group
    dist.close()
    if cfg.plots:
        plot_run(run_dir)
        summary["plots"] = str(run_dir / "plots")
    print_summary(summary)
    return run_dir


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            out.append(f"{prefix}{key}")
    return out


if __name__ == "__main__":
    main()
