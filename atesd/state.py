"""Nested state <-> safetensors + JSON: how controllers, envs and checkpoints are saved (no pickle).

A state is a nested structure of dicts (str or int keys), lists, tuples, JSON scalars, numpy arrays
and torch tensors; arrays go to one safetensors file, the structure and scalars to a JSON file.
`cpu_copy` snapshots such a state on the CPU (tied weights copied once) without writing it.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def view_key(tensor: torch.Tensor) -> tuple | None:
    """What makes two tensors the same values in memory: device, storage, offset, shape, strides and
    dtype. `module.state_dict()` gives a tied pair (embed_tokens / lm_head) as two tensor objects over
    one storage, so identity (`id`) misses them. None where no such key is sound: an empty tensor (its
    storage pointer may be 0 for many) or a tensor subclass (a DTensor's storage is its local shard)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.numel() == 0:
        return None
    ptr = tensor.untyped_storage().data_ptr()
    if ptr == 0:
        return None
    shape, stride = tuple(tensor.shape), tensor.stride()
    return (str(tensor.device), ptr, tensor.storage_offset(), shape, stride, tensor.dtype)


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor / numpy array in a nested structure by a reference into a flat dict.

    The flat dict is for writing at once, not for keeping: a CPU tensor that is contiguous and overlaps
    no other goes in as it is, without a copy (a checkpoint of a full fine-tune is the size of the
    model and its optimiser, and a copy here doubled the host memory a save needs). A tensor met again
    as the same view (tied weights) is stored once and referenced from both places, so it loads as one
    tensor for both names; one that overlaps another otherwise is copied (safetensors refuses tensors
    that share memory, and stores no strides)."""
    tensors: dict[str, torch.Tensor] = {}
    return _flatten(state, prefix, tensors, {}, {}), tensors


def _flatten(node: Any, path: str, tensors: dict, seen: dict, spans: dict) -> Any:
    """`flatten_state`'s walk (a module function, not a closure: a recursive closure is a reference
    cycle that kept the flat dict, and any copies in it, alive until the garbage collector ran).
    `seen`: view key -> stored name; `spans`: CPU storage pointer -> byte ranges already stored."""
    if isinstance(node, (torch.Tensor, np.ndarray)) and path in tensors:
        raise TypeError(  # keys 1 and "1", or "a/b" beside "a" -> "b", would share one tensor name
            f"two tensors of the state would be stored as {path}: give their keys distinct text"
        )
    if isinstance(node, torch.Tensor):
        key = view_key(node)
        if key is not None and key in seen:
            return {"__tensor__": seen[key]}
        tensor = node.detach().cpu().contiguous()  # copies only what is elsewhere or strided
        if _overlaps(tensor, spans):
            tensor = tensor.clone()  # e.g. a tensor beside a slice of it: values of their own
            _overlaps(tensor, spans)
        tensors[path] = tensor
        if key is not None:
            seen[key] = path
        return {"__tensor__": path}
    if isinstance(node, np.ndarray):
        tensors[path] = torch.from_numpy(np.array(node, order="C"))  # a copy (arrays are small here)
        return {"__ndarray__": path}
    if isinstance(node, dict):
        if not all(isinstance(k, (str, int)) for k in node):
            raise TypeError(f"state dict keys must be str or int at {path or '<root>'}")
        return {"__dict__": [[k, _flatten(v, f"{path}/{k}", tensors, seen, spans)] for k, v in node.items()]}
    if isinstance(node, (list, tuple)):
        return [_flatten(v, f"{path}/{i}", tensors, seen, spans) for i, v in enumerate(node)]
    if isinstance(node, (np.floating, np.integer, np.bool_)):  # numpy's scalars (a comparison's bool too)
        return node.item()
    if node is None or isinstance(node, (str, int, float, bool)):
        return node
    raise TypeError(f"cannot serialise {type(node).__name__} at {path or '<root>'}")


def _overlaps(tensor: torch.Tensor, spans: dict[int, list[tuple[int, int]]]) -> bool:
    """Whether a CPU tensor's bytes overlap any recorded in `spans` (by storage); records them."""
    if tensor.numel() == 0 or tensor.untyped_storage().data_ptr() == 0:
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    ranges = spans.setdefault(tensor.untyped_storage().data_ptr(), [])
    if any(start < e and s < end for s, e in ranges):
        return True
    ranges.append((start, end))
    return False


