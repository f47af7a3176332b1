"""Evaluate a model on a task: Average@n, unbiased pass@k, majority vote, format rate (and greedy accuracy).

    python recipes/eval.py                                       # embedded warm-started model, synthetic task
    python recipes/eval.py --model Qwen/Qwen3-1.7B --task aime24 real.device=cuda real.hf.dtype=bfloat16 \\
        sampling.batch_size=16    # KV cache of 16 rows x 39k positions: ~67 GiB (or sampling.backend=vllm)
    python recipes/eval.py --model runs/my_ckpt --task my_set.jsonl --pass-k 1,4,8 --greedy --seed 1

Samples n completions per problem from the student prompt (question only, the tokenizer's chat
template) with the project's sampler, batched over problems x samples and seeded by one explicit
torch.Generator, so a run repeats exactly under the same `--seed` (and batch size). Grading is the
task's own verifier. The sampling defaults are docs/METHOD.md §4 (temperature 1.0, top-p 0.95,
thinking on, n = 12, up to 38,912 new tokens) on a math benchmark; on the synthetic task
`sampling.samples=0` and `sampling.max_new_tokens=0` mean n = 4 and 96 tokens (its solutions are at
most 63 tokens at the default bands), so the default run, the 4 x 256 problems of the embedded eval sets x 4
samples, takes about 20 s on one CPU core. maj@n grades the voted answer alone (on the synthetic
task the headline `correct` also needs a valid path, so maj@n can exceed pass@n there).

Writes `runs/eval__<task>__<time>/` (never reused): config.json (with the resolved sampling; `--config`
reads it back to repeat the evaluation) first;
problems.jsonl (one line per problem: its samples' text, extracted answer and correctness, c and n,
pass@k, the majority vote, the greedy completion) one chunk of problems at a time, each chunk fsynced
and followed by sampling_state.json (problems done, the generator's state; replaced atomically); at
the end summary.json (the metrics per evaluation set and over all problems, pooled, computed from
problems.jsonl), and prints a table (rich on a terminal, plain text otherwise). A chunk is the fewest
whole problems whose samples fill whole sampler batches, so the samples are those of one stream.
Stopped early (Ctrl-C, a crash, CUDA OOM), it keeps what is done and prints how to continue:

    python recipes/eval.py --resume runs/eval__aime24__<time>     # the same results as never stopping

A directory with no problem done is removed.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atesd import config as cfglib  # noqa: E402
from atesd.builder import build_backend, build_student, check_backend, position_limit  # noqa: E402
from atesd.engine_config import SamplingConfig  # noqa: E402
from atesd.eval_records import generate, problem_record, sample_record  # noqa: E402
from atesd.evaluation import summarize  # noqa: E402
from atesd.exposure import ExposureConfig, PromptBuilder  # noqa: E402
from atesd.rollout import RolloutBackend  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from atesd.tasks.base import Problem, Task, Verdict  # noqa: E402
from recipes._evalconfig import (  # noqa: E402
    TASKS_HELP,
    UNREAD,
    EvalConfig,
    absolute_inputs,
    config_record,
    eval_inputs,
    load_task,
    resolve_config,
    resume_config,
)
from recipes._evalstate import (  # noqa: E402
    PROBLEMS,
    STATE,
    SUMMARY,
    read_records,
    read_state,
    restore,
    save_state,
)
from recipes._progress import discard_dir, fresh_dir, user_errors, warmstart_progress  # noqa: E402
from recipes._rundir import changed_inputs, record_inputs, run_lock  # noqa: E402
from recipes.common import Once  # noqa: E402


# ---- model --------------------------------------------------------------------------------------
def load_model(cfg: EvalConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`real.hf.name_or_path` by path or hub id, else the embedded warm start (trained once and
    cached on a miss), through the one builder."""
    real = cfg.real
    if real.embedded:
        from atesd.tasks.synthetic import ChainBagTask

        if not cfg.synthetic:  # it answered a math task with text like "AAAA", scored 0%
            raise cfglib.ConfigError(
                f"the embedded tiny model only knows the synthetic task, not {cfg.task}: give the model to "
                "evaluate with --model (a hub id or a local path)"
            )
        model, tokenizer = build_student(real, ChainBagTask(real.task), warmstart_progress())
        print("model: the embedded warm start", flush=True)
        return model, tokenizer
    return build_student(real, None)


