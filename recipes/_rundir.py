"""A run's directory and what an invocation of run.py will do with it: a new run, or `--resume`
(the newest matching directory or the one named, its stored config, its newest intact checkpoint). The
input files a run reads, recorded and checked on resume, are recipes._inputs'."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from atesd import checkpoint
from atesd import config as cfglib
from atesd.state import write_atomic
from recipes._inputs import DATASETS_OWN, INPUTS, changed_inputs, folder_files, input_files, record_inputs
from recipes._progress import fresh_dir, print_summary
from recipes._tables import json_safe
from recipes.common import RunConfig, absolute_paths, resolved_dict

# recording and checking a run's input files (now recipes._inputs') is imported from here too, as it
# always was
__all__ = [
    "BANK_FILE", "DATASETS_OWN", "INPUTS", "LOCK", "Plan", "SHORTCUTS", "SUMMARY", "append_record",
    "changed_inputs", "checkpoint_fits", "config_differs", "config_fingerprint", "drop_noted_bank",
    "folder_files", "git_commit", "given_differences", "given_overrides", "input_files", "latest_run_dir",
    "missing_outputs", "moved_since", "new_run_dir", "note_bank_file", "plan_run", "progress_marks",
    "read_records", "record_inputs", "restart_logs", "resume_plan", "run_lock", "same_paths_differences",
    "save_checkpoint", "stored_config", "world_mismatch", "write_summary",
]  # fmt: skip

SUMMARY = "summary.json"


def git_commit(dirty: bool = False) -> str:
    """The short commit of the checkout ('' outside a git repository); with `dirty`, suffixed
    "-dirty" when the working tree has uncommitted changes (`git describe --dirty`)."""
    cmd = ["git", "describe", "--always", "--dirty"] if dirty else ["git", "rev-parse", "--short", "HEAD"]
    try:
        out = subprocess.run(
            cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def new_run_dir(cfg: RunConfig) -> Path:
    """`<out_dir>/<controller>__<name>__<seed>__<time>`, with a numeric suffix if that exists already."""
    stem = f"{cfg.controller}__{cfg.name}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        return fresh_dir(Path(cfg.out_dir).expanduser(), stem)  # `~/runs` made a folder named ~ here
    except OSError as err:
        raise OSError(f"cannot create a run directory under out_dir={cfg.out_dir}: {err}") from err


def latest_run_dir(cfg: RunConfig) -> Path | None:
    """The newest run directory of this controller, name, seed and env, or None. The env is not in
    the directory's name: a mock run made after a real one of the same controller was taken for it,
    and `--resume auto` refused the real run's command for a config that differs in env."""
    root = Path(cfg.out_dir).expanduser()
    if not root.is_dir():
        return None
    runs = [
        p  # the name is matched literally: `run[1]` is a name, not a pattern
        for p in root.glob(f"{glob.escape(f'{cfg.controller}__{cfg.name}__{cfg.seed}__')}*")
        if (p / "config.json").exists() and _stored_env(p, cfg.env) == cfg.env
    ]

    # by mtime, then by the name's stamp and its numeric suffix (fresh_dir's -2, -3, ..., compared as
    # numbers: -10 after -9): a tie of mtimes (a coarse filesystem clock) took the first listed
    def newest(p: Path) -> tuple:
        parts = p.name.rpartition("__")[2].split("-")  # date, time[, suffix]
        suffix = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
        return (p / "config.json").stat().st_mtime, "-".join(parts[:2]), suffix

    return max(runs, key=newest) if runs else None


def _stored_env(run_dir: Path, default: str) -> str:
    """The env of the run in `run_dir` as its config.json names it (`default` where it names none or
    does not read: the resume that follows says what is wrong with it)."""
    try:
        env = json.loads((run_dir / "config.json").read_text()).get("env", default)
    except (OSError, ValueError, AttributeError):
        return default
    return env if isinstance(env, str) else default


