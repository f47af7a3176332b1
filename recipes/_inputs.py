"""The local files a run reads (its math data file or folder, the saved controller state it starts
from): their size and sha256 recorded in the run directory's inputs.json when it starts, and checked
when it resumes, which refuses one gone, new or changed. Knows nothing of how a resume is planned
(recipes._rundir asks `changed_inputs`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atesd.priors import absolute_path
from atesd.state import write_atomic
from atesd.warmstart import sha256_file
from recipes._controller import saved_state_base, saved_state_exists

INPUTS = "inputs.json"  # size and sha256 of the local files a run reads: a resume refuses changed ones


def input_files(real: Any = None, controller_init: str | Sequence[str] = "") -> list[tuple[str, Path]]:
    """(config key, file or folder) of the local inputs a run reads that its resume must find unchanged:
    the math task's data file or folder (real.data.source, or a named source's file in
    real.data.data_dir; a named source without it is read from the hub, whatever this directory holds;
    `real` a RealConfig, None where no real env is built) and the saved controller state of
    controller_init (one, or a bench's several: its specs' `init=` too)."""
    from atesd.state import state_files
    from atesd.tasks.sources import DATASETS, local_file

    files = []
    if real is not None and real.task_kind == "math":
        data, known = real.data, DATASETS.get(real.data.source)
        path: Path | None = None if known else Path(data.source).expanduser()
        if known and data.data_dir:
            try:
                path = Path(data.data_dir).expanduser() / local_file(data.source, known, data.split)
            except ValueError:  # a split no data_dir file holds: the build says so
                path = None
        if path is not None and (path.is_file() or path.is_dir()):  # a folder: parquet, save_to_disk...
            files.append(("real.data.source", path))
    for init in [controller_init] if isinstance(controller_init, str) else controller_init:
        init = init.strip()
        if init.lower() not in ("", "auto", "none") and saved_state_exists(init):
            files += [("controller_init", p) for p in state_files(saved_state_base(init)) if p.is_file()]
    return files


# what `datasets` may write into a data folder itself (a lock, a map's cache file, the temporary file a
# cache file is written to before its rename): not the data, and it comes and goes between runs
DATASETS_OWN = re.compile(r".*\.lock|cache-.*\.arrow|tmp[a-z0-9_]{8}")


def folder_files(folder: Path) -> list[str]:
    """The files of the data folder `folder` (a parquet folder, a save_to_disk folder) as paths
    relative to it, sorted; hidden ones (a name or a folder starting with '.') and those `datasets`
    writes there (`DATASETS_OWN`) left out."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and not DATASETS_OWN.fullmatch(name) and path.is_file():
                names.append(path.relative_to(folder).as_posix())
    return sorted(names)


def _stat(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def record_inputs(
    directory: Path,
    real: Any = None,
    controller_init: str | Sequence[str] = "",
    extra: Sequence[tuple[str, Path]] = (),
) -> None:
    """Write `directory`/inputs.json: the size and sha256 of each of `input_files` and of `extra`
    ((key, file or folder): eval.py's task and model), a folder's as those of each of its files
    (`folder_files`, by their paths relative to it); none: no file."""
    entries = [
        {"key": key, "path": absolute_path(path),
         **({"files": [{"path": name, **_stat(path / name)} for name in folder_files(path)]}
            if path.is_dir() else _stat(path))}
        for key, path in [*input_files(real, controller_init), *extra]
    ]  # fmt: skip
    if entries:
        write_atomic(directory / INPUTS, json.dumps({"files": entries}, indent=1))


def changed_inputs(directory: Path, restart: bool = True) -> str | None:
    """Why the run in `directory` would not read what it started on (None: it would): a file that
    inputs.json records is gone, or its size or sha256 changed; of a folder, the first of its files
    gone, new or changed. The saved controller state counts only on a `restart` (resumed from a
    checkpoint, the checkpoint's controller state replaced it)."""
    path = directory / INPUTS
    if not path.exists():  # a run of no local inputs, or from before they were recorded
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} does not read ({err}); remove it to resume without checking the run's input files"
    for entry in entries:
        if entry["key"] == "controller_init" and not restart:
            continue
        file = Path(entry["path"])
        changed = _folder_changed(entry, file) if "files" in entry else _file_changed(entry, file, file)
        if changed:
            return changed
    return None


def _file_changed(entry: dict[str, Any], file: Path, where: Path, name: str = "") -> str | None:
    """Why `file` is not the one `entry` records (its bytes and sha256), or None. `where`: the input
    the run read (the file, or the folder holding it as `name`)."""
    what = f"{entry['key']} {where}" + (f": its file {name}" if name else "")
    then = f"{entry['bytes']} bytes, sha256 {entry['sha256'][:16]}"
    start = f"start a new run (without --resume) to train on what {where} holds now"
    if not file.is_file():
        return f"{what}, which the run started with, is gone ({then}); restore it, or {start}"
    size = file.stat().st_size
    digest = sha256_file(file) if size == entry["bytes"] else ""
    if size != entry["bytes"] or digest != entry["sha256"]:
        now = f"{size} bytes" + (f", sha256 {digest[:16]}" if digest else "")
        return (
            f"{what} changed since the run started ({then} then, {now} now); a resume trains on what the "
            f"run started with: restore the file, or {start}"
        )
    return None


def _folder_changed(entry: dict[str, Any], folder: Path) -> str | None:
    """Why the data folder `entry` records does not hold the files it held (the first of them, by
    name, gone, new or changed), or None."""
    then = {file["path"]: file | {"key": entry["key"]} for file in entry["files"]}
    start = f"start a new run (without --resume) to train on what {folder} holds now"
    if not folder.is_dir():
        return (
            f"{entry['key']} {folder}, which the run started with ({len(then)} files), is gone; restore it, "
            f"or {start}"
        )
    now = set(folder_files(folder))
    for name in sorted(now | set(then)):
        if name not in then:
            return (
                f"{entry['key']} {folder} holds {name}, which it did not when the run started; a resume "
                f"trains on what the run started with: remove it, or {start}"
            )
        changed = _file_changed(then[name], folder / name, folder, name)
        if changed:
            return changed
    return None