def check_positions(
    model: PreTrainedModel, prompts: list[list[int]], max_new: int, embedded: bool, sampling: SamplingConfig
) -> None:
    """ConfigError when the longest prompt plus `max_new` sampled tokens passes the model's positions
    (the sampler would decode on past them, and the tokens there, positions never trained, be graded)
    or vLLM's max_model_len (vLLM would cut the completion short there, graded as truncated)."""
    limit, holder = position_limit(model, sampling)
    longest = max(map(len, prompts), default=0)
    if not limit or longest + max_new <= limit:
        return
    fix = (
        f"lower sampling.max_new_tokens to at most {limit - longest}"
        if longest < limit
        else ("the prompt alone does not fit")
    )
    more = "" if embedded else ", or use a model with more positions"  # (another embedded one: another model)
    raise cfglib.ConfigError(
        f"{holder} {limit} positions, but the longest prompt takes {longest} tokens and "
        f"sampling.max_new_tokens={max_new} more: {fix}{more}"
    )


def answer_key(cfg: EvalConfig) -> Callable[[str], str]:
    """How the majority vote compares answers: stripped strings on the synthetic task, the grader's
    normal form on math (`atesd.grading.normalise`: \\dfrac12 and 1/2 meet, 0.5 stays apart)."""
    if cfg.synthetic:
        return str.strip
    from atesd.grading import normalise

    return normalise


# ---- the evaluation, one chunk of problems at a time --------------------------------------------


class Sampler(NamedTuple):
    """What draws the completions: the backend, the tokenizer that decodes them, the one generator."""

    backend: RolloutBackend
    tokenizer: PreTrainedTokenizerBase
    generator: torch.Generator


def chunk_problems(n: int, batch_size: int) -> int:
    """Problems per chunk: the fewest whole problems whose n samples each fill whole sampler batches,
    batch_size / gcd(n, batch_size). Sampled chunk by chunk, the completions then come from the very
    sampler calls, and so the very generator draws, of one stream over all n x P of them."""
    return batch_size // math.gcd(n, batch_size)


def evaluate(cfg: EvalConfig, run_dir: Path, task: Task | None = None) -> dict[str, Any]:
    """Samples, grades and appends problems.jsonl chunk by chunk (`sample_chunks`), continuing from
    `run_dir`'s saved state where it has one; returns the summary (main writes summary.json). `task`:
    cfg's task, when the caller has loaded it already."""
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    task = task if task is not None else load_task(cfg)
    check_backend(cfg.real, cfg.sampling)  # before the model loads (minutes for a large one)
    model, tokenizer = load_model(cfg)
    n, max_new_tokens = cfg.sampling.resolved(cfg.synthetic)
    ks = sorted(k for k in set(cfg.pass_k) if k <= n)
    asked = cfg.pass_k != EvalConfig.__dataclass_fields__["pass_k"].default  # the default fits n = 12
    if len(ks) < len(set(cfg.pass_k)) and asked:
        print(f"pass@k: k > n = {n} left out ({sorted(set(cfg.pass_k) - set(ks))})", flush=True)
    sets = {name: problems[: cfg.max_problems or None] for name, problems in task.eval_sets().items()}
    items = [(name, i, problem) for name, problems in sets.items() for i, problem in enumerate(problems)]
    device = next(model.parameters()).device
    seed = int(np.random.SeedSequence(cfg.seed).generate_state(1)[0])
    generator = torch.Generator(device=device).manual_seed(seed)
    done, seconds = 0, 0.0
    state = read_state(run_dir)
    if state is not None:
        done, seconds = restore(run_dir, state, items, generator)
        print(f"resuming {run_dir}: {done} of {len(items)} problems done", flush=True)
    exposure = ExposureConfig(student_thinking=cfg.sampling.thinking)
    builder = PromptBuilder(tokenizer, task.prompt_format, exposure)
    prompts = [builder.encode(builder.student_prompt(p)) for _, _, p in items]
    check_positions(model, prompts, max_new_tokens, cfg.real.embedded, cfg.sampling)
    backend = build_backend(cfg.real, model, tokenizer, cfg.sampling)
    sample_chunks(
        cfg, task, items, prompts, Sampler(backend, tokenizer, generator), run_dir, done, t0 - seconds
    )
    records = read_records(run_dir / PROBLEMS, len(items))
    sampling = cfglib.to_dict(cfg.sampling) | {"samples": n, "max_new_tokens": max_new_tokens}
    skipped = {  # bad rows left out of a math task (real.data.skip_bad_rows): not evaluated
        "skipped_rows": task.skipped, "skipped_lines": list(getattr(task, "skipped_lines", []))
    } if getattr(task, "skipped", 0) else {}  # fmt: skip
    return {
        "task": cfg.task,
        "model": cfg.real.hf.name_or_path or "embedded",
        "seed": cfg.seed,
        "sampling": sampling,
        **skipped,
        **summarize_records(records, list(sets), ks, answer_key(cfg)),
        "seconds": seconds + time.perf_counter() - t0,
        "run_dir": str(run_dir),
    }


