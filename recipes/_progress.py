"""Progress display for recipes: a rich bar on a terminal, plain log lines otherwise (logs, CI)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from atesd.config import ConfigError


@contextlib.contextmanager
def progress(
    description: str, total: int, console: Console | None = None
) -> Iterator[Callable[[int, str], None]]:
    """Yields update(completed, note): a live bar on a terminal, else a line at every 10%."""
    console = console or Console()
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            tid = bar.add_task(description, total=total, note="")
            yield lambda completed, note="": bar.update(tid, completed=completed, note=note)
        return
    t0, last = time.perf_counter(), [-1]

    def update(completed: int, note: str = "") -> None:
        decile = 10 * completed // max(total, 1)
        if decile > last[0] or completed == total:
            last[0] = decile
            elapsed = time.perf_counter() - t0
            eta = elapsed / completed * (total - completed) if completed else float("nan")
            print(
                f"{description}: {completed}/{total} {note} ({elapsed:.0f} s, eta {eta:.0f} s)",
                file=sys.stdout,
                flush=True,
            )

    yield update


def fresh_dir(root: Path, stem: str) -> Path:
    """Create and return `root/stem`, or `root/stem-1`, `-2`, ... : an existing directory is never reused."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        path = root / (stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh directory {root / stem}-*")


def warmstart_progress() -> Callable[[int, int, float], None]:
    """A progress callback for `atesd.warmstart.warm_start`: silent on a cache hit (never called), a bar
    or plain lines while a warm start that is not cached yet trains (minutes)."""
    state: dict[str, Any] = {}

    def update(step: int, total: int, loss: float) -> None:
        if "ctx" not in state:
            print("warm start: not cached yet, training it once (later runs load it)", flush=True)
            state["ctx"] = progress("warm start", total)
            state["update"] = state["ctx"].__enter__()
        state["update"](step, f"loss {loss:.3f}")
        if step >= total:
            state["ctx"].__exit__(None, None, None)

    return update


# what a user can cause and fix: reported as one line with exit code 2 (the traceback with --debug)
USER_ERRORS = (ConfigError, ValueError, OSError, ImportError)


@contextlib.contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Turn a user error raised inside into `error: <one line> (--debug shows the traceback)` on stderr
    and exit code 2; with `debug`, let it propagate."""
    try:
        yield
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
