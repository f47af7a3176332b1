"""The run's logs: append-only JSON-lines files, one namespaced key scheme, optional TensorBoard.

`MetricsLogger` owns a run directory's metrics.jsonl (every student update and every window) and
decisions.jsonl (every decision and the credit it later got), flushed per line and fsynced before each
checkpoint is sealed; its offsets go into each checkpoint and a resume truncates the files back to
them. Keys are namespaced (`student/*`, `env/*`, `reward/*`, `stats/*`, `eval/*`, `controller/*`,
`time/*`). Knows nothing of what is logged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from atesd.state import writing


class NullLines:
    """Where the logs of a non-zero torchrun rank go."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def offset(self) -> int:
        return 0

    def sync(self) -> None:
        pass

    def truncate(self, offset: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLines:
    """An append-only JSON-lines file, flushed per line; `truncate(offset)` drops lines after a checkpoint.
    A full disk is a DiskFull naming the file (Python's own error named no path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=jsonable) + "\n"
        with writing(self.path):
            self.file.write(line)
            self.file.flush()

    def sync(self) -> None:
        """Flush and fsync: a checkpoint's offsets may only point at lines that are on the disk (a power
        loss kept the fsynced checkpoint and left NULs where the unsynced lines were)."""
        with writing(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def offset(self) -> int:
        return self.file.tell()

    def truncate(self, offset: int) -> None:
        self.file.truncate(offset)
        self.file.seek(offset)

    def close(self) -> None:
        with writing(self.path):  # closing flushes: after a full disk, the line it could not write
            self.file.close()


def jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def finite(value: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsLogger:
    """metrics.jsonl, decisions.jsonl and optionally TensorBoard of one run (`run_dir` None: a non-zero
    torchrun rank, which logs nothing)."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        on = run_dir is not None
        self.run_dir = run_dir
        self.metrics = JsonLines(run_dir / "metrics.jsonl") if on else NullLines()
        self.decisions = JsonLines(run_dir / "decisions.jsonl") if on else NullLines()
        self.tb = tensorboard_writer(run_dir) if tensorboard and on else None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """`run_episode`'s logger hook: the window's namespaced scalars to TensorBoard."""
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, float) and math.isfinite(value) and "/" in key:
                    self.tb.add_scalar(key, value, step)

    def metric(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    def decision(self, record: dict[str, Any]) -> None:
        self.decisions.write(record)

    def offsets(self) -> dict[str, int]:
        return {"metrics": self.metrics.offset(), "decisions": self.decisions.offset()}

    def sync(self) -> None:
        """Both logs on the disk up to their offsets: called before a checkpoint holding them is sealed."""
        self.metrics.sync()
        self.decisions.sync()

    def truncate(self, offsets: dict[str, Any], step: int | None = None) -> None:
        """Back to a checkpoint's offsets (what was logged after it is dropped); TensorBoard drops its
        events from `step` on (the first window logged again)."""
        self.metrics.truncate(int(offsets["metrics"]))
        self.decisions.truncate(int(offsets["decisions"]))
        if self.tb is not None and step is not None:
            self.tb.close()
            self.tb = tensorboard_writer(self.run_dir, purge_step=step)

    def close(self) -> None:
        try:  # each closed even when one cannot flush its last line (a full disk)
            self.metrics.close()
        finally:
            try:
                self.decisions.close()
            finally:
                if self.tb is not None:
                    self.tb.close()


def check_tensorboard() -> None:
    """ImportError naming the extra when TensorBoard is not installed: a run asks before it trains
    (a warm start and a model load took minutes before the writer was first made)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError(TENSORBOARD_HINT)


TENSORBOARD_HINT = "tensorboard=true needs the optional extra: pip install -e '.[tensorboard]'"


def tensorboard_writer(run_dir: Path, purge_step: int | None = None):
    """A TensorBoard SummaryWriter under run_dir/tensorboard (the optional extra); `purge_step` drops
    the events already written from that step on (a resumed run logs them again)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(TENSORBOARD_HINT) from err
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines log; ValueError naming the file and line of one that does not read."""
    records = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None
    return records