def arrays_of(node: Any) -> Iterator[torch.Tensor | np.ndarray]:
    """Every tensor and numpy array of a nested state, in `flatten_state`'s order."""
    if isinstance(node, (torch.Tensor, np.ndarray)):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from arrays_of(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from arrays_of(v)


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


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path` ({} when there is no file); ValueError naming `what` and the path
    when it does not read or holds another JSON value (a damaged install)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {path} does not read ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a JSON object")
    return data


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
    """Roughly what `save_state` writes: the arrays' bytes (a tied tensor once, as it is stored),
    counted from their sizes: it used to flatten the state, a copy of every tensor to count them."""
    total, seen = 0, set()
    for array in arrays_of(state):
        if isinstance(array, np.ndarray):
            total += array.nbytes
            continue
        key = view_key(array)
        if key is None or key not in seen:
            total += array.numel() * array.element_size()
            seen.add(key)
    return total


def state_files(path: str | Path) -> tuple[Path, Path]:
    """(`<path>.json`, `<path>.safetensors`): the suffixes appended, so `ctl_alpha0.25` and
    `ctl_alpha0.75` are two states (a suffix replaced made both `ctl_alpha0`, the second overwriting)."""
    return Path(f"{path}.json"), Path(f"{path}.safetensors")


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write `<path>.json` (structure and scalars) and `<path>.safetensors` (arrays), each whole or not
    at all (a temporary file renamed over it: a kill mid-write left a truncated file that failed to
    load with a safetensors traceback)."""
    meta_file, arrays_file = state_files(path)
    meta, tensors = flatten_state(state)
    tmp = arrays_file.with_name(f".tmp-{arrays_file.name}")
    save_file(tensors, str(tmp))
    os.replace(tmp, arrays_file)
    write_atomic(meta_file, json.dumps(meta))


def load_state(path: str | Path, prune: Collection[str] = ()) -> dict[str, Any]:
    """Read what `save_state` wrote. `prune`: paths of dicts in it (`/env/engine/student`) read as `{}`,
    their arrays not read (what another process holds: under FSDP rank 0 alone holds whole weights)."""
    meta_file, arrays_file = state_files(path)
    meta = _pruned(json.loads(meta_file.read_text()), "", set(prune))
    if not prune:
        return unflatten_state(meta, load_file(str(arrays_file)))
    with safe_open(str(arrays_file), framework="pt") as f:  # only the arrays the rest refers to
        tensors = {key: f.get_tensor(key) for key in set(_references(meta))}
    return unflatten_state(meta, tensors)


def _pruned(meta: Any, path: str, prune: set[str]) -> Any:
    if isinstance(meta, dict) and "__dict__" in meta:
        if path in prune:
            return {"__dict__": []}
        return {"__dict__": [[k, _pruned(v, f"{path}/{k}", prune)] for k, v in meta["__dict__"]]}
    if isinstance(meta, list):
        return [_pruned(v, f"{path}/{i}", prune) for i, v in enumerate(meta)]
    return meta


def _references(meta: Any) -> Iterator[str]:
    """The array keys a flattened state refers to."""
    if isinstance(meta, dict):
        for kind in ("__tensor__", "__ndarray__"):
            if kind in meta:
                yield meta[kind]
                return
        for _, v in meta.get("__dict__", []):
            yield from _references(v)
    elif isinstance(meta, list):
        for v in meta:
            yield from _references(v)


def own_copies(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Give `optimizer` copies of its state's tensors that share memory with any tensor of `state` (a
    loaded state it must not change in place)."""
    from atesd.distributed import is_sharded  # (it imports the models module: not at import time)

    given = {t.untyped_storage().data_ptr() for t in arrays_of(state) if isinstance(t, torch.Tensor)} - {0}
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            local = value.to_local() if is_sharded(value) else value
            if isinstance(local, torch.Tensor) and local.untyped_storage().data_ptr() in given:
                per_param[key] = value.clone()


def cpu_copy(state: Any, memo: dict[Any, torch.Tensor] | None = None, tensors: bool = True) -> Any:
    """A deep copy of a nested state with every tensor copied to the CPU (the same values in memory met
    twice, as tied weights are, copied once: one tensor in the copy). Loading it back copies into the
    live tensors wherever they are. `memo` maps `atesd.state.view_key` (or `id` where it has none) to
    the copy: a caller may seed it with tensors it made for this snapshot alone, kept as they are.
    `tensors=False`: the containers copied, the tensors themselves kept (not copied)."""
    memo = {} if memo is None else memo
    if isinstance(state, torch.Tensor) and not tensors:
        return state
    if isinstance(state, torch.Tensor):
        # by storage and view, not id: module.state_dict() gives a tied embed_tokens / lm_head as two
        # tensor objects over one storage, and the copy held (and a checkpoint wrote) the head twice
        key = view_key(state) or id(state)
        if key not in memo:
            memo[key] = state.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(state, dict):
        out = type(state)((k, cpu_copy(v, memo, tensors)) for k, v in state.items())
        if hasattr(state, "_metadata"):  # a module's state dict carries its version metadata
            out._metadata = copy.deepcopy(state._metadata)
        return out
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return type(state)(*(cpu_copy(v, memo, tensors) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v, memo, tensors) for v in state)
    return copy.deepcopy(state)
