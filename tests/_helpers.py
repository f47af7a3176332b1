"""Helpers shared by test modules (imported as `_helpers`: pytest puts tests/ on the path)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def assert_same_state(a, b, path="<root>"):
    """Two nested controller states hold the same structure, scalars, arrays and tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{i}")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), path


def crash_at(monkeypatch, window: int) -> None:
    """recipes/run.py's loop stops with Ctrl-C right after global window `window` (its checkpoint, if
    one falls there, already written): a run interrupted at a known point, for the resume tests."""
    import recipes.run as run

    original = run.Run.on_step

    def on_step(self, step, transition):
        original(self, step, transition)
        if self.loop["global_window"] == window:
            raise KeyboardInterrupt

    monkeypatch.setattr(run.Run, "on_step", on_step)


def torchrun(args: list[str], tmp_path: Path, fault: str = "", **extra: str) -> subprocess.CompletedProcess:
    """Two ranks of `args` under torchrun in `tmp_path`; `extra`: environment variables of their own."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | extra
    env.pop("ATESD_FAULT", None)
    if fault:
        env["ATESD_FAULT"] = fault  # recipes/_faults.py: every rank SIGKILLs itself at that point
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
