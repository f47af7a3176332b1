"""Crash-safe checkpoints: each one a directory written to a temporary name, fsynced, sealed by a
manifest of checksums and renamed into place; loading takes the newest complete one.

A checkpoint is `<root>/ckpt-<NNNNNN>/` holding `state.json` + `state.safetensors` (the nested state
of `atesd.state.save_state`: arrays in safetensors, the rest in JSON, no pickle) and
`manifest.json` (sha256 and size of every file), written last. A directory without a manifest, with a
file missing, truncated or changed, is incomplete: `load_latest` skips it with a warning naming it and
falls back to the one before. Knows nothing of what the state holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from atesd.state import load_state, save_state, state_bytes, writing

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk (directories: where the platform allows; an error is
    ignored). Also run.py's, for the bank file a checkpoint points into."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(root: Path, index: int, state: dict[str, Any], keep: int = 2, before_seal=None) -> Path:
    """Write checkpoint number `index` atomically and keep the newest `keep` complete ones.

    `before_seal(tmp_dir)` runs after the state files are written and before the manifest (a hook for
    fault-injection tests)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{index:06d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(root / name, cleanup=tmp, need_bytes=state_bytes(state)):  # a full disk: one line
        tmp.mkdir()
        save_state(state, tmp / "state")
        if before_seal is not None:
            before_seal(tmp)
        files = sorted(p for p in tmp.iterdir())
        for path in files:
            fsync_path(path)
        manifest = {
            "files": {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files},
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync_path(tmp / MANIFEST)
        fsync_path(tmp)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(root)
    # The new checkpoint was just hashed; the older ones are judged by their manifests and sizes, not
    # re-hashed (a kept 16 GB checkpoint read back in full at every save). load_latest still verifies
    # every checksum before it resumes from one.
    # Checkpoints numbered past this one belong to a timeline the run left: it resumed from an older
    # one (those were refused: corrupted, past the logs, of another config). Counted as complete,
    # they made `keep` prune the checkpoint just written, so every later kill restarted the run.
    abandoned = [p for p in checkpoints(root) if number(p) > index]
    for old in abandoned:
        log.warning("removing checkpoint %s: the run went on from the older %s", old, final.name)
    earlier = [p for p in checkpoints(root) if number(p) <= index]
    complete = [p for p in earlier if p == final or problem(p, verify=False) is None]
    # older incomplete ones too (a removal cut short before this change left them: never resumed from)
    broken = [p for p in earlier if p not in complete]
    for old in (complete[:-keep] if keep > 0 else []) + broken + abandoned:
        doomed = root / f".tmp-{old.name}"  # renamed first: a removal cut short leaves a .tmp- name,
        os.replace(old, doomed)  # which the sweep below (or the next save) clears
        shutil.rmtree(doomed, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def problem(ckpt: Path, verify: bool = True) -> str | None:
    """Why `ckpt` is not a complete checkpoint, or None when its manifest and files agree
    (`verify=False`: by name and size only, without reading the files' contents)."""
    manifest_path = ckpt / MANIFEST
    if not manifest_path.exists():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, OSError) as err:
        return f"unreadable manifest ({err})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files (not a manifest this package wrote)"
    if not {"state.json", "state.safetensors"} <= set(files):
        return "its manifest does not list the state files"
    for name, entry in files.items():
        path = ckpt / name
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):  # fmt: skip
            return f"its manifest entry for {name} is malformed ({entry!r})"
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if verify and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def load(ckpt: Path, prune: Collection[str] = (), verify: bool = True) -> dict[str, Any]:
    """The state of the checkpoint directory `ckpt`; ValueError saying why when it is not complete
    (`verify=False`: its files judged by name and size, not read whole for their checksums). `prune`:
    parts of the state read as `{}`, their arrays not read (`atesd.state.load_state`)."""
    why = problem(ckpt, verify=verify)
    if why is not None:
        raise ValueError(f"checkpoint {ckpt}: {why}")
    return load_state(ckpt / "state", prune)


def number(ckpt: Path) -> int:
    """A checkpoint's window index, from its name (`ckpt-000200`: 200); -1 for a name not of that form."""
    digits = ckpt.name.removeprefix("ckpt-")
    return int(digits) if digits.isdigit() else -1


def checkpoints(root: Path) -> list[Path]:
    """The checkpoints under `root`, oldest first by their index: sorted as text, ckpt-1000000 (window
    one million) came before ckpt-999995, and a save pruned the new one as the older."""
    return sorted((p for p in root.glob("ckpt-*") if number(p) >= 0), key=number)


def load_latest(root: Path, warn=None, accept=None) -> tuple[dict[str, Any], Path] | None:
    """The newest complete checkpoint under `root` as (state, directory); incomplete or corrupted
    ones, and ones `accept(state)` says why not to use (a string; None accepts), are skipped with a
    warning naming them (`warn(message)`, default: the logger); None if none."""
    warn = warn or log.warning
    for ckpt in reversed(checkpoints(root)):
        why = problem(ckpt)
        if why is None:
            try:
                state = load_state(ckpt / "state")
            except Exception as err:  # a manifest that matches files that still do not load
                why = f"does not load ({type(err).__name__}: {err})"
            else:
                why = accept(state) if accept is not None else None
                if why is None:
                    return state, ckpt
        warn(f"skipping checkpoint {ckpt}: {why}")
    return None


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
