"""torchrun with the gloo backend on CPU: two ranks train the embedded (ci-sized) model together."""

import itertools
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, torchrun
from safetensors.torch import load_file

import recipes.run as run
from atesd.logging import read_jsonl

pytestmark = pytest.mark.slow  # every test launches torchrun subprocesses


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_share_alpha_and_end_with_identical_weights(tmp_path, mode):
    worker = [str(ROOT / "tests/_dist_worker.py"), str(tmp_path), str(tmp_path / "cache"), mode]
    out = torchrun(worker, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["alphas"] == ranks[1]["alphas"] and len(ranks[0]["alphas"]) == 2  # rank 0's decisions
    assert ranks[0]["rewards"] == ranks[1]["rewards"]  # rewards from all-reduced statistics
    assert ranks[0]["problems"] != ranks[1]["problems"]  # but each rank drew its own shard of problems
    # FSDP: each rank holds half of every decoder layer's parameters, and the replicated rest whole
    share = 0.5 if mode == "fsdp" else 1.0
    assert [r["layer_share"] for r in ranks] == [share, share]
    # and of the teacher's frozen copy, made a layer at a time: still the starting weights at the end
    # (gathered whole on rank 0 only under FSDP)
    assert [r["teacher_layer_share"] for r in ranks] == [share, share]
    assert [r["teacher_is_start"] for r in ranks] == ([True, False] if mode == "fsdp" else [True, True])
    # the teacher's layers are sharded again after its scoring (FSDP kept a root whole after a forward,
    # for a backward that a teacher never runs), and an EMA teacher's update is the average, shard by
    # shard (it met a whole teacher layer and failed)
    assert [r["after_scoring"] for r in ranks] == [share, share]
    for r in ranks:
        assert r["ema"]["layer_share"] == share and r["ema"]["moved"] and r["ema"]["error"] < 1e-6
    assert not any(r["teacher_shares_tensors"] or r["teacher_trains"] for r in ranks)
    assert all(r["teacher_tied"] for r in ranks)
    # the env's reset snapshot: whole tensors on rank 0 only under FSDP (host memory), on each rank else
    snapshot = [r["snapshot_weights"] for r in ranks]
    assert snapshot[0] > 0 and snapshot[1] == (0 if mode == "fsdp" else snapshot[0])
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    # the evaluation: each rank samples and grades its half of every band (one process did all of it),
    # and both return the whole evaluation, which the worker's grader makes known in advance
    sets = ranks[0]["eval_sets"]
    known = {band: sum(zlib.crc32(q.encode()) % 3 == 0 for q in qs) / len(qs) for band, qs in sets.items()}
    assert len(set(known.values())) > 1 and all(len(qs) == 15 for qs in sets.values())
    for kind, r, which in itertools.product(("accuracy", "avg_at_2"), ranks, ("eval", "eval_single")):
        assert {band: r[which][f"{kind}/{band}"] for band in sets} == known, (kind, r["rank"], which)
    graded = sorted(tuple(g) for r in ranks for g in r["eval_graded"])
    assert graded == sorted((band, q) for band, qs in sets.items() for q in qs for _ in range(3))
    assert [r["eval_rows"] for r in ranks] == [[8] * 9, [7] * 9]  # greedy + 2 samples, 3 bands
    assert [r["eval_single_rows"] for r in ranks] == [[15] * 9] * 2
    assert ranks[0]["eval_gen"] == ranks[1]["eval_gen"] and ranks[0]["rank_stream"] != ranks[1]["rank_stream"]
    for r in ranks:  # exposure.reference=other: each prompt's neighbour is one process's, not the shard's
        sharded, whole = r["teacher_prompts"]
        assert len(sharded) == len(whole) == 3
        assert sharded == [w[r["rank"] :: 2] for w in whole]


def test_run_py_under_torchrun_writes_one_run_directory(tmp_path):
    args = [str(ROOT / "recipes/run.py"), "--config", str(ROOT / "recipes/configs/ci.yaml"),
            "--controller", "beta_reinforce", f"real.cache_dir={tmp_path / 'cache'}",
            f"out_dir={tmp_path / 'runs'}", "threads=1", "plots=false"]  # fmt: skip
    out = torchrun(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    windows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "window"]
    assert len(windows) == 3 and (run_dir / "summary.json").exists()


RESUME_ARGS = ["--config", str(ROOT / "recipes/configs/ci.yaml"), "--controller", "beta_reinforce",
               "threads=1", "plots=false", "real.env.total_steps=8", "checkpoint_every=1"]  # fmt: skip


def outcome(root: Path) -> tuple[list, dict]:
    """The logs (timings aside) and final weights of the one run under `root`."""
    (run_dir,) = root.iterdir()
    logs = [
        [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(run_dir / name)]
        for name in ("metrics.jsonl", "decisions.jsonl")
    ]
    return logs, load_file(str(run_dir / "final_model/model.safetensors"))


@pytest.fixture(scope="module")
def uncut(tmp_path_factory) -> dict:
    """Uncut two-rank runs, plain data parallel and FSDP, on one warm-start cache: {mode: outcome}."""
    tmp = tmp_path_factory.mktemp("uncut")
    out = {"cache": tmp / "cache"}
    for mode in ("ddp", "fsdp"):
        args = [str(ROOT / "recipes/run.py"), *RESUME_ARGS, f"real.cache_dir={tmp / 'cache'}",
                f"out_dir={tmp / mode}", f"real.engine.fsdp={mode == 'fsdp'}"]  # fmt: skip
        done = torchrun(args, tmp)
        assert done.returncode == 0, done.stderr[-3000:]
        out[mode] = outcome(tmp / mode)
    return out


def test_fsdp_trains_as_plain_data_parallel(uncut):
    """The same run sharded and replicated: identical weights and logs, except in their last digits
    the logged gradient norm (summed over shards in another order) and the grounded score with the
    rewards built on it (replicated, it rides in the update forward's cache; sharded, every rank runs
    it as a forward of its own: the same quantity by another float route, a float32 ulp or two apart,
    which the default reward weights by lambda_gt = 30)."""
    (logs_a, w_a), (logs_b, w_b) = uncut["ddp"], uncut["fsdp"]
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    norms = [[r["student/grad_norm"] for r in logs[0] if r["kind"] == "step"] for logs in (logs_a, logs_b)]
    assert len(norms[0]) == 8 and norms[0] == pytest.approx(norms[1], rel=1e-5)

    def rest(logs, last_digits: bool):
        """Every record without the gradient norm: the exact fields, or those off in their last digits."""
        return [
            [{k: v for k, v in r.items() if k != "student/grad_norm" and (grounded_field(k) == last_digits)}
             for r in part]
            for part in logs
        ]  # fmt: skip

    assert rest(logs_a, False) == rest(logs_b, False)
    near_a, near_b = (rest(logs, True) for logs in (logs_a, logs_b))
    flat = [[(k, v) for part in logs for r in part for k, v in r.items()] for logs in (near_a, near_b)]
    assert [k for k, _ in flat[0]] == [k for k, _ in flat[1]] and flat[0]
    for (key, a), (_, b) in zip(*flat):
        # 30 x the change of a score of about -2 a few float32 ulps (2.4e-7 each) off: up to ~3e-5
        assert a == (pytest.approx(b, rel=1e-6, abs=3e-5, nan_ok=True) if isinstance(a, float) else b), key


def grounded_field(key: str) -> bool:
    """The grounded score and what is computed from it: rewards, returns and advantages."""
    return any(word in key for word in ("grounded", "reward", "return", "advantage"))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_run_py_under_torchrun_resumes_a_killed_run_exactly(uncut, mode, tmp_path, capsys):
    """Two ranks killed mid-window 3 and resumed with --resume auto end with the same logs and final
    weights as an uncut two-rank run: each rank gets back its own problem stream and sampler. With
    FSDP the checkpoint holds whole tensors gathered from the shards."""
    args = [str(ROOT / "recipes/run.py"), *RESUME_ARGS, f"real.cache_dir={uncut['cache']}",
            f"out_dir={tmp_path / 'cut'}", f"real.engine.fsdp={mode == 'fsdp'}"]  # fmt: skip
    killed = torchrun(args, tmp_path, fault="update:5")
    assert killed.returncode != 0 and not list((tmp_path / "cut").glob("*/summary.json"))
    if mode == "ddp":  # a single process may not continue what two ranks wrote
        with pytest.raises(SystemExit) as exc:
            run.main([*args[1:], "--resume", "auto"])
        assert exc.value.code == 2 and "torchrun --nproc_per_node 2" in capsys.readouterr().err
    if mode == "ddp":
        # a run another process holds: rank 0 refuses and tells the others, which stop cleanly (they
        # waited on a collective until torchrun killed them)
        from recipes._rundir import run_lock

        (cut,) = (tmp_path / "cut").iterdir()
        with run_lock(cut):
            held = torchrun([*args, "--resume", "auto"], tmp_path)
        assert held.returncode != 0 and held.stderr.count("is being trained by another process") == 1
        for ours in ("recipes", "atesd", "controllers", "envs"):  # no traceback through our code
            assert f'File "{ROOT / ours}' not in held.stderr, held.stderr[-3000:]
    resumed = torchrun([*args, "--resume", "auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "at window 2" in resumed.stdout
    (logs_a, w_a), (logs_b, w_b) = uncut[mode], outcome(tmp_path / "cut")
    assert logs_a == logs_b
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_torchrun_refuses_to_resume_a_single_process_checkpoint(uncut, tmp_path):
    """Every rank checks the checkpoint before any other collective, and all of them stop with the
    reason: here, a run written by one process cannot continue on two."""
    args = [str(ROOT / "recipes/run.py"), *RESUME_ARGS, f"real.cache_dir={uncut['cache']}",
            f"out_dir={tmp_path / 'single'}"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ATESD_FAULT": "update:5"}
    killed = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    refused = torchrun([*args, "--resume", "auto"], tmp_path)
    assert refused.returncode != 0
    assert "written by 1 process(es)" in refused.stderr and "--nproc_per_node 1" in refused.stderr
    assert refused.stderr.count("error: rank 0 cannot resume") == 2  # both ranks, one line each
    for ours in ("recipes", "atesd", "controllers", "envs"):  # no traceback through our code
        assert f'File "{ROOT / ours}' not in refused.stderr


def test_two_ranks_average_as_one_pooled_batch(tmp_path):
    """Each rank's loss was its own token mean and the gradients were averaged with equal weights, so a
    rank that drew short rollouts weighed each of its tokens more than one process would; gradients of
    two dtypes (a bf16 model's fp32 routers) crashed the flat all-reduce; a per-band update logged rank
    0's own mean alpha and token count."""
    out = torchrun([str(ROOT / "tests/_dist_grads.py"), str(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["tokens"] == 8 and r["pooled_gradient_error"] < 1e-6
        assert r["mixed"] == ["torch.bfloat16", [1.5, 1.5], "torch.float32", [2.0, 2.0]]
    assert ranks[0]["step"] == ranks[1]["step"]  # every statistic the whole batch's, on both ranks
