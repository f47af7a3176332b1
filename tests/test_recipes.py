import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "steps=2", "--set", "warmstart.steps=3", "--set", "warmstart.copy_steps=1",
    "--set", "warmstart.batch_size=4", "--set", "warmstart.warmup_steps=1", "--set", "task.eval_size=4",
    "--set", "task.probe_size=2", "--set", "mismatch_size=2", "--set", "alphas=[0,0.5,1]",
    "--set", "model.num_layers=1", "--set", "model.hidden_size=32", "--set", "model.num_heads=2",
    "--set", "model.num_kv_heads=1", "--set", "model.intermediate_size=64", "--set", "engine.batch_size=4",
    "--set", "engine.sampling.max_new_tokens=16",
]  # fmt: skip


def test_sweep_smoke(tmp_path):
    env = os.environ | {"ATESD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "sweep.py"),
        "--seeds",
        "2",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    res = subprocess.run(cmd + TINY, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(record["runs"]) == 6


def test_sweep_rejects_an_unknown_key(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "sweep.py"), "--out", str(tmp_path), "--set", "step=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "did you mean 'steps'" in res.stderr