# ---- one process per run directory, and when a run is finished ----------------------------------
LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, doing: str = "trained") -> Iterator[None]:
    """Hold the run directory for this process (an advisory lock on `<run_dir>/.lock` holding its
    pid); another process working in the same run directory refuses in one line, naming the holder
    (`doing`: what the holder does there, for the message)."""
    path = run_dir / LOCK
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise cfglib.ConfigError(
                f"{run_dir} is being {doing} by another process (pid {holder}); wait for it to end"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, whole or not at all (a temporary file renamed): it marks the run finished."""
    from atesd.logging import jsonable

    write_atomic(run_dir / SUMMARY, json.dumps(summary, indent=1, default=jsonable))


def missing_outputs(run_dir: Path, cfg: RunConfig) -> list[str]:
    """What a finished run promises and `run_dir` lacks: summary.json (valid), the controller state,
    final_model (real env), the four plots (plots=true)."""
    from recipes._plots import PLOTS

    wanted = [SUMMARY, "controller.json", "controller.safetensors"]
    wanted += ["final_model"] if cfg.env == "real" else []
    wanted += [f"plots/{name}" for name in PLOTS] if cfg.plots else []
    # an empty file is as good as none (a power loss before its data reached the disk)
    missing = [name for name in wanted if not _written(run_dir / name)]
    if SUMMARY not in missing:
        try:
            json.loads((run_dir / SUMMARY).read_text())
        except (OSError, ValueError):
            missing.insert(0, SUMMARY)
    return missing


def _written(path: Path) -> bool:
    """A file with content, or a directory holding at least one such file."""
    if path.is_dir():
        return any(p.is_file() and p.stat().st_size > 0 for p in path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def append_record(path: Path, record: dict, strict: bool = True) -> None:
    """Append `record` to the JSON-lines file `path` as one line, flushed and fsynced: strict JSON
    (NaN and infinities written as null) unless `strict=False` (Python's NaN tokens, for a file only
    `read_records` reads back, where a NaN must stay one). Used by sweep, branch_alpha and bench."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(json_safe(record) if strict else record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path) -> list[dict]:
    """The records of the JSON-lines file `path` ([] when it does not exist). A last line cut short
    by a crash is dropped, and the file rewritten without it, so that the next append starts a line."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise cfglib.ConfigError(f"{path}: line {i + 1} is not JSON") from None
    if len(records) < len(lines) or (text and not text.endswith("\n")):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


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
    finished: bool = False  # the run named had finished: nothing to train
    seen: tuple[str, ...] = ()  # its checkpoints and summary when planned (`moved_since` compares)
    redraw: bool = False  # finished, but plots are missing: draw them again from its logs


def world_mismatch(written: int, world: int) -> str:
    return (f"the checkpoint was written by {written} process(es); resume it with the same number "
            f"(torchrun --nproc_per_node {written}), not {world}")  # fmt: skip


SHORTCUTS = ("controller", "env", "name", "seed")  # run.py's flags for config fields


def given_overrides(args: Any) -> list[str]:
    """The config overrides of run.py's command line: key=value words, --set, and the shortcut flags."""
    return cfglib.command_overrides([*args.overrides, *args.set], {k: getattr(args, k) for k in SHORTCUTS})


def plan_run(args: Any, cfg: RunConfig | None) -> Plan:
    """This invocation's plan: a new run, or the run `--resume` names with its stored config and
    newest intact checkpoint. Reads only: what a restart removes is removed under the run's lock.
    `cfg`: the command line's config (None with `--resume DIR`, whose given keys go on top of the
    stored config instead)."""
    if not args.resume:
        return Plan(absolute_paths(cfg))  # config.json names the same files from any directory
    run_dir = latest_run_dir(cfg) if args.resume == "auto" else Path(args.resume)
    if run_dir is None:
        print(
            f"--resume auto: no earlier {cfg.controller}/{cfg.name}/seed {cfg.seed} run on env {cfg.env}; "
            "starting fresh"
        )
        return Plan(absolute_paths(cfg))
    if not (run_dir / "config.json").exists():
        raise cfglib.ConfigError(f"--resume {run_dir}: not a run directory (no config.json)")
    # a process training the run now prunes its checkpoints under the reads below: it is named now, not
    # taken for a damaged checkpoint (whose advice was to remove the live run's checkpoints)
    with run_lock(run_dir):
        return _resume_of(args, cfg, run_dir)


def _resume_of(args: Any, cfg: RunConfig | None, run_dir: Path) -> Plan:
    """`plan_run` of the run in `run_dir`, a run directory this process holds."""
    stored = stored_config(run_dir)
    differ = given_differences(args, cfg, stored)
    if args.resume == "auto" and cfg is not None and _same_dir(run_dir.parent, cfg.out_dir):
        differ = [key for key in differ if key != "out_dir"]  # found there: `./runs` is `runs`
    # controller_init is read by a restart from the beginning alone (a checkpoint holds the controller's
    # state, a finished run trains no more): a difference there is judged below, once that is known
    refused_keys = [key for key in differ if key != "controller_init"]
    if refused_keys:
        raise cfglib.ConfigError(config_differs(args, run_dir, refused_keys))
    missing = missing_outputs(run_dir, stored)
    if not missing:
        print(f"{run_dir} already finished; nothing to resume")
        print_summary(json.loads((run_dir / SUMMARY).read_text()))
        return Plan(stored, run_dir, finished=True)
    finished = SUMMARY not in missing  # a whole summary.json: the run trained to its end
    if finished and all(name.startswith("plots/") for name in missing):  # drawn from the logs alone
        print(f"{run_dir} already finished; drawing its missing {', '.join(missing)} again from its logs")
        return Plan(stored, run_dir, finished=True, redraw=True)
    if (run_dir / SUMMARY).exists():
        print(f"{run_dir} lacks {', '.join(missing)}; completing it from its last checkpoint")
    seen = progress_marks(run_dir)  # before the checkpoint loads (minutes for a large model)
    saved = [name for name in seen if name != SUMMARY]
    if (run_dir / SUMMARY).exists() and not saved:  # never trained again: its logs and results stand
        lacks = ", ".join("a readable summary.json" if name == SUMMARY else name for name in missing)
        raise cfglib.ConfigError(
            f"--resume {run_dir}: the run finished (it has a summary.json) but lacks {lacks} and keeps no "
            "checkpoint to write them from; a finished run is not trained again: restore them from a "
            "copy, or start a new run (without --resume) to train it anew"
        )
    changed = changed_inputs(run_dir, restart=not saved)
    if changed:
        raise cfglib.ConfigError(f"--resume {run_dir}: {changed}")
    if not saved and "controller_init" in differ:  # a restart loads the run's own controller_init
        raise cfglib.ConfigError(
            f"{config_differs(args, run_dir, ['controller_init'])} (it has no checkpoint: it would restart "
            f"from the beginning, from the controller_init it started with, {stored.controller_init})"
        )
    return resume_plan(args, run_dir, stored, differ, seen)


def _same_dir(folder: Path, out_dir: str) -> bool:
    """Whether `out_dir` names `folder`, however spelt (`runs`, `./runs/`, its absolute path, `~/...`)."""
    return folder.resolve() == Path(out_dir).expanduser().resolve()


def given_differences(args: Any, cfg: RunConfig | None, stored: RunConfig) -> list[str]:
    """The config keys in which what `--resume` was given differs from the run's stored config: the
    whole command line under `--resume auto`, else the `--config` and `--set` given on top of it."""
    if args.resume == "auto":  # the whole command line is the config: it must be the run's
        return same_paths_differences(stored, cfg)
    if args.config or given_overrides(args):  # on top of the run's own config
        overrides = given_overrides(args)
        base = cfglib.merge(resolved_dict(stored), cfglib.read_yaml(args.config) if args.config else {})
        given = cfglib.from_dict(RunConfig, cfglib.merge(base, cfglib.parse_overrides(overrides)))
        return same_paths_differences(stored, given)
    return []


def resume_plan(
    args: Any, run_dir: Path, stored: RunConfig, differ: list[str], seen: tuple[str, ...]
) -> Plan:
    """The plan of an unfinished run: from its newest checkpoint that fits, or from the beginning where
    it has none; refused where it has checkpoints and none of them fits (a restart would delete them)."""
    saved = [name for name in seen if name != SUMMARY]
    refused: list[str] = []

    def skipped(message: str) -> None:
        print(f"warning: {message}")
        refused.append(message.removeprefix(f"skipping checkpoint {run_dir / 'checkpoints'}/"))

    found = checkpoint.load_latest(
        run_dir / "checkpoints", warn=skipped, accept=lambda state: checkpoint_fits(state, run_dir, stored)
    )
    resume_state, ckpt = found if found is not None else (None, None)
    if resume_state is None and saved:  # a restart would delete them (the abandoned ones, at its first save)
        how = (
            "start a new run (without --resume) to train it anew"
            if (run_dir / SUMMARY).exists()
            else f"to train it again from the beginning, remove {run_dir / 'checkpoints'} and run the "
            "command again, or start a new run (without --resume)"
        )
        raise cfglib.ConfigError(
            f"--resume {run_dir}: none of its checkpoints can be resumed ({'; '.join(refused)}); it is not "
            f"restarted, which would delete them: {how}"
        )
    ended, at = _ended_at(run_dir), resume_state["loop"]["global_window"] if resume_state else None
    if at is not None and ended is not None and at < ended:  # its final checkpoint refused: an older one
        why = "; ".join(refused) or "the later ones are gone"  # would train again over its logs
        raise cfglib.ConfigError(
            f"--resume {run_dir}: the run finished at window {ended}, and its newest checkpoint that "
            f"loads is of window {at} ({why}); a finished run is not trained again: restore its outputs "
            "from a copy, or start a new run (without --resume) to train it anew"
        )
    if resume_state is None:
        print(f"{run_dir} has no checkpoint yet; restarting it from the beginning")
    else:
        print(f"resuming {run_dir} at window {resume_state['loop']['global_window']}")
        if "controller_init" in differ:  # not read: the checkpoint holds the controller's state
            print(
                "controller_init is not read: the controller goes on from its checkpoint's state (the run "
                f"started from {stored.controller_init})"
            )
    return Plan(stored, run_dir, resume_state, ckpt, seen=seen)


def _ended_at(run_dir: Path) -> int | None:
    """The last window of a finished run, from its summary.json (None: not finished, or not said)."""
    try:
        windows = json.loads((run_dir / SUMMARY).read_text()).get("windows")
    except (OSError, ValueError, AttributeError):
        return None
    return windows if isinstance(windows, int) and not isinstance(windows, bool) else None


def config_differs(args: Any, run_dir: Path, keys: list[str]) -> str:
    """The refusal of a resume whose given config differs from the run's in `keys`."""
    if args.resume == "auto":
        return (
            f"--resume auto found {run_dir}, whose config differs from the given one in {keys}; resume "
            "it with --resume DIR and no overrides, or start a new run with another name"
        )
    return f"--resume {run_dir}: the given config differs from the run's: {keys}"


def same_paths_differences(stored: RunConfig, given: RunConfig) -> list[str]:
    """The keys in which a command line's config differs from a run's stored one, their local paths
    compared as absolute paths here: `data/train.jsonl` given in the directory a run started in is the
    absolute path its config.json holds (and a run from before paths were stored absolute, whose
    config.json holds the relative one, still matches the same relative path)."""
    return cfglib.differences(resolved_dict(absolute_paths(stored)), resolved_dict(absolute_paths(given)))


def progress_marks(run_dir: Path) -> tuple[str, ...]:
    """What says how far a run got: its checkpoints' names and whether its summary exists."""
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*"))
    return (*names, SUMMARY) if (run_dir / SUMMARY).exists() else tuple(names)


def moved_since(plan: Plan) -> str | None:
    """Why a resume planned before this process held the run's lock no longer holds (None: it does):
    another process trained the run on, or finished it, between the plan and the lock; training from
    the plan would redo those windows over its logs, or restart a finished run."""
    now = progress_marks(plan.run_dir)
    if now == plan.seen:
        return None
    return (
        f"{plan.run_dir} moved on while this process read its checkpoint (another process trained it: "
        f"{', '.join(now) or 'nothing'} now, {', '.join(plan.seen) or 'nothing'} then); run the command "
        "again to resume it from where it is"
    )


BANK_FILE = "bank_file.txt"  # where the run records its bank (bank_dir), for a restart to remove


def restart_logs(run_dir: Path) -> None:
    """A resumed run without a checkpoint starts again: its logs go, TensorBoard's events and the
    bank file it recorded too (their windows would be in the bank twice; call it holding `run_lock`)."""
    for name in ("metrics.jsonl", "decisions.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    drop_noted_bank(run_dir / BANK_FILE)


def drop_noted_bank(note: Path) -> None:
    """Remove the bank file that the file `note` names, and `note` (neither there: nothing)."""
    if note.is_file():
        Path(note.read_text(encoding="utf-8").strip()).unlink(missing_ok=True)
        note.unlink()


def note_bank_file(run_dir: Path, path: Path | None) -> None:
    """Note the bank file this run records into (`restart_logs` removes it)."""
    if path is not None:
        write_atomic(run_dir / BANK_FILE, str(Path(path).resolve()))


def stored_config(run_dir: Path) -> RunConfig:
    """The config a run directory was started with; ConfigError in one line when config.json is not
    a whole run config (truncated, or another recipe's directory, such as eval.py's)."""
    path = run_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise cfglib.ConfigError(f"--resume {run_dir}: {path} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or "controller" not in data or "env" not in data:
        raise cfglib.ConfigError(
            f"--resume {run_dir}: {path} is not a run.py config (a directory of another recipe?)"
        )
    try:
        return cfglib.from_dict(RunConfig, data)
    except (cfglib.ConfigError, ValueError, TypeError) as err:
        why = (  # refused since 2026-12-07; the run never used it (its checkpoints' fingerprints hold it)
            "; the run was started before a controller's seed setting was refused, and used the run's "
            "seed instead of it: start the run again without it"
            if "a controller's seed is the run's" in str(err)
            else ""
        )
        raise cfglib.ConfigError(
            f"--resume {run_dir}: {path} does not hold a valid run config ({err}){why}"
        ) from None


def config_fingerprint(cfg: RunConfig) -> str:
    """A short hash of the resolved config: a checkpoint carries it, resume checks it."""
    import hashlib

    return hashlib.sha256(json.dumps(resolved_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_fits(state: dict[str, Any], run_dir: Path, cfg: RunConfig) -> str | None:
    """Why `state` cannot continue the run in `run_dir` (None: it can): written for another config
    (a checkpoint copied from another run), or logs shorter than its offsets (their tail was lost,
    as after a power loss: the checkpoint is fsynced, the logs are not)."""
    written = state.get("config") if isinstance(state, dict) else None
    if written is not None and written != config_fingerprint(cfg):
        mine = config_fingerprint(cfg)
        return f"written by a run with another config (fingerprint {written}, this run's {mine})"
    offsets = state.get("offsets") if isinstance(state, dict) else None
    if not isinstance(offsets, dict):
        return "holds no log offsets"
    for key, name in (("metrics", "metrics.jsonl"), ("decisions", "decisions.jsonl")):
        path, offset = run_dir / name, offsets.get(key)
        if not isinstance(offset, int) or offset < 0:
            return f"holds an invalid {name} offset ({offset!r})"
        size = path.stat().st_size if path.exists() else 0
        if size < offset:
            return f"needs {offset} bytes of {name}, which holds {size}"
        damaged = _damaged_line(path, offset) if offset else None
        if damaged is not None:  # a power loss can leave blocks of NULs where unsynced lines were
            return f"{name} is damaged before its offset ({damaged})"
    return None


def _damaged_line(path: Path, offset: int) -> str | None:
    """Why the first `offset` bytes of a JSON-lines log are not whole records, or None."""
    with path.open("rb") as f:
        head = f.read(offset)
    if not head.endswith(b"\n"):
        return f"byte {offset} is not the end of a line"
    for number, line in enumerate(head.splitlines(), start=1):
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return f"line {number} is not a JSON record"
        if not isinstance(record, dict):
            return f"line {number} is not a JSON record"
    return None
