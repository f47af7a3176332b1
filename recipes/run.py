"""One training run of one exposure controller, with live progress, logs, checkpoints and plots.

    python recipes/run.py --controller beta_reinforce                # the embedded default (real env)
    python recipes/run.py --controller bandit --env mock             # the mock env: seconds
    python recipes/run.py --config recipes/configs/tiny.yaml real.engine.lr=3e-4 --seed 1
    python recipes/run.py --controller beta_reinforce --resume auto  # continue the latest such run

Any config field can be set by its dotted key, as `key=value` arguments or `--set key=value`; the
fields, their defaults and their ranges are listed by --help. A run writes
`runs/<controller>__<name>__<seed>__<time>/`: config.json (the resolved config, its local paths made
absolute), inputs.json (size and sha256 of the local data file and controller_init state it read: a
resume refuses to train on changed ones), metrics.jsonl (every
student update and every window, namespaced keys), decisions.jsonl (every decision: alpha, Beta a/b,
reward terms; and each decision's return and advantage once the controller used it), checkpoints/,
plots/*.png, controller.{json,safetensors} (the learned controller: `controller_init=<run_dir>/controller`
starts another run from it) and summary.json. A run directory is never overwritten; `--resume auto`
continues the newest run with the same controller, name, seed and env from its last checkpoint (one that
finished says so: `--resume DIR` names an older one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import checkpoint  # noqa: E402
from atesd import config as cfglib  # noqa: E402
from atesd.checkpoint import rng_state, set_rng_state  # noqa: E402
from atesd.distributed import Dist, gather_state  # noqa: E402
from atesd.engine import DistillEngine  # noqa: E402
from atesd.logging import MetricsLogger, check_tensorboard, finite  # noqa: E402
from atesd.models import quiet_if_small  # noqa: E402
from atesd.state import model_bytes, save_state, write_atomic, writing  # noqa: E402
from atesd.threads import set_threads  # noqa: E402
from controllers.base import Transition, action_size, mean_alpha, run_episode  # noqa: E402
from controllers.shared import SharedDecisions  # noqa: E402
from envs.bank import find_recorder  # noqa: E402
from recipes import _faults as faults  # noqa: E402
from recipes._evalconfig import EvalConfig  # noqa: E402
from recipes._plots import plot_run  # noqa: E402
from recipes._progress import (  # noqa: E402
    USER_ERRORS,
    Display,
    discard_dir,
    print_summary,
    user_errors,
    warmstart_progress,
)
from recipes._rundir import (  # noqa: E402
    INPUTS,
    Plan,
    config_fingerprint,
    given_overrides,
    moved_since,
    new_run_dir,
    note_bank_file,
    plan_run,
    record_inputs,
    restart_logs,
    run_lock,
    save_checkpoint,
    world_mismatch,
    write_summary,
)
from recipes.common import (  # noqa: E402
    OWN_CONFIG,
    Once,
    RunConfig,
    build_controller,
    build_env,
    check_bank_dir,
    check_controller_init,
    describe,
    refuse_other_config,
    resolved_dict,
)


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

        self.cfg, self.run_dir = cfg, run_dir
        self.dist = dist or Dist.single()
        self.main = self.dist.is_main  # under torchrun only rank 0 logs, checkpoints and plots
        self.threads = set_threads(cfg.threads)  # 0: follow the free cores (updated every window)
        progress = _warmstart_progress(cfg) if self.main else None
        try:
            self.env = build_env(cfg, warmstart_progress=progress, dist=self.dist)
        finally:
            if progress is not None:
                progress.close()
        lines: list[str] = []  # where the controller starts, when not from its own config
        if resume is None:
            self.controller = build_controller(cfg, self.env, announce=lines.append)
            self.controller_start = lines[-1] if lines else OWN_CONFIG
        else:  # the checkpoint's state replaces any start: the start the run made stands, and a prior
            # or a saved state since changed or removed neither loads nor stops the resume
            self.controller = build_controller(dataclasses.replace(cfg, controller_init="none"), self.env)
            self.controller_start = resume.get("controller_start", OWN_CONFIG)
        for line in lines if self.main else ():
            print(f"controller: {line}")
        # a started state (a prior, a saved controller) has numbered decisions of its own: credit
        # lines are numbered from this run's first decision, the state's own below 0
        decision_offset = int(getattr(self.controller, "decisions", 0))
        if cfg.env == "real":
            faults.install(self.env.unwrapped.engine)
        if self.dist.active:
            self.controller = SharedDecisions(
                self.controller,
                self.dist.is_main,
                self.dist.broadcast_float,
                action_size(self.env.action_space),
            )
        self.windows_per_episode = math.ceil(cfg.total_steps / cfg.hold_steps)
        self.total_windows = self.windows_per_episode * cfg.episodes
        self.log = MetricsLogger(run_dir if self.main else None, cfg.tensorboard)
        self.loop = {"episode": 0, "window": 0, "global_window": 0, "updates": 0, "obs": None, "seconds": 0.0,
                     "decision_offset": decision_offset}  # fmt: skip
        if resume is not None:
            ranks = resume["ranks"] if "ranks" in resume else [{"rng": resume["rng"], "engine": None}]
            if len(ranks) != self.dist.world_size:  # (under torchrun `_main` has checked it on every rank)
                raise cfglib.ConfigError(world_mismatch(len(ranks), self.dist.world_size))
            self.controller.load_state_dict(resume["controller"])
            if resume["env"] is not None:
                self.env.unwrapped.load_state_dict(resume["env"])
            recorder = find_recorder(self.env)
            if recorder is not None and resume.get("bank") is not None:
                recorder.load_state_dict(resume["bank"])
            self.loop = resume["loop"]
            mine = ranks[self.dist.rank]  # each rank's own problem stream, sampler and global RNGs
            if mine.get("engine") is not None:
                self.env.unwrapped.engine.load_rank_state(mine["engine"])
            set_rng_state(mine["rng"])
            self.log.truncate(resume["offsets"], step=self.loop["global_window"] + 1)

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
                    logger=lambda _, metrics: self.log(loop["global_window"] + 1, metrics),  # TensorBoard
                    on_step=self.on_step,
                    on_reset=self.on_reset,
                )
        finally:
            self.display.close()
            self.log.close()
        summary = self.summary(time.perf_counter() - t_start)
        engine = self.env.unwrapped.engine if cfg.env == "real" else None
        # FSDP: every rank helps gather the whole weights; rank 0 writes them
        weights = gather_state(engine.student)[0] if engine is not None and engine.sharded else None
        if self.main and engine is not None:  # the trained student (with LoRA: its adapter) and tokenizer
            final = self.run_dir / "final_model"
            tmp = self.run_dir / ".tmp-final_model"  # written whole, then renamed: never half a model
            shutil.rmtree(tmp, ignore_errors=True)
            extra = {} if weights is None else {"state_dict": weights}
            size = model_bytes(engine.student)
            with writing(final, cleanup=tmp, need_bytes=size), quiet_if_small(size):
                engine.student.save_pretrained(tmp, safe_serialization=True, **extra)
                engine.tokenizer.save_pretrained(tmp)
            faults.hit("final_model")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            summary["final_model"] = str(final)
        if self.main:  # the learned controller, to start another run from (controller_init)
            with writing(self.run_dir / "controller.safetensors"):
                save_state(self.controller.state_dict(), self.run_dir / "controller")
            summary["controller_state"] = str(self.run_dir / "controller")
        return summary

    def on_reset(self, obs: np.ndarray, info: dict) -> None:
        """Log where the episode starts (the warm-started student's evaluation, when the env gives one)
        and keep the first episode's as the run's start."""
        loop = self.loop
        record = {"kind": "start", "episode": loop["episode"], "window": loop["global_window"],
                  "update": loop["updates"], "env/score": finite(info.get("score", math.nan))}  # fmt: skip
        record |= {f"eval/{k}": finite(v) for k, v in (info.get("eval") or {}).items()}
        self.log.metric(record)
        if "start_score" not in loop:
            loop["start_score"] = record["env/score"]
            loop["start_eval"] = {k: finite(v) for k, v in (info.get("eval") or {}).items()}

    def on_step(self, step: int, tr: Transition) -> None:
        cfg, loop, info = self.cfg, self.loop, tr.info
        loop["window"], loop["global_window"] = step, loop["global_window"] + 1
        gw, episode = loop["global_window"], loop["episode"]
        env = self.env.unwrapped  # wall times live beside info (`timings`): info stays deterministic
        timings, step_timings = getattr(env, "timings", {}), getattr(env, "step_timings", [])
        for j, stats in enumerate(info.get("step_stats") or _steps_from_losses(info), start=1):
            head = {"kind": "step", "episode": episode, "window": gw, "update": loop["updates"] + j}
            stats = stats | (step_timings[j - 1] if j <= len(step_timings) else {})
            self.log.metric(head | {k: finite(v) for k, v in stats.items()})
        loop["updates"] += len(info["losses"]) - 1
        record = {"kind": "window", "episode": episode, "window": gw, "update": loop["updates"],
                  "env/alpha": mean_alpha(info["alpha"]), "env/reward": tr.reward}  # fmt: skip
        if isinstance(info["alpha"], (list, tuple)):  # the per-band action: each band's alpha too
            bands = getattr(self.env.unwrapped, "bands", ()) or range(len(info["alpha"]))
            record |= {f"env/alpha/{band}": float(a) for band, a in zip(bands, info["alpha"])}
            # TensorBoard heard the window's scalars from run_episode, which has no scalar alpha here
            self.log(gw, {k: v for k, v in record.items() if k.startswith("env/alpha")})
        record |= {k: finite(v) for k, v in (info | timings).items() if "/" in k and _is_number(v)}
        record |= {f"eval/{k}": finite(v) for k, v in (info.get("eval") or {}).items()}
        record["env/score"] = finite(info["score"])
        record |= {k: finite(v) for k, v in tr.metrics.items()}
        record["time/threads"] = self.threads.threads if self.threads is not None else self.cfg.threads
        self.log.metric(record)
        if self.threads is not None:
            self.threads.update()  # the next window's thread count, from the cores left free
        decision = {"kind": "decision", "decision": gw - 1, "episode": episode, "window": gw,
                    "alpha": _alpha_record(info["alpha"]), "reward/total": tr.reward,
                    "reward/progress": finite(info["reward/progress"]),
                    "reward/grounded": finite(info["reward/grounded"])}  # fmt: skip
        for key in ("beta_a", "beta_b", "beta_mean"):
            per_band = [v for k, v in tr.metrics.items() if k.startswith(f"controller/{key}/")]
            if per_band:  # one Beta per band: a list, in the action's order
                decision[key] = [finite(v) for v in per_band]
            elif f"controller/{key}" in tr.metrics:
                value = finite(tr.metrics[f"controller/{key}"])
                # a per-band action from one Beta (one band, or one broadcast): a list as long as the
                # alpha's, each band's draw from it (a scalar beside a list of alphas)
                alpha = decision["alpha"]
                decision[key] = [value] * len(alpha) if isinstance(alpha, list) else value
        oracle = info.get("oracle_alpha", math.nan)  # the mock's optimum for the next window
        if np.isfinite(np.asarray(oracle, dtype=np.float64)).all():
            decision["oracle_alpha_after"] = _alpha_record(oracle)
        self.log.decision(decision)
        for credit in self.controller.pop_credits():
            offset = loop.get("decision_offset", 0)  # 0 in a checkpoint from before the offset was kept
            credit = {k: int(v) - offset if k == "decision" else finite(v) for k, v in credit.items()}
            self.log.decision({"kind": "credit"} | credit)
        loop["seconds"] = time.perf_counter() - self.t_start
        done = tr.terminated or tr.truncated
        if done:
            loop["final_score"] = finite(info["score"])
            loop["final_eval"] = {k: finite(v) for k, v in (info.get("eval") or {}).items()}
        if done or gw % cfg.checkpoint_every == 0:
            self.checkpoint(tr, done)  # every rank: each gives its RNG states; rank 0 writes
        score = info["score"]
        acc = f" score {score:.3f}" if "eval" in info and math.isfinite(float(score)) else ""
        shown = "/".join(f"{a:.2f}" for a in np.asarray(tr.action).reshape(-1))
        note = f"ep {episode + 1}/{cfg.episodes} alpha {shown} loss {_fmt(info.get('stats/loss'))}"
        self.display.update(gw, f"{note} reward {tr.reward:.4f}{acc}")

    def checkpoint(self, tr: Transition, episode_done: bool) -> None:
        engine = self.env.unwrapped.engine if self.cfg.env == "real" else None
        ranks = self.dist.gather_objects(
            {"rng": rng_state(), "engine": engine.rank_state() if engine is not None else None}
        )  # what differs between torchrun ranks (one entry in a single process)
        sharded = engine is not None and engine.sharded  # FSDP: every rank helps gather the weights
        # a finished episode's env state is not needed to go on (the next episode resets the env),
        # except the last one's: its student is the run's final_model, written from the restored env
        # when a run killed after this checkpoint is resumed
        last = episode_done and self.loop["episode"] + 1 >= self.cfg.episodes
        keep_env = (not episode_done or last) and (self.main or sharded)
        env_state = self.env.unwrapped.state_dict() if keep_env else None
        if not self.main:
            return
        loop = dict(self.loop)
        if episode_done:  # resume starts the next episode
            loop |= {"episode": loop["episode"] + 1, "window": 0, "obs": None}
        else:
            loop["obs"] = np.asarray(tr.next_obs, dtype=np.float32)
        state = {
            "config": config_fingerprint(self.cfg),  # resume refuses a checkpoint of another config
            "controller": self.controller.state_dict(),
            "controller_start": self.controller_start,
            "env": env_state,
            "loop": loop,
            "offsets": self.log.offsets(),
            "bank": recorder.state_dict() if (recorder := find_recorder(self.env)) is not None else None,
            "ranks": ranks,  # per rank: global RNGs, and on the real env its problem stream and sampler
        }
        # what the checkpoint points into is on the disk before it is sealed: a power loss after the
        # seal left NULs where unsynced log lines were, and every checkpoint was then refused
        self.log.sync()
        if state["bank"] is not None:
            checkpoint.fsync_path(Path(state["bank"]["path"]))
        save_checkpoint(self.run_dir, state, self.cfg.keep_checkpoints, faults.before_seal)
        faults.hit("sealed")

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "controller": self.cfg.controller,
            "env": self.cfg.env,
            "seed": self.cfg.seed,
            "episodes": self.cfg.episodes,
            "controller_start": self.controller_start,
            "windows": self.loop["global_window"],
            "updates": self.loop["updates"],
            "start_score": self.loop.get("start_score"),
            "final_score": self.loop.get("final_score"),
            "start_eval": self.loop.get("start_eval", {}),
            "final_eval": self.loop.get("final_eval", {}),
            "seconds": seconds,
            "run_dir": str(self.run_dir),
        }


def _alpha_record(alpha: Any) -> float | list[float]:
    """An alpha as decisions.jsonl records it: a number, or a list under the per-band action."""
    if isinstance(alpha, (list, tuple, np.ndarray)):
        return [float(a) for a in np.asarray(alpha, dtype=np.float64).reshape(-1)]
    return float(alpha)


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


# ---- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    fields = "\n".join(f"  {key} = {default}    {help_}" for key, default, help_ in describe())
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        epilog=f"config fields (set any with key=value or --set key=value):\n{fields}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides by dotted key")
    parser.add_argument("--controller", help="controller name (config field `controller`)")
    parser.add_argument("--env", help="real (embedded default) or mock (config field `env`)")
    parser.add_argument("--config", action=Once, help="a YAML config file; overrides apply on top (once)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--name", help="run name (config field `name`)")
    parser.add_argument("--seed", type=int, help="seed (config field `seed`)")
    parser.add_argument("--resume", metavar="auto|DIR", help="continue the newest matching run, or DIR")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_intermixed_args(argv)  # key=value words may come between the flags
    if args.resume is not None and not args.resume.strip():
        parser.error("--resume takes auto or a run directory, not an empty value")
    return args


def resolve_config(args: argparse.Namespace) -> RunConfig:
    refuse_eval_config(args)
    return cfglib.load(RunConfig, args.config, given_overrides(args))


def refuse_eval_config(args: argparse.Namespace) -> None:
    """An eval.py config given as --config is said to be one (it said "unknown config key 'task'; did
    you mean 'real.task'?"), for a new run and on top of a --resume DIR alike."""
    advice = "give a run.py config (recipes/configs/*.yaml, or a run directory's config.json)"
    refuse_other_config(args.config, RunConfig, "run.py", EvalConfig, "eval.py", advice)


RUN_DIR: list[Path] = []  # the run directory once known, for the Ctrl-C line


def _interrupted(args: argparse.Namespace) -> str | None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)  # torchrun's
    if world > 1 and os.environ.get("RANK", "0") != "0":
        return None  # rank 0 says it (the others knew no run directory: "nothing changed", wrongly)
    if not RUN_DIR:  # stopped while planning (or --resume DIR read its checkpoint): nothing was written
        again = "" if args.resume in (None, "auto") else f" (--resume {args.resume})"
        return f"the run stopped before it began training; nothing changed: run the same command again{again}"
    launch = f"torchrun --nproc_per_node {world}" if world > 1 else "python"  # a resume needs as many
    where = f"{launch} recipes/run.py --resume {shlex.quote(str(RUN_DIR[-1]))}"
    saved = any(
        checkpoint.problem(c, verify=False) is None for c in (RUN_DIR[-1] / "checkpoints").glob("ckpt-*")
    )
    if not saved:  # stopped while building (a warm start training) or before a checkpoint
        return f"the run stopped before its first checkpoint; start it again from the beginning with {where}"
    return f"the run stopped; continue it from its last checkpoint with {where}"


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    RUN_DIR.clear()
    with user_errors(args.debug, lambda: _interrupted(args)):
        return _main(args)


def _main(args: argparse.Namespace) -> Path | None:
    # --resume DIR: what is given goes on top of DIR's config (plan_run), never judged on its own
    cfg = resolve_config(args) if args.resume in (None, "auto") else None
    if cfg is None:  # --resume DIR: a --config goes on top of the run's own
        refuse_eval_config(args)
    dist = Dist.from_env()  # torchrun: rank 0 decides, logs and saves; every rank trains on its shard
    if not dist.active:
        plan = plan_run(args, cfg)
        written = len(plan.state.get("ranks", [None])) if plan.state is not None else 1
        if written != 1:  # said before the model is built (minutes, and one process may not hold it)
            raise cfglib.ConfigError(world_mismatch(written, 1))
        return _run(dist, plan)
    # Under torchrun rank 0 plans (new run or resume, with every check) and tells the others, which
    # read the very checkpoint it chose; all ranks confirm they can before anything else runs.
    plan, error = None, None
    if dist.is_main:
        try:
            plan = plan_run(args, cfg)
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
            # under FSDP the weights and optimiser state are rank 0's to broadcast into the shards, so
            # the other ranks leave them unread, and judge the files by size: rank 0 verified their
            # checksums just now (each rank read the whole files again to hash them)
            sharded = plan.cfg.real.engine.fsdp
            prune = [f"/env/engine/{part}" for part in DistillEngine.RANK0_PARTS] if sharded else []
            try:
                # replicas read the weights themselves: checked by checksum as rank 0 checked them
                plan = plan._replace(state=checkpoint.load(plan.checkpoint, prune=prune, verify=not sharded))
            except (OSError, ValueError) as err:
                why = f"{err} (on several nodes the run directory must be on a file system every rank sees)"
    written = len(plan.state.get("ranks", [None])) if plan.state is not None else dist.world_size
    if written != dist.world_size:
        why = why or world_mismatch(written, dist.world_size)
    problems = [(rank, w) for rank, w in enumerate(dist.gather_objects(why)) if w]
    if problems:
        dist.close()
        rank, first = problems[0]
        raise cfglib.ConfigError(f"rank {rank} cannot resume: {first}")
    return _run(dist, plan)


def _run(dist: Dist, plan: Plan) -> Path | None:
    """Train the planned run to its end (rank 0: in `plan.run_dir`, a new one when None); returns the
    run directory on rank 0, None on the others."""
    cfg, run_dir, resume_state = plan.cfg, plan.run_dir, plan.state
    if plan.finished:
        dist.close()
        if plan.redraw and dist.is_main:  # finished, plots missing: its logs hold what they show
            with run_lock(run_dir):
                plot_run(run_dir)
            print_summary(json.loads((run_dir / "summary.json").read_text()))
        return run_dir if dist.is_main else None
    if not dist.is_main:
        if dist.broadcast_object(None):  # rank 0 could not take the run directory (it says why)
            dist.close()
            return None
        Run(cfg, None, resume_state, dist).train()
        dist.close()  # the Run is unreachable now: close() collects it before leaving the group
        return None
    with contextlib.ExitStack() as held:
        try:  # under torchrun the other ranks wait for this verdict before they build anything
            if cfg.tensorboard:  # before the env is built (a warm start can take minutes)
                check_tensorboard()
            if resume_state is None:  # a start from the beginning loads controller_init: a missing
                check_controller_init(cfg)  # state is said now, not after the warm start has trained
            check_bank_dir(cfg)
            fresh = run_dir is None
            if fresh:
                run_dir = _new_run(cfg)
            print(f"run directory: {run_dir}", flush=True)
            RUN_DIR.append(run_dir)
            held.enter_context(run_lock(run_dir))
            moved = None if fresh else moved_since(plan)
            if moved is not None:
                raise cfglib.ConfigError(moved)
        except BaseException:
            if dist.active:
                dist.broadcast_object("refused")
                dist.close()
            raise
        dist.broadcast_object("")
        if not fresh and resume_state is None:  # resumed before its first checkpoint: from the start
            restart_logs(run_dir)
            if not (run_dir / INPUTS).exists():  # cut before it was written (or a run from before it was)
                record_inputs(run_dir, cfg.real if cfg.env == "real" else None, cfg.controller_init)
        runner = _build(cfg, run_dir, resume_state, dist, fresh)
        recorder = find_recorder(runner.env)
        note_bank_file(run_dir, recorder.path if recorder is not None else None)
        summary = runner.train()
        del runner  # unreachable before close() collects the garbage and leaves the group
        dist.close()
        if cfg.plots:
            plot_run(run_dir)
            summary["plots"] = str(run_dir / "plots")
        # last, and whole (a temporary file renamed): a run is finished once summary.json exists
        write_summary(run_dir, summary)
    print_summary(summary)
    return run_dir


def _new_run(cfg: RunConfig) -> Path:
    """A new run directory with its inputs.json, then its config.json: the inputs' record first, as a
    resume of a directory with a config.json checks them. Ctrl-C while a large input is hashed leaves
    no husk behind."""
    run_dir = new_run_dir(cfg)
    try:
        record_inputs(run_dir, cfg.real if cfg.env == "real" else None, cfg.controller_init)
        write_atomic(run_dir / "config.json", json.dumps(resolved_dict(cfg), indent=1))
    except BaseException:
        discard_dir(run_dir)
        raise
    return run_dir


def _build(cfg: RunConfig, run_dir: Path, resume_state: dict | None, dist: Dist, fresh: bool) -> Run:
    try:
        return Run(cfg, run_dir, resume_state, dist)  # builds the env: data, model and warm start
    except USER_ERRORS:
        if fresh:  # nothing ran yet: remove the directory just made rather than leave a husk
            discard_dir(run_dir)
        raise


if __name__ == "__main__":
    main()
