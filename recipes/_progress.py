"""Progress display for recipes: a rich bar on a terminal, plain log lines otherwise (logs, CI)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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
