"""The lines bench_speed.py prints (docs/BENCHMARKS.md quotes them): one function per section, from
the result that section's bench returned. It measures nothing and reads no options: a header's
settings (threads, layers, positions) come in as arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console

SAMPLER_KEYS = ("hf_tokens_per_s", "ours_tokens_per_s", "speedup", "outputs_equal", "full_length")
PHASES = ("rollout_s", "teacher_s", "update_s")


def _fmt(key: str, value: object) -> str:
    """`key value`, a float to 2 decimals."""
    return f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"


def print_step(console: Console, r: dict, threads: int) -> None:
    """The step section: each phase's seconds and share of the step, then the rollout tokens."""
    console.print(f"[bold]engine step[/] (batch 32, alpha 0.5, {threads} threads; {r['model']})")
    for key in ("rollout_s", "teacher_s", "update_s", "probe_s", "total_s"):
        console.print(f"  {key:10s} {r[key]:.3f} s  ({100 * r[key] / r['total_s']:.0f}%)")
    console.print(
        f"  {r['tokens_per_step']:.0f} rollout tokens per step, {r['tokens_per_s']:.0f} tokens/s end to end"
    )


def print_sampler_forced(console: Console, r: dict, compile: bool, threads: int) -> None:
    """The sampler section on the random model, every row forced to 64 new tokens."""
    console.print(
        f"[bold]sampler[/] compile={compile}: batch 32, 64 new tokens forced (no EOS), greedy, "
        f"{threads} threads, random model"
    )
    console.print("  " + ", ".join(_fmt(k, r[k]) for k in SAMPLER_KEYS))


def print_sampler_embedded(console: Console, r: dict, compile: bool, temperature: float) -> None:
    """The sampler section on the embedded task's prompts at one temperature (rollouts end at EOS)."""
    console.print(
        f"[bold]sampler[/] compile={compile}: batch 32, max 64 new tokens, embedded task "
        f"prompts, rollouts end at EOS, temperature {temperature:g} ({r['model']})"
    )
    console.print("  " + ", ".join(_fmt(k, r[k]) for k in SAMPLER_KEYS))


def print_loss(console: Console, r: dict, loss_tokens: int) -> None:
    """The loss section: each variant's peak, time and loss (or why it did not run), then the ratio."""
    console.print(
        f"[bold]loss memory[/] forward KL + clip, N = B*T = {loss_tokens:,}, V = 151,936, H = 256, chunk 512"
    )
    for variant in ("chunked", "naive"):
        c = r[variant]
        if "peak_mb" not in c:
            (how, why), *_ = c.items()
            console.print(f"  {variant:8s} {how}: {why}")
            continue
        console.print(
            f"  {variant:8s} peak +{c['peak_mb']:.0f} MB  {c['seconds']:.1f} s  loss {c['loss']:.6f}"
        )
    if r["ratio"] is not None:
        console.print(f"  chunked / naive peak = {100 * r['ratio']:.1f}%  (same loss: {r['same_loss']})")


def print_eval_ranks(console: Console, r: dict) -> None:
    """The eval-ranks section: each round's seconds, whole and sharded, then the summary line."""
    whole, sharded = (np.mean(r["times"][k]) for k in ("whole", "sharded"))
    console.print(
        f"[bold]evaluation under torchrun[/] ({r['world']} ranks, gloo, 1 thread each, greedy, 4 bands "
        f"of 256; {r['model']}; seconds per evaluation, mean over ranks, 3 rounds alternated)"
    )
    for label, kind in (("every rank evaluates everything", "whole"), ("each rank its shard", "sharded")):
        console.print(f"  {label + ':':34s}" + ", ".join(f"{t:.2f}" for t in r["times"][kind]))
    print(
        f"eval-ranks: whole {whole:.2f} s, sharded {sharded:.2f} s, ratio {r['ratio']:.2f}x, "
        f"largest difference in accuracy {r['largest_difference']:.4f}"
    )


def print_fsdp_memory(console: Console, runs: dict, layers: int) -> None:
    """The fsdp-memory section: each construction's median peak per rank, then the summary line."""
    first = runs["engine"][0]
    console.print(
        f"[bold]FSDP construction, peak host memory[/] ({first['world']} gloo ranks, the CPU as the "
        f"device; a random Qwen3 of {layers} layers, width 512: {first['model_mb']:.0f} MB in "
        f"float32, {first['layer_shard_mb']:.1f} MB per layer shard; MB above the resident set before, "
        "per rank, 3 fresh runs each, alternated)"
    )
    labels = {
        "deepcopy": "deep copy of the whole student, then both sharded",
        "layerwise": "sharded_copy (a layer at a time), then the student sharded",
        "engine": "DistillEngine(engine.fsdp=true)",
    }
    summary = {}
    for variant, label in labels.items():
        peaks = [r["peak"] for run in runs[variant] for r in run["ranks"]]
        afters = [r["after"] for run in runs[variant] for r in run["ranks"]]
        summary[variant] = float(np.median(peaks))
        console.print(
            f"  {label + ':':62s} peak +{summary[variant]:.0f} MB (median; "
            f"{min(peaks):.0f}-{max(peaks):.0f}), after +{float(np.median(afters)):.0f} MB"
        )
    print(
        f"fsdp-memory: model {first['model_mb']:.0f} MB, construction peak deepcopy "
        f"+{summary['deepcopy']:.0f} MB, layerwise +{summary['layerwise']:.0f} MB, "
        f"engine +{summary['engine']:.0f} MB per rank"
    )


