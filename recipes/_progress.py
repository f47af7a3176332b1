"""Progress display for recipes: a rich bar on a terminal, plain log lines otherwise (logs, CI)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
import warnings
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


# the parents each fresh_dir made (deepest first), for discard_dir to remove again where left empty
_MADE_PARENTS: dict[Path, list[Path]] = {}


def fresh_dir(root: Path, stem: str) -> Path:
    """Create and return `root/stem`, or `root/stem-1`, `-2`, ... : an existing directory is never reused."""
    made = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        path = root / (stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
            _MADE_PARENTS[path] = made
            return path
        except FileExistsError:
            continue
        except FileNotFoundError:  # another command's discard_dir removed the root it had made, empty
            root.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _MADE_PARENTS[path] = made
            return path
    raise RuntimeError(f"could not create a fresh directory {root / stem}-*")


def discard_dir(path: Path) -> None:
    """Remove `path` (a directory of no result, its command failed or was stopped) and the parents
    that `fresh_dir` made for it where they are left empty (a failed first command left an empty
    `runs/` behind)."""
    shutil.rmtree(path, ignore_errors=True)
    for parent in _MADE_PARENTS.pop(path, []):
        try:
            parent.rmdir()
        except OSError:  # not empty (another run's), or gone
            break


def warmstart_progress(
    first: str = "",
) -> Callable[[int, int, float], None]:
    """A progress callback for `atesd.warmstart.warm_start`: silent on a cache hit (never called), a bar
    or plain lines while a warm start that is not cached yet trains (minutes), after the line `first`
    where one is given (warm_start's own warning says why it trains and where it is cached).
    Its `close()` ends a bar left open (the training stopped by an error or Ctrl-C: the bar redrew on)."""
    state: dict[str, Any] = {}

    def update(step: int, total: int, loss: float) -> None:
        if "ctx" not in state:
            if first:
                print(first, flush=True)
            state["ctx"] = progress("warm start", total)
            state["update"] = state["ctx"].__enter__()
        state["update"](step, f"loss {loss:.3f}")
        if step >= total:
            close()

    def close() -> None:
        ctx = state.pop("ctx", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)

    update.close = close  # type: ignore[attr-defined]
    return update


# what a user can cause and fix: reported as one line with exit code 2 (the traceback with --debug)
USER_ERRORS = (ConfigError, ValueError, OSError, ImportError)


@contextlib.contextmanager
def user_errors(debug: bool = False, interrupted: str | Callable[[], str | None] = "") -> Iterator[None]:
    """Turn a user error raised inside into `error: <one line> (--debug shows the traceback)` on stderr
    and exit code 2, and Ctrl-C into `interrupted: <interrupted>` (a text, or a function giving it
    when it happens, None for no line) and exit code 130; with `debug`, let them propagate. Warnings
    print as one line, `warning: <message> (<category>, <file>:<line>)`, not Python's two (the second
    the source line of the `warnings.warn` call, which read like a crash); with `debug` as Python
    prints them."""
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        said = interrupted() if callable(interrupted) else interrupted
        if said is not None:  # None: another process says it (torchrun's ranks but 0)
            print(f"interrupted: {said or 'stopped by Ctrl-C'}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        notes = "".join(f" ({' '.join(str(n).split())})" for n in getattr(err, "__notes__", ()))
        print(f"error: {message}{notes} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    text = " ".join(str(message).split())
    return f"warning: {text} ({category.__name__}, {Path(filename).name}:{lineno})\n"


class Display:
    """A rich progress bar with the run's vital signs on a terminal; plain lines (at most one per
    second, and the last window) otherwise."""

    def __init__(self, total: int, title: str, done: int = 0, quiet: bool = False) -> None:
        self.console = Console()
        self.total, self.t0, self.done0, self.last_line = total, time.perf_counter(), done, 0.0
        self.bar, self.quiet = None, quiet
        if quiet:
            return
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(title, total=total, completed=done, note="")
        else:
            print(f"{title}: {total} window{'s' if total != 1 else ''} ({done} done)", flush=True)

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


def print_summary(summary: dict[str, Any]) -> None:
    """The run's summary as a table: the final score and every band's accuracy beside where the run
    started (the warm-started student) and the change."""
    from rich.table import Table

    table = Table(title="run summary")
    table.add_column("field")
    table.add_column("value", overflow="fold")  # a path in full over lines, copyable (not cut with "...")
    start_eval = summary.get("start_eval") or {}
    for key, value in summary.items():
        if key in ("start_score", "start_eval"):
            continue
        if key == "final_eval":
            for band, acc in value.items():
                table.add_row(band, _with_start(acc, start_eval.get(band), percent=True))
        elif key == "final_score":
            table.add_row(key, _with_start(value, summary.get("start_score"), percent=False))
        else:
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _with_start(value: float | None, start: float | None, percent: bool) -> str:
    """`84.4% (start 70.3%, +14.1)` / `0.722 (start 0.650, +0.072)`; `-` for a missing value."""
    if value is None:
        return "-"
    scale, unit, digits = (100.0, "%", 1) if percent else (1.0, "", 3)
    text = f"{scale * value:.{digits}f}{unit}"
    if start is None:
        return text
    return f"{text} (start {scale * start:.{digits}f}{unit}, {scale * (value - start):+.{digits}f})"
