"""bench_speed.py's loss section: a variant that does not fit the memory available is skipped, and a
child that dies is one line, not a traceback (the naive child needs about 22 GB); its eval-ranks,
fsdp-memory and fsdp-load sections run under torchrun."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import bench_speed  # noqa: E402


def test_the_loss_section_measures_both_variants_where_they_fit(monkeypatch):
    monkeypatch.setattr(bench_speed, "available_mb", lambda: None)  # not Linux: not checked
    # the caller larger than the children (a bench after its other sections, a pytest worker): each
    # child measures its own peak, not the high-water mark Linux keeps from its parent across exec
    held = torch.ones(2**28)  # 1 GiB, written: resident
    # naive: (1024, 20,000) fp32 tensors, about 700 MB; chunks this small stay on the heap (below
    # glibc's mmap threshold), so the chunked peak is not the full-size 14% but still below naive's
    r = bench_speed.bench_loss(1024, 20_000, 8, 16)
    del held
    assert r["naive"]["peak_mb"] > 300 and r["same_loss"] is True
    assert 0 < r["chunked"]["peak_mb"] < r["naive"]["peak_mb"]


def test_a_variant_that_does_not_fit_is_skipped_with_the_size_that_fits(monkeypatch):
    # naive needs 40 * 64 * 1000 bytes (2.4 MB), chunked 40 * 16 * 1000 (0.6 MB): 2 MB available
    monkeypatch.setattr(bench_speed, "available_mb", lambda: 2.0)
    r = bench_speed.bench_loss(64, 1000, 8, 16)
    assert "peak_mb" in r["chunked"] and r["ratio"] is None and r["same_loss"] is None
    assert r["naive"]["skipped"].startswith("needs about") and "--loss-tokens" in r["naive"]["skipped"]


def test_a_child_killed_for_memory_is_one_line(monkeypatch):
    monkeypatch.setattr(bench_speed, "available_mb", lambda: None)
    killed = subprocess.CompletedProcess([], -9, stdout="", stderr="")
    monkeypatch.setattr(bench_speed.subprocess, "run", lambda *a, **k: killed)
    r = bench_speed.bench_loss(64, 1000, 8, 16)
    assert r["naive"]["failed"].startswith("killed by signal 9 (out of memory?)") and r["ratio"] is None


@pytest.mark.slow
def test_the_eval_ranks_section_times_both_evaluations_under_torchrun():
    """The section's torchrun child runs (two gloo ranks on the shipped warm start) and reports both
    evaluations of every band; how fast each is, is the benchmark's to say, not a test's."""
    r = bench_speed.bench_eval_ranks(1)
    assert r["world"] == 2 and [len(r["times"][k]) for k in ("whole", "sharded")] == [1, 1]
    bands = {f"accuracy/{b}" for b in ("C6", "B4", "M44", "M64")}
    assert set(r["results"]["whole"]) == set(r["results"]["sharded"]) == bands
    assert r["ratio"] > 0 and 0 <= r["largest_difference"] <= 1


@pytest.mark.slow
def test_the_fsdp_memory_section_measures_each_rank_under_torchrun():
    """The section's torchrun child builds the FSDP engine on two gloo ranks and reports each rank's
    peak. The frozen teacher's layer shards are new on every rank (a measurement that misses them is
    broken); a whole copy of the model, the construction before (each rank's peak then passed the
    model's size), is not: the layer-wise copy adds half the layers and one layer in flight."""
    r = bench_speed.bench_fsdp_memory(8, 1, ("engine",))
    (run,) = r["engine"]
    assert run["world"] == 2 and len(run["ranks"]) == 2 and run["model_mb"] > run["layer_shard_mb"] > 0
    assert all(8 * run["layer_shard_mb"] <= rank["peak"] < 0.8 * run["model_mb"] for rank in run["ranks"]), r


@pytest.mark.slow
def test_the_fsdp_load_section_finds_rank_1_holding_its_shards_alone():
    """From a checkpoint saved in bfloat16 and loaded in float32 (USAGE.md's full fine-tune): a rank
    that reads it (rank 0) holds the whole float32 model at its peak, beside its shards of the student
    and the teacher (the CPU stands in for the device); under `load_on_rank0` rank 1 holds its shards
    alone (every rank held what rank 0 holds)."""
    r = bench_speed.bench_fsdp_load(8, 1, ("rank0",))  # rank 0 reads it as every rank did (the baseline)
    (rank0,) = r["rank0"]
    model = rank0["model_mb"]
    assert rank0["world"] == 2
    assert (
        rank0["ranks"][0]["peak"] > 1.3 * model and 0.9 * model < rank0["ranks"][1]["peak"] < 1.2 * model
    ), r
    # resuming from a checkpoint of the run (weights, teacher and AdamW moments: 4 models' worth): rank 0
    # reads it (file pages) to broadcast, copying none of it (a deep copy made 4 models of copies on every
    # rank: a peak of 8 on rank 0); the other ranks leave it unread
    assert 3 * model < rank0["ranks"][0]["file"] <= rank0["ranks"][0]["resume"] < 5 * model, r
    assert rank0["ranks"][1]["resume"] < 0.1 * model, r
