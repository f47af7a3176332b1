"""Speed and memory benchmark of the engine (a script, not a test; numbers go to docs/BENCHMARKS.md).

    python recipes/bench_speed.py                 # all three sections, ~5 min on 2 cores
    python recipes/bench_speed.py --only loss     # one section: step | sampler | loss | step-vs-trl
    python recipes/bench_speed.py --only step-vs-trl   # ours against TRL's pieces (extra .[bench])
    python recipes/bench_speed.py --only eval-ranks    # the evaluation under torchrun, sharded or whole
    python recipes/bench_speed.py --only fsdp-memory   # peak memory of the FSDP engine's construction
    python recipes/bench_speed.py --only fsdp-load     # ... from a checkpoint: every rank reads it, or rank 0

1. step:    per-phase breakdown of DistillEngine.step on the embedded default (warm-started model
            from the cache when present, else a random one of the same shape).
2. sampler: our KV-cache sampler vs HF `generate`, tokens/s at batch 32, 64 new tokens: forced to
            full length on a random model, and on the embedded task's prompts (rollouts end at EOS).
3. loss:    peak memory of the distillation loss (forward + backward) chunked vs naive at
            V = 151,936 (Qwen3's vocabulary), B*T = 4096, each in a fresh process (peak RSS delta).
            The naive one needs about 22-23 GB of RAM; where less is available it is skipped with the
            --loss-tokens that fits (the ratio is measured at a smaller N then).
4. step-vs-trl: our student update at the default config, as the env runs it (a hold window of 5
            `DistillEngine.step`s, `run_window`), as bare `step` calls, and at equal compute (no probe,
            no grounded score), against the same step built from TRL's pieces
            (recipes/bench_trl_step.py), same process, model, problems and alpha, interleaved in rounds,
            each kind on its own copy of the starting weights; first both losses on one shared batch
            (equal to 1e-5), and the phases (rollout / teacher / update) of ours at equal compute and
            of TRL's pieces. The last line's "ours" is the window's seconds per update. Not part of
            the default run.
5. eval-ranks: `DistillEngine.evaluate` (greedy, the embedded default's 4 bands of 256 problems) under
            torchrun with 2 ranks (gloo, one thread each): sharded, as the env runs it (each rank its
            half of every band), against every rank evaluating everything (one process's
            evaluation, on each rank), alternated, and the largest difference in the numbers. Not part of
            the default run.
6. fsdp-memory: the peak host memory per rank (2 gloo ranks, the CPU standing in for the device)
            while the engine shards the student's decoder layers and makes the frozen teacher's copy:
            a deep copy of the whole student then both sharded (the construction before), against
            `sharded_copy` (a layer at a time) and `DistillEngine(fsdp)` itself; each in fresh torchrun
            children, 3 rounds alternated. Not part of the default run.
7. fsdp-load: the same peak from a checkpoint on disk to the sharded engine: every rank reading the
            checkpoint (`load_hf_model`, as before), against the builder's way (`load_on_rank0`: rank 0
            reads it, the others build the model on the meta device and get rank 0's weights as the
            engine shards them); then, after one update, the peak while each rank resumes from a run
            checkpoint of the engine's state (every rank reading all of it, or the other ranks leaving
            the weights and moments unread, as run.py does under FSDP); fresh torchrun children, 3
            rounds alternated. Not part of the default run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipes._speed_report import (  # noqa: E402
    print_eval_ranks,
    print_fsdp_load,
    print_fsdp_memory,
    print_loss,
    print_sampler_embedded,
    print_sampler_forced,
    print_step,
    print_step_vs_trl,
)

if TYPE_CHECKING:
    from rich.console import Console


def embedded_engine(threads: int, compile: bool = False, dist=None):
    """The embedded default's engine on the cached warm start (or a random model of the same shape);
    `compile` turns on the sampler's torch.compile (engine.sampling.compile), all else the default;
    `dist` under torchrun."""
    from atesd.engine import DistillEngine, EngineConfig
    from atesd.models import TinyModelConfig, build_synthetic_tokenizer, build_tiny_qwen3, load_pretrained
    from atesd.tasks.synthetic import ChainBagTask
    from atesd.warmstart import WarmStartConfig, locate

    torch.set_num_threads(threads)
    task = ChainBagTask()
    path, _ = locate(task.cfg, TinyModelConfig(), WarmStartConfig())
    if path is not None:
        model, tokenizer = load_pretrained(path)
        source = f"warm-started checkpoint {path.name}"
    else:
        tokenizer = build_synthetic_tokenizer()
        model, source = (
            build_tiny_qwen3(tokenizer),
            "random init (the shipped warm start is missing: reinstall, or run recipes/sweep.py once)",
        )
    cfg = EngineConfig()
    cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, compile=compile))
    return DistillEngine(model, tokenizer, task, cfg, dist=dist), source


def eval_ranks_child(rounds: int) -> None:
    """Run by `bench_eval_ranks` under torchrun: times the sharded and the whole evaluation, alternated;
    rank 0 prints one JSON line."""
    from atesd.distributed import Dist

    dist = Dist.from_env()
    engine, source = embedded_engine(1, dist=dist)
    engine.reseed(0)
    times: dict[str, list[float]] = {"sharded": [], "whole": []}
    results = {}
    for _ in range(rounds):
        for kind in times:
            engine.dist = dist if kind == "sharded" else Dist.single()
            t0 = time.perf_counter()
            results[kind] = engine.evaluate()
            times[kind].append(dist.mean([time.perf_counter() - t0])[0])  # the ranks' mean wall time
    engine.dist = dist
    if dist.is_main:
        print(json.dumps({"times": times, "results": results, "model": source, "world": dist.world_size}))
    dist.close()


def torchrun_child(args: list[str], **env: str) -> dict:
    """This script under torchrun with 2 ranks (one thread each, `env` added) and `args`; the JSON
    line rank 0 prints last. RuntimeError with the child's stderr tail if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), *args]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}
    )
    if done.returncode != 0:
        raise RuntimeError(f"the torchrun child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_eval_ranks(rounds: int) -> dict:
    r = torchrun_child(["--eval-ranks-child", str(rounds)])
    r["ratio"] = float(np.mean(r["times"]["whole"]) / np.mean(r["times"]["sharded"]))
    # greedy rows in other batches: equal unless a near-tie's argmax moves with the batch's padding
    whole, sharded = r["results"]["whole"], r["results"]["sharded"]
    r["largest_difference"] = max(abs(whole[k] - sharded[k]) for k in whole)
    return r


def _start_peak() -> float:
    """Start a peak-memory measurement in this process: VmHWM := VmRSS (Linux's clear_refs); returns
    VmRSS in MB. Not ru_maxrss: Linux keeps a process's high-water mark across exec, so a child of a
    large process (a bench that ran other sections first, a pytest worker) starts at its parent's size
    and hides a smaller peak of its own (a 790 MB peak read as 0)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_mb("VmRSS")


def _rss_mb(field: str) -> float:
    """This process's resident set (VmRSS) or its peak (VmHWM) in MB, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


FSDP_VARIANTS = ("deepcopy", "layerwise", "engine")


def fsdp_memory_child(variant: str, layers: int) -> None:
    """Run by `bench_fsdp_memory` under torchrun: one rank's peak host memory while the student's layers
    and the frozen teacher's are sharded (the CPU stands in for the device). `variant`: `deepcopy`
    (the construction before: a deep copy of the whole student, then both sharded), `layerwise`
    (`sharded_copy`, then the student sharded) or `engine` (`DistillEngine` with engine.fsdp, which
    does the latter); rank 0 prints one JSON line."""
    import copy
    import ctypes

    from atesd.distributed import Dist, shard_layers, sharded_copy
    from atesd.engine import DistillEngine, EngineConfig
    from atesd.models import build_synthetic_tokenizer, build_tiny_qwen3, num_parameters
    from atesd.tasks.synthetic import ChainBagTask

    torch.set_num_threads(1)
    dist = Dist.from_env()
    tokenizer = build_synthetic_tokenizer()
    model = build_tiny_qwen3(tokenizer, _fsdp_shape(layers))
    task = ChainBagTask()
    dist.mean([0.0])  # the group's first collective, before measuring
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _start_peak()
    if variant == "engine":
        engine = DistillEngine(model, tokenizer, task, EngineConfig(fsdp=True), dist=dist)
        teacher = engine.teacher.copy
    elif variant == "deepcopy":
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        shard_layers(model, dist)
        shard_layers(teacher, dist)
    else:
        teacher = sharded_copy(model, dist)
        shard_layers(model, dist)
    peak, after = _rss_mb("VmHWM"), _rss_mb("VmRSS")
    model_mb = num_parameters(model) * 4 / 2**20
    layer_mb = (
        sum(p.numel() for p in next(iter(model.model.layers)).parameters()) * 4 / 2**20 / dist.world_size
    )
    out = dist.gather_objects({"peak": peak - before, "after": after - before})
    if dist.is_main:
        print(
            json.dumps(
                {"ranks": out, "model_mb": model_mb, "layer_shard_mb": layer_mb, "world": dist.world_size}
            )
        )
    del teacher, model
    dist.close()


FSDP_LOADS = ("every-rank", "rank0")


def _fsdp_shape(layers: int):
    from atesd.models import TinyModelConfig

    return TinyModelConfig(
        num_layers=layers, hidden_size=512, num_heads=8, num_kv_heads=4, intermediate_size=2048
    )


def fsdp_load_child(variant: str, checkpoint: str) -> None:
    """Run by `bench_fsdp_load` under torchrun: one rank's peak host memory from the checkpoint on disk
    to the FSDP engine, then (after one update, so that AdamW has its moments) while it resumes from a
    checkpoint of its state (`atesd.checkpoint`, as run.py writes and reads it). `variant`:
    `every-rank` (each rank loads the model and the whole run checkpoint, as before) or `rank0` (the
    builder's `load_on_rank0`; the other ranks read the run checkpoint without the weights and
    optimiser state, as run.py does under FSDP); rank 0 prints one JSON line."""
    import ctypes

    from atesd import checkpoint as ckpt
    from atesd.builder import RealConfig, load_on_rank0
    from atesd.distributed import Dist
    from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
    from atesd.models import HFModelConfig, LoraSettings, load_hf_model, num_parameters
    from atesd.tasks.synthetic import ChainBagTask

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    dist = Dist.from_env()
    cfg = RealConfig(hf=HFModelConfig(name_or_path=checkpoint, dtype="float32"), lora=LoraSettings(rank=0))
    dist.mean([0.0])  # the group's first collective, before measuring
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _start_peak()
    if variant == "rank0":
        model, tokenizer = load_on_rank0(cfg, dist)
    else:
        model, tokenizer = load_hf_model(cfg.hf, cfg.lora, "cpu")
    engine_cfg = EngineConfig(fsdp=True, batch_size=2, sampling=SamplingConfig(max_new_tokens=8))
    engine = DistillEngine(model, tokenizer, ChainBagTask(), engine_cfg, dist=dist, device="cpu")
    peak, after = _rss_mb("VmHWM"), _rss_mb("VmRSS")
    engine.step(0.5)
    run_dir = Path(checkpoint).parent / f"run-{variant}"
    state = {"env": {"engine": engine.state_dict()}}  # whole tensors on rank 0, as run.py saves them
    if dist.is_main:
        ckpt.save(run_dir, 1, state)
    del state
    dist.mean([0.0])  # the checkpoint is written
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before_resume = _start_peak()
    anon, mapped = _rss_mb("RssAnon"), _rss_mb("RssFile")
    pruned = variant == "rank0" and not dist.is_main
    prune = [f"/env/engine/{p}" for p in DistillEngine.RANK0_PARTS] if pruned else []
    resumed = ckpt.load(run_dir / "ckpt-000001", prune=prune, verify=False)
    engine.load_state_dict(resumed["env"]["engine"])
    # the state's arrays are mappings of the checkpoint file (safetensors), resident once read: file
    # pages the kernel may drop again; what is copied is anonymous memory
    anon, mapped = _rss_mb("RssAnon") - anon, _rss_mb("RssFile") - mapped
    del resumed
    resume = _rss_mb("VmHWM") - before_resume
    out = dist.gather_objects(
        {"peak": peak - before, "after": after - before, "resume": resume, "anon": anon, "file": mapped}
    )
    if dist.is_main:
        model_mb = num_parameters(engine.student) * 4 / 2**20
        print(json.dumps({"ranks": out, "model_mb": model_mb, "world": dist.world_size}))
    del engine, model
    dist.close()


def bench_fsdp_load(layers: int, rounds: int, variants: tuple[str, ...] = FSDP_LOADS) -> dict:
    """A random Qwen3 of `layers` layers (width 512) saved once; each variant in fresh torchrun children
    (2 gloo ranks), alternated `rounds` times."""
    import tempfile

    from atesd.models import build_synthetic_tokenizer, build_tiny_qwen3, save_pretrained

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_synthetic_tokenizer()
        # saved in bfloat16 and loaded in float32, as a hub checkpoint is fully fine-tuned (USAGE.md): the
        # float32 copy is each loading rank's own memory (a checkpoint loaded in its own dtype is a
        # mapping of the file, whose pages the ranks share through the page cache)
        model = build_tiny_qwen3(tokenizer, _fsdp_shape(layers)).to(torch.bfloat16)
        save_pretrained(model, tokenizer, tmp)
        for _ in range(rounds):
            for variant in runs:
                args = ["--fsdp-load-child", variant, tmp]
                runs[variant].append(torchrun_child(args, MALLOC_MMAP_THRESHOLD_="65536"))
    return runs


def bench_fsdp_memory(layers: int, rounds: int, variants: tuple[str, ...] = FSDP_VARIANTS) -> dict:
    """Each variant in fresh torchrun children (2 gloo ranks), alternated `rounds` times."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in runs:
            # a fixed mmap threshold: glibc returns every freed tensor's pages at once (its default
            # threshold grows after the first free, so later frees would stay in the heap, resident)
            args = ["--fsdp-memory-child", variant, str(layers)]
            runs[variant].append(torchrun_child(args, MALLOC_MMAP_THRESHOLD_="65536"))
    return runs


def bench_step(steps: int, alpha: float, threads: int) -> dict:
    engine, source = embedded_engine(threads)
    engine.step(alpha)  # warm-up
    stats = [engine.step(alpha) for _ in range(steps)]
    phases = ("rollout_s", "teacher_s", "update_s", "probe_s", "total_s")
    out = {p: float(np.mean([getattr(s, p) for s in stats])) for p in phases}
    out |= {"tokens_per_step": float(np.mean([s.num_tokens for s in stats])), "model": source}
    out["tokens_per_s"] = out["tokens_per_step"] / out["total_s"]
    return out


def bench_sampler_embedded(threads: int, repeats: int, temperature: float, compile: bool = False) -> dict:
    """Ours vs generate on 32 student prompts of the embedded task (rollouts end at EOS)."""
    from bench_sampler import bench_sampler

    engine, source = embedded_engine(threads)
    problems = engine.task.sample(np.random.default_rng(0), 32)
    prompts = [engine.builder.encode(engine.builder.student_prompt(p)) for p in problems]
    tok = engine.tokenizer
    r = bench_sampler(
        engine.student,
        prompts,
        64,
        repeats,
        [tok.eos_token_id],
        temperature,
        tok.pad_token_id,
        compile=compile,
    )
    return r | {"model": source}


def bench_sampler_section(threads: int, repeats: int, compile: bool = False) -> dict:
    from bench_sampler import bench_sampler, build_model, make_prompts

    torch.set_num_threads(threads)
    model = build_model()
    prompts = make_prompts(32, model.config.vocab_size, seed=0)
    return bench_sampler(model, prompts, max_new_tokens=64, repeats=repeats, compile=compile)


def loss_child(variant: str, n: int, vocab: int, hidden: int, chunk: int) -> None:
    """Runs in a fresh process: one forward + backward, prints peak RSS growth in MB."""
    from atesd.losses import LossConfig, chunked_distill_loss, naive_distill_loss

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    s_h = torch.randn(n, hidden, generator=g).requires_grad_()
    t_h = torch.randn(n, hidden, generator=g)
    head = (torch.randn(vocab, hidden, generator=g) * 0.02).requires_grad_()
    t_head = head.detach().clone()
    mask = torch.ones(n, dtype=torch.bool)
    cfg = LossConfig(kind="forward_kl", clip_tau=0.05, chunk_size=chunk)
    fn = chunked_distill_loss if variant == "chunked" else naive_distill_loss
    before = _start_peak()
    t0 = time.perf_counter()
    out = fn(s_h, t_h, head, t_head, mask, cfg)
    out.loss.backward()
    seconds = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    print(json.dumps({"peak_mb": peak - before, "seconds": seconds, "loss": float(out.loss.detach())}))


# peak RSS growth per (positions x vocabulary) element of the loss's (N, V) tensors, forward +
# backward, naive (docs/BENCHMARKS.md): 36.8 bytes at N = 4096 (21,816 MB), 39.1 at N = 2048 (11,590 MB)
LOSS_BYTES_PER_LOGIT = 40


def available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), else None (not checked)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def bench_loss(n: int, vocab: int, hidden: int, chunk: int) -> dict:
    """Each variant in its own process; a variant whose estimated peak exceeds the memory available
    is skipped (the naive one at N = 4096 needs about 22 GB: the kernel would kill it, or a neighbour),
    and a child that fails is reported in one line: {"skipped"| "failed": reason}."""
    out: dict = {}
    for variant in ("chunked", "naive"):
        rows = n if variant == "naive" else min(chunk, n)
        need = LOSS_BYTES_PER_LOGIT * rows * vocab / 2**20
        free = available_mb()
        if free is not None and need > 0.9 * free:
            fits = int(0.9 * free * 2**20 / (LOSS_BYTES_PER_LOGIT * vocab))
            out[variant] = {
                "skipped": f"needs about {need / 1024:.1f} GB, {free / 1024:.1f} GB available "
                "(a tenth kept free); "
                f"--loss-tokens {max(fits // 256 * 256, 1)} fits"
            }
            continue
        cmd = [sys.executable, __file__, "--loss-child", variant, str(n), str(vocab), str(hidden), str(chunk)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            how = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit {res.returncode}"
            last = (res.stderr.strip().splitlines() or [""])[-1]
            hint = " (out of memory?)" if res.returncode in (-9, 137) else ""
            out[variant] = {"failed": f"{how}{hint}; needs about {need / 1024:.1f} GB. {last}".strip()}
            continue
        out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    measured = all("peak_mb" in out[v] for v in ("chunked", "naive")) and out["naive"]["peak_mb"] > 0
    out["ratio"] = out["chunked"]["peak_mb"] / out["naive"]["peak_mb"] if measured else None
    out["same_loss"] = abs(out["chunked"]["loss"] - out["naive"]["loss"]) < 1e-4 if measured else None
    return out


def parse_args() -> argparse.Namespace:
    """The command line: which section, its sizes, and the hidden options that start a child."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=["step", "sampler", "loss", "step-vs-trl", "eval-ranks", "fsdp-memory", "fsdp-load"],
        default=None,
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="step-vs-trl: our sampler compiled (compile in the warm-up)"
    )
    parser.add_argument("--steps", type=int, default=10, help="engine steps timed (step-vs-trl: at least 20)")
    parser.add_argument(
        "--fsdp-layers", type=int, default=16, help="fsdp-memory, fsdp-load: the model's decoder layers"
    )
    parser.add_argument("--repeats", type=int, default=5, help="sampler repeats (best of)")
    parser.add_argument(
        "--loss-tokens",
        type=int,
        default=4096,
        help="loss: positions N = B*T (the naive variant needs about 40 * N * 151,936 bytes: 23 GB at 4096)",
    )
    parser.add_argument("--loss-child", nargs=5, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eval-ranks-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fsdp-memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fsdp-load-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loss_tokens < 1:
        parser.error(f"--loss-tokens must be >= 1, got {args.loss_tokens}")
    return args


def run_child(args: argparse.Namespace) -> bool:
    """Runs the child a hidden option names (loss, eval-ranks, fsdp-memory, fsdp-load); False if none."""
    if args.loss_child:
        variant, *nums = args.loss_child
        loss_child(variant, *map(int, nums))
        return True
    if args.eval_ranks_child is not None:
        eval_ranks_child(args.eval_ranks_child)
        return True
    if args.fsdp_memory_child:
        fsdp_memory_child(args.fsdp_memory_child[0], int(args.fsdp_memory_child[1]))
        return True
    if args.fsdp_load_child:
        fsdp_load_child(*args.fsdp_load_child)
        return True
    return False


def run_sampler(console: Console, threads: int, repeats: int) -> None:
    """The sampler section, eager then compiled: the random model forced, then the embedded task's prompts."""
    transformers.logging.set_verbosity_error()
    for compile in (False, True):
        print_sampler_forced(console, bench_sampler_section(threads, repeats, compile), compile, threads)
        for temperature in (0.0, 1.0):
            r = bench_sampler_embedded(threads, repeats, temperature, compile)
            print_sampler_embedded(console, r, compile, temperature)


def run_step_vs_trl(console: Console, threads: int, compile: bool, steps: int) -> int:
    """The step-vs-trl section; exit code 1 if the two sides' losses on the shared batch differ."""
    from bench_trl_step import generalized_jsd_loss, step_vs_trl

    generalized_jsd_loss()  # the missing extra, before any model loads
    engine, source = embedded_engine(threads, compile=compile)
    r = step_vs_trl(engine, 0.5, max(steps, 20))
    print_step_vs_trl(console, r, engine.cfg.batch_size, threads, compile, source)
    if not r["same_loss"]:
        print("error: the two sides' losses differ by more than 1e-5", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """A child's work if one is asked for, else the sections `--only` names (default: step, sampler, loss)."""
    args = parse_args()
    if run_child(args):
        return 0
    from rich.console import Console

    console = Console()
    if args.only in (None, "step"):
        print_step(console, bench_step(args.steps, 0.5, args.threads), args.threads)
    if args.only in (None, "sampler"):
        run_sampler(console, args.threads, args.repeats)
    if args.only in (None, "loss"):
        print_loss(console, bench_loss(args.loss_tokens, 151_936, 256, 512), args.loss_tokens)
    if args.only == "eval-ranks":
        print_eval_ranks(console, bench_eval_ranks(3))
    if args.only == "fsdp-memory":
        print_fsdp_memory(console, bench_fsdp_memory(args.fsdp_layers, 3), args.fsdp_layers)
    if args.only == "fsdp-load":
        print_fsdp_load(console, bench_fsdp_load(args.fsdp_layers, 3), args.fsdp_layers)
    if args.only == "step-vs-trl":
        return run_step_vs_trl(console, args.threads, args.compile, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