def print_fsdp_load(console: Console, runs: dict, layers: int) -> None:
    """The fsdp-load section: each way's and rank's median peak and resume, then the summary line."""
    first = runs["rank0"][0]
    console.print(
        f"[bold]FSDP from a checkpoint, peak host memory[/] ({first['world']} gloo ranks, the CPU as "
        f"the device; a random Qwen3 of {layers} layers, width 512, saved in bfloat16 and "
        f"loaded in float32: {first['model_mb']:.0f} MB; MB above the resident set before, per rank, 3 "
        "fresh runs each, alternated)"
    )
    labels = {"every-rank": "every rank reads the checkpoint", "rank0": "rank 0 reads it (load_on_rank0)"}
    summary = {}
    for variant, label in labels.items():
        for rank in range(first["world"]):
            peaks = [run["ranks"][rank]["peak"] for run in runs[variant]]
            afters = [run["ranks"][rank]["after"] for run in runs[variant]]
            resumes = [run["ranks"][rank]["resume"] for run in runs[variant]]
            anon = float(np.median([run["ranks"][rank]["anon"] for run in runs[variant]]))
            mapped = float(np.median([run["ranks"][rank]["file"] for run in runs[variant]]))
            summary[variant, rank] = float(np.median(peaks))
            summary[variant, rank, "resume"] = float(np.median(resumes))
            console.print(
                f"  {label + ',':34s} rank {rank}: peak +{summary[variant, rank]:.0f} MB (median; "
                f"{min(peaks):.0f}-{max(peaks):.0f}), after +{float(np.median(afters)):.0f} MB; resuming "
                f"+{summary[variant, rank, 'resume']:.0f} MB ({min(resumes):.0f}-{max(resumes):.0f}; "
                f"held once loaded: +{anon:.0f} MB anonymous, +{mapped:.0f} MB of file pages)"
            )
    ranks = range(first["world"])
    print(
        f"fsdp-load: model {first['model_mb']:.0f} MB, peak per rank every-rank "
        + " / ".join(f"+{summary['every-rank', r]:.0f}" for r in ranks)
        + " MB, rank0 "
        + " / ".join(f"+{summary['rank0', r]:.0f}" for r in ranks)
        + " MB; resuming every-rank "
        + " / ".join(f"+{summary['every-rank', r, 'resume']:.0f}" for r in ranks)
        + " MB, rank0 "
        + " / ".join(f"+{summary['rank0', r, 'resume']:.0f}" for r in ranks)
        + " MB"
    )


def _ci(r: dict, key: str) -> str:
    """A step-vs-trl ratio's per-round mean and 95% t interval, as printed."""
    mean, low, high = r[key]
    return f"per-round ratio {mean:.2f}x [{low:.2f}, {high:.2f}] (95% t, {r['rounds']} rounds)"


def print_step_vs_trl(
    console: Console, r: dict, batch_size: int, threads: int, compile: bool, source: str
) -> None:
    """The step-vs-trl section: both losses on one batch, the phases, then each of our kinds against TRL's."""
    console.print(
        f"[bold]step vs TRL pieces[/] (batch {batch_size}, alpha 0.5, {threads} threads, "
        f"sampler compile={compile}, lean decode={r['lean_decode']}, probe overlapped="
        f"{r['overlapped']}; {r['steps']} updates of each kind, interleaved in {r['rounds']} rounds of "
        f"{r['hold']}, each on its own copy of the starting weights and one problem stream; {source})"
    )
    console.print(
        f"  loss on one shared batch: ours {r['ours_loss']:.7f}, trl generalized_jsd_loss "
        f"(beta {r['beta']:g}) {r['trl_loss']:.7f}, equal to 1e-5: {r['same_loss']}"
    )
    console.print(
        "  ours by phase, per update of the windows (rollout_s includes waiting for the probe beside "
        "it; probe_s of an overlapped update is not extra wall time): "
        + ", ".join(f"{k} {v:.3f}" for k, v in r["ours_phases"].items())
    )
    console.print(
        "  by phase at equal compute, seconds per update (rollout / teacher / update): ours "
        + " / ".join(f"{r['equal_phases'][k]:.3f}" for k in PHASES)
        + ", TRL's pieces "
        + " / ".join(f"{r['trl_phases'][k]:.3f}" for k in PHASES)
        + ", TRL's over ours "
        + " / ".join(f"{r['trl_phases'][k] / r['equal_phases'][k]:.2f}x" for k in PHASES)
    )
    console.print(
        "  rollout tokens per update: " + ", ".join(f"{k} {v:.1f}" for k, v in r["tokens_per_update"].items())
    )
    console.print(f"  ours as the env runs it (hold windows): {r['ours_s']:.3f} s, {_ci(r, 'ratio_ci')}")
    console.print(
        f"  ours as bare DistillEngine.step calls (every probe in line): {r['step_s']:.3f} s, "
        f"ratio {r['step_ratio']:.2f}x, {_ci(r, 'step_ratio_ci')}"
    )
    console.print(
        f"  ours at equal compute (no probe NLL, no grounded score: what TRL's pieces compute): "
        f"{r['equal_s']:.3f} s, ratio {r['equal_ratio']:.2f}x, {_ci(r, 'equal_ratio_ci')}"
    )
    print(f"step-vs-trl: ours {r['ours_s']:.3f} s, trl-pieces {r['trl_s']:.3f} s, ratio {r['ratio']:.2f}x")
