import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "steps=2", "--set", "real.warmstart.steps=3", "--set", "real.warmstart.copy_steps=1",
    "--set", "real.warmstart.batch_size=4", "--set", "real.warmstart.warmup_steps=1",
    "--set", "real.task.eval_size=4", "--set", "real.task.probe_size=2", "--set", "mismatch_size=2",
    "--set", "alphas=[0,0.5,1]", "--set", "real.model.num_layers=1", "--set", "real.model.hidden_size=32",
    "--set", "real.model.num_heads=2", "--set", "real.model.num_kv_heads=1",
    "--set", "real.model.intermediate_size=64", "--set", "real.engine.batch_size=4",
    "--set", "real.engine.sampling.max_new_tokens=16",
]  # fmt: skip


@pytest.mark.slow
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


@pytest.mark.slow
def test_sweep_rejects_an_unknown_key(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "sweep.py"), "--out", str(tmp_path), "--set", "step=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "did you mean 'steps'" in res.stderr


def test_the_sweeps_checks_say_when_they_cannot_be_made():
    """(b)/(c) need alpha = 1 (or 0) in the sweep and at least two seeds: one seed has no sd, so any
    higher mean would 'beat' it by more than 2 sd."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import sweep

    def row(**accs):
        sd = {a: 0.0 if len(v) < 2 else 1.0 for a, v in accs.items()}
        return {float(a.replace("_", ".")): {"acc_mean": sum(v) / len(v), "acc_sd": sd[a], "acc": v}
                for a, v in accs.items()}  # fmt: skip

    assert sweep._beating(row(**{"0_75": [50.1], "1": [50.0]}), (0.75, 1.0), 1.0) is None
    assert sweep._beating(row(**{"0_25": [30.0, 31.0], "0_75": [90.0, 91.0]}), (0.25, 0.75), 1.0) is None
    assert sweep._beating(row(**{"0_75": [90.0, 91.0], "1": [50.0, 51.0]}), (0.75, 1.0), 1.0) == [0.75]