def sample_chunks(
    cfg: EvalConfig,
    task: Task,
    items: list[tuple[str, int, Problem]],
    prompts: list[list[int]],
    sampler: Sampler,
    run_dir: Path,
    done: int,
    t_start: float,
) -> None:
    """Problems `done`.. in chunks of `chunk_problems`: n samples each (prompt-major) from the one
    generator, with `cfg.greedy` a greedy completion each; every chunk's problems.jsonl lines are
    appended and fsynced, then the state (problems done, generator) replaces the last one atomically.
    `t_start`: the perf_counter reading at which the evaluation's time began."""
    from recipes._progress import progress

    backend, tokenizer, generator = sampler
    n, max_new_tokens = cfg.sampling.resolved(cfg.synthetic)
    ks, key = sorted(k for k in set(cfg.pass_k) if k <= n), answer_key(cfg)
    batch_size, step = cfg.sampling.batch_size, chunk_problems(n, cfg.sampling.batch_size)
    total = len(items) * n
    with progress(f"sampling {total} completions", total) as update, (run_dir / PROBLEMS).open("a") as fh:
        for start in range(done, len(items), step):
            chunk = prompts[start : start + step]
            flat = [ids for ids in chunk for _ in range(n)]
            params = cfg.sampling.at(max_new_tokens)
            rollouts = generate(
                backend, tokenizer, flat, params, batch_size, generator, lambda k, s=start: update(s * n + k)
            )
            params = cfg.sampling.at(max_new_tokens, greedy=True)
            greedy = generate(backend, tokenizer, chunk, params, batch_size, None) if cfg.greedy else []
            for j, (name, i, problem) in enumerate(items[start : start + step]):
                graded = [(r, task.verify(problem, r.text)) for r in rollouts[j * n : (j + 1) * n]]
                record = problem_record(name, i, problem, graded, ks, key)
                if greedy:
                    record["greedy"] = sample_record(greedy[j], task.verify(problem, greedy[j].text))
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            save_state(run_dir, start + len(chunk), len(items), time.perf_counter() - t_start, generator)


def summarize_records(
    records: list[dict[str, Any]], names: list[str], ks: list[int], key: Callable[[str], str]
) -> dict[str, Any]:
    """The metrics per set and over all problems, and the completion counts, from problems.jsonl's
    records: a resumed evaluation is summarised exactly as an uninterrupted one."""
    groups: dict[str, tuple[list, list]] = {name: ([], []) for name in names}  # verdicts, greedy grades
    for r in records:
        verdicts, greedy_ok = groups[r["set"]]
        verdicts.append([Verdict(s["correct"], s["answer_correct"], s["path_valid"], s["predicted"])
                         for s in r["samples"]])  # fmt: skip
        greedy_ok.extend([r["greedy"]["correct"]] if "greedy" in r else [])
    every = ([v for vs, _ in groups.values() for v in vs], [g for _, gs in groups.values() for g in gs])
    samples = [s for r in records for s in r["samples"]]
    methods = (
        collections.Counter(  # samples of an older directory, resumed, recorded none
            s.get("method", "unrecorded") for s in samples
        )
        if any("method" in s for s in samples)
        else collections.Counter()
    )
    return {
        "sets": {name: _metrics(*group, ks, key) for name, group in groups.items()},
        "all": _metrics(*every, ks, key),
        "completions": len(samples),
        "tokens": sum(s["num_tokens"] for s in samples),
        "truncated_rate": float(np.mean([not s["finished"] for s in samples])),
        # math: how many samples each grading method decided (math_verify, string, timeout, no_answer)
        **({"graded_by": dict(sorted(methods.items()))} if methods else {}),
    }


