"""Nested state <-> safetensors + JSON: how controllers, envs and checkpoints are saved (no pickle).

A state is a nested structure of dicts (str or int keys), lists, tuples, JSON scalars, numpy arrays
and torch tensors; arrays go to one safetensors file, the structure and scalars to a JSON file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor / numpy array in a nested structure by a reference into a flat dict."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, (torch.Tensor, np.ndarray)) and path in tensors:
            raise TypeError(  # keys 1 and "1", or "a/b" beside "a" -> "b", would share one tensor name
                f"two tensors of the state would be stored as {path}: give their keys distinct text"
            )
        if isinstance(node, torch.Tensor):
            # a contiguous copy: tied weights share memory, and safetensors stores no strides
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(node, np.ndarray):
            tensors[path] = torch.from_numpy(np.array(node, order="C"))  # a copy, as for tensors
            return {"__ndarray__": path}
        if isinstance(node, dict):
            if not all(isinstance(k, (str, int)) for k in node):
                raise TypeError(f"state dict keys must be str or int at {path or '<root>'}")
            return {"__dict__": [[k, walk(v, f"{path}/{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if isinstance(node, (np.floating, np.integer)):
            return node.item()
        if node is None or isinstance(node, (str, int, float, bool)):
            return node
        raise TypeError(f"cannot serialise {type(node).__name__} at {path or '<root>'}")

    return walk(state, prefix), tensors


def unflatten_state(meta: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(meta, dict):
        if "__tensor__" in meta:
            return tensors[meta["__tensor__"]]
        if "__ndarray__" in meta:
            return tensors[meta["__ndarray__"]].numpy()
        return {k: unflatten_state(v, tensors) for k, v in meta["__dict__"]}
    if isinstance(meta, list):
        return [unflatten_state(v, tensors) for v in meta]
    return meta


def write_atomic(path: Path, text: str) -> None:
    """`path` whole or not at all: a temporary file, fsynced, renamed over it (a crash leaves the old
    file or the new one)."""
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class DiskFull(OSError):
    """A write ran out of space: one line naming the path, the space it needed and what was free."""


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC, raised by Python (OSError) or by safetensors' writer (its own error type)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text


@contextlib.contextmanager
def writing(target: Path, cleanup: Path | None = None, need_bytes: int | None = None) -> Iterator[None]:
    """Around a write of `target`: on any failure remove `cleanup` (the half-written temporary), and
    turn a full disk into DiskFull naming the path, the space needed (when known) and the space free."""
    try:
        yield
    except BaseException as err:
        if cleanup is not None:
            if cleanup.is_dir():
                shutil.rmtree(cleanup, ignore_errors=True)
            else:
                cleanup.unlink(missing_ok=True)
        if not is_disk_full(err):
            raise
        free = shutil.disk_usage(_existing(target)).free
        need = f"about {need_bytes / 2**20:.1f} MiB needed, " if need_bytes else ""
        full = DiskFull(
            f"no space left on the device writing {target} ({need}{free / 2**20:.1f} MiB free); "
            "free some space or point the path elsewhere (out_dir, ATESD_CACHE)"
        )
        full.errno = errno.ENOSPC
        raise full from None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def model_bytes(model: torch.nn.Module) -> int:
    """Roughly what saving a model's weights writes: its parameters' bytes."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def state_bytes(state: dict[str, Any]) -> int:
    """Roughly what `save_state` writes: the arrays' bytes."""
    _, tensors = flatten_state(state)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write `<path>.json` (structure and scalars) and `<path>.safetensors` (arrays)."""
    path = Path(path)
    meta, tensors = flatten_state(state)
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(meta))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read what `save_state` wrote."""
    path = Path(path)
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return unflatten_state(json.loads(path.with_suffix(".json").read_text()), tensors)
