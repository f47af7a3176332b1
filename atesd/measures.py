"""Measurements of a `DistillEngine` that change no weights: the in-training evaluation (greedy
accuracy per band, Average@k; under torchrun each rank takes a shard of every band and the verdicts
are gathered back in order) and the student-teacher mismatch at an exposure. The engine's `evaluate`
and `mismatch` call these; they know nothing of envs or controllers.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from atesd.batching import completion_hidden
from atesd.losses import LossConfig, chunked_distill_loss
from atesd.rollout import SamplingParams
from atesd.tasks.base import Problem

if TYPE_CHECKING:
    from atesd.engine import DistillEngine


def evaluate_bands(
    engine: DistillEngine, k: int, temperature: float, teacher_alpha: float | None
) -> dict[str, float]:
    """Under torchrun each rank evaluates every world_size-th problem of each band (its shard) and
    the verdicts are gathered back into the band's order, so every rank returns the same numbers as
    one process would from those verdicts, for 1 / world_size of the sampling and grading."""
    world, rank = (engine.dist.world_size, engine.dist.rank) if engine.dist.active else (1, 0)
    generator = engine.eval_gen if world == 1 or k == 0 else rank_eval_generator(engine)
    ev = engine.cfg.eval
    limit = ev.max_new_tokens or engine.cfg.sampling.max_new_tokens
    greedy_params = dataclasses.replace(engine.cfg.sampling.params(greedy=True), max_new_tokens=limit)
    params = SamplingParams(temperature, ev.top_k, ev.top_p, limit)
    bands = engine.task.eval_sets()
    local: dict[str, list[list[bool]]] = {}  # band -> [greedy verdicts, then one list per sample]
    for band, problems in bands.items():
        mine = list(problems)[rank::world]
        if not mine:  # fewer problems than ranks
            local[band] = [[] for _ in range(1 + k)]
            continue
        if teacher_alpha is None:
            prompts = [engine.builder.encode(engine.builder.student_prompt(p)) for p in mine]
        else:  # over the whole band, then this rank's: exposure.reference=other reads neighbours
            prompts = engine.teacher_prompts(list(problems), teacher_alpha, [""] * len(problems))[rank::world]
        runs = [engine.sampler.generate(prompts, greedy_params, None)]
        runs += [engine.sampler.generate(prompts, params, generator) for _ in range(k)]
        local[band] = [_verdicts(engine, mine, run.completion_ids) for run in runs]
    shards = engine.dist.gather_objects(local) if world > 1 else [local]
    out: dict[str, float] = {}
    for band, problems in bands.items():
        runs = [_interleave([shard[band][i] for shard in shards], len(problems)) for i in range(1 + k)]
        out[f"accuracy/{band}"] = float(np.mean(runs[0]))
        if k > 0:
            out[f"avg_at_{k}/{band}"] = float(np.mean([np.mean(run) for run in runs[1:]]))
    return out


def rank_eval_generator(engine: DistillEngine) -> torch.Generator:
    """This rank's sampling stream for one sharded evaluation: a seed drawn from the evaluation
    generator (the same draw on every rank, so its state stays identical across ranks and in the
    checkpoint), mixed with the rank, so the ranks' samples are independent."""
    device = engine.eval_gen.device
    seed = int(torch.randint(0, 2**62, (1,), generator=engine.eval_gen, device=device))
    mixed = np.random.SeedSequence([seed, engine.dist.rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(mixed))


def _verdicts(engine: DistillEngine, problems: list[Problem], completions: list[list[int]]) -> list[bool]:
    texts = engine.tokenizer.batch_decode(completions, skip_special_tokens=True)
    return [bool(engine.task.verify(p, t).correct) for p, t in zip(problems, texts)]


def _interleave(shards: list[list[bool]], n: int) -> list[bool]:
    """Undo the sharding `items[rank::world]`: the items in their order, from every rank's shard."""
    out: list[bool] = [False] * n
    world = len(shards)
    for rank, shard in enumerate(shards):
        out[rank::world] = shard
    return out


@torch.no_grad()
def mismatch(
    engine: DistillEngine, alpha: float, problems: list[Problem], generator: torch.Generator
) -> dict[str, float]:
    """Student-teacher mismatch at alpha on sampled student rollouts of `problems`: mean
    per-token KL(student || teacher) and top-1 disagreement. Changes no weights."""
    batch = engine.rollout(problems, generator)
    # at alpha itself: a solved rollout's `solved_alpha` is training's exposure, not this measure's
    teacher_prompts = engine.teacher_prompts(problems, alpha, batch.texts, per_outcome=False)
    pad = engine.tokenizer.pad_token_id
    with engine.teacher.scoring() as teacher_model:
        t_hidden, targets = completion_hidden(teacher_model, teacher_prompts, batch.completions, pad)
        t_head = teacher_model.get_output_embeddings().weight
    was_training = engine.student.training
    engine.student.eval()
    s_hidden, _ = completion_hidden(engine.student, batch.prompts, batch.completions, pad)
    engine.student.train(was_training)
    mask = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    s_head = engine.student.get_output_embeddings().weight
    out = chunked_distill_loss(
        s_hidden, t_hidden, s_head, t_head, mask, LossConfig(kind="reverse_kl"), targets
    )
    return {"kl": float(out.per_token.mean()), "top1": float(out.top1_disagree.float().mean())}