def _metrics(
    verdicts: list[list[Verdict]], greedy_ok: list[bool], ks: list[int], key: Callable[[str], str]
) -> dict[str, Any]:
    out = summarize(verdicts, ks, key)
    out["pass_at"] = {str(k): v for k, v in out["pass_at"].items()}  # JSON keys are strings anyway
    if greedy_ok:
        out["greedy_accuracy"] = float(np.mean(greedy_ok))
    return out


# ---- output -------------------------------------------------------------------------------------
def new_run_dir(out: Path, task: str) -> Path:
    """A new <out>/eval__<task>__<YYYYmmdd-HHMMSS>[-k]; an existing directory is never reused."""
    local = Path(task).expanduser()
    name = local.stem if local.exists() or task.endswith(".jsonl") else task.replace("/", "_")
    name = name[:80]  # a long path's whole name was refused as "File name too long", blaming out_dir
    try:
        return fresh_dir(out.expanduser(), f"eval__{name}__{time.strftime('%Y%m%d-%H%M%S')}")
    except OSError as err:  # out_dir, or a folder above it, is a file; no permission
        raise cfglib.ConfigError(
            f"out_dir={out}: the eval directory cannot be made there ({err.strerror}: {err.filename}); "
            "give out_dir a folder, or a path where one can be made"
        ) from None


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and one row per evaluation set plus the overall row."""
    n = summary["sampling"]["samples"]
    ks = list(summary["all"]["pass_at"])
    greedy = "greedy_accuracy" in summary["all"]
    cols = ["set", "problems", f"avg@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}", "format"]
    cols += ["greedy"] if greedy else []
    rows = []
    overall = "all" if "all" not in summary["sets"] else "(every set)"  # a band may be named "all"
    for name, m in [*summary["sets"].items(), (overall, summary["all"])]:
        row = [name, str(m["problems"]), _pct(m["avg_at_n"]), *(_pct(m["pass_at"][k]) for k in ks)]
        row += [_pct(m["maj_at_n"]), _pct(m["format_rate"])] + (
            [_pct(m["greedy_accuracy"])] if greedy else []
        )
        rows.append(row)
    return cols, rows


def _pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def print_table(summary: dict[str, Any]) -> None:
    """A rich table on a terminal; plain aligned lines otherwise (logs, CI, files)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    cols, rows = table_rows(summary)
    caption = (
        f"{summary['model']} on {summary['task']}: {summary['completions']} completions, "
        f"{summary['seconds']:.0f} s; maj@n grades the voted answer alone; {summary['run_dir']}"
    )
    if console.is_terminal:
        table = Table(title="evaluation", caption=escape(caption))  # a path's [x] is text, not markup
        for i, col in enumerate(cols):
            table.add_column(escape(col), justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*map(escape, row))
        console.print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for row in (cols, *rows):
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    print(caption)


