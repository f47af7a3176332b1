"""Nested state <-> safetensors + JSON: how controllers, envs and checkpoints are saved (no pickle).

A state is a nested structure of dicts (str or int keys), lists, tuples, JSON scalars, numpy arrays
and torch tensors; arrays go to one safetensors file, the structure and scalars to a JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor / numpy array in a nested structure by a reference into a flat dict."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().clone()  # a copy: tied weights share memory
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