# ---- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    fields = "\n".join(
        f"  {key} = {default}    {help_}"
        for key, default, help_ in cfglib.describe(EvalConfig)
        if not key.startswith("real.engine.") and key not in UNREAD  # refused: not read here
    )
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        epilog=f"config fields (set any with key=value or --set key=value):\n{fields}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides by dotted key")
    parser.add_argument("--config", action=Once, help="a YAML config file; overrides apply on top (once)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--model", help="local path or HF id (config field `real.hf.name_or_path`)")
    parser.add_argument("--task", help=f"{TASKS_HELP} (config field `task`)")
    parser.add_argument("--data-dir", help="benchmark data folder (config field `data_dir`)")
    parser.add_argument("--seed", type=int, help="seed (config field `seed`)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--pass-k", help="comma-separated pass@k budgets, e.g. 1,4,8 (config field `pass_k`)")
    parser.add_argument("--greedy", action="store_true", default=None, help="also report greedy accuracy")
    parser.add_argument(
        "--resume", metavar="DIR", help="continue the interrupted evaluation in DIR (with DIR's config)"
    )
    args = parser.parse_intermixed_args(argv)  # key=value words may come between the flags
    if args.resume is not None and not args.resume.strip():
        parser.error("--resume takes an eval directory, not an empty value")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Runs one evaluation, or continues the one `--resume` names; returns its directory."""
    args = parse_args(argv)
    with user_errors(args.debug):
        refuse_torchrun()
        task = None  # a resume loads its task once it holds the directory
        if args.resume:
            resume_config(args)  # refuses what is not an eval directory before a lock file is made there
            run_dir = Path(args.resume)
        else:
            cfg = resolve_config(args)
            task = load_task(cfg)  # a bad task or data file is one line, before a directory is made
            run_dir = new_run_dir(Path(cfg.out_dir), cfg.task)
            cfg = absolute_inputs(cfg)  # a resume from another directory reads the same files
            record_inputs(run_dir, extra=eval_inputs(cfg))  # and refuses them changed since
            write_atomic(run_dir / "config.json", json.dumps(config_record(cfg), indent=1))
        with run_lock(run_dir, doing="evaluated"):  # two processes never append to one directory
            if args.resume:  # judged again under the lock: another process may have gone on meanwhile
                cfg, run_dir, finished = resume_config(args)
                if finished:
                    print(f"{run_dir} is finished ({SUMMARY} holds its results); nothing to resume")
                    return run_dir
                changed = changed_inputs(run_dir)  # another model or task file would be mixed in
                if changed:
                    raise cfglib.ConfigError(f"--resume {run_dir}: {changed}")
            print(f"eval directory: {run_dir}", flush=True)
            try:
                summary = evaluate(cfg, run_dir, task)
            except BaseException as err:  # Ctrl-C and CUDA OOM too: keep what is done, say how to go on
                line = stopped(run_dir, fresh=not args.resume)
                if isinstance(err, KeyboardInterrupt) and not args.debug:
                    line = line or "stopped by Ctrl-C before any problem was done"
                    print(f"interrupted: {line}", file=sys.stderr, flush=True)
                    raise SystemExit(130) from None
                if line and not isinstance(err, cfglib.ConfigError):  # a refusal to resume says it all
                    print(line, file=sys.stderr, flush=True)
                raise
            write_atomic(run_dir / SUMMARY, json.dumps(summary, indent=1))
            (run_dir / STATE).unlink(missing_ok=True)
    print_table(summary)
    return run_dir


def refuse_torchrun() -> None:
    """ConfigError under torchrun (WORLD_SIZE > 1): eval.py is one process. Every rank would sample
    every problem into a directory of its own, and with `real.device=auto` all of them on the first GPU."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "0", "1"):
        raise cfglib.ConfigError(
            f"eval.py runs as one process, not under torchrun (WORLD_SIZE={world}): every rank would "
            "evaluate every problem; run `python recipes/eval.py ...` (one GPU: --set real.device=cuda:N; "
            "several at once: one eval.py per GPU, or sampling.backend=vllm)"
        )


def stopped(run_dir: Path, fresh: bool) -> str:
    """After an evaluation stopped early: a new directory with no problem done is removed (no husk
    directory; returns ''); else the line that says how far it got and how to continue it."""
    try:
        state = read_state(run_dir)
    except cfglib.ConfigError:
        state = None
    if state is None:
        if fresh:
            discard_dir(run_dir)
        return ""
    return (
        f"{state['problems_done']} of {state.get('problems')} problems done, kept in {run_dir}; continue "
        f"with: python recipes/eval.py --resume {shlex.quote(str(run_dir))}"
    )


if __name__ == "__main__":
    main()
