"""Launched by tests/test_distributed.py under torchrun: two windows of the ci-sized embedded env with a
random controller shared from rank 0; each rank writes the alphas it used, a sharded evaluation (and
the same evaluation run whole) and its final weights (whole, gathered from the shards under FSDP).
Arguments: out dir, cache dir, ddp | fsdp."""

import dataclasses
import hashlib
import json
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd.distributed import Dist, gather_state, is_sharded  # noqa: E402
from atesd.engine import DistillEngine  # noqa: E402
from atesd.measures import rank_eval_generator  # noqa: E402
from atesd.models import build_tiny_qwen3  # noqa: E402
from atesd.teacher import TeacherConfig  # noqa: E402
from controllers.base import action_size, run_episode  # noqa: E402
from controllers.shared import SharedDecisions  # noqa: E402
from recipes.common import RunConfig, build_controller, build_env  # noqa: E402

if __name__ == "__main__":
    out, cache, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist = Dist.from_env()
    root = Path(__file__).resolve().parents[1]
    overrides = ["controller=random", f"real.cache_dir={cache}", "real.env.total_steps=4"]
    overrides += ["real.engine.fsdp=true"] if mode == "fsdp" else []
    cfg = cfglib.load(RunConfig, root / "recipes/configs/ci.yaml", overrides)
    env = build_env(cfg, dist=dist)
    controller = SharedDecisions(
        build_controller(cfg, env), dist.is_main, dist.broadcast_float, action_size(env.action_space)
    )
    result = run_episode(env, controller, seed=0)
    engine = env.unwrapped.engine

    def layer_share(model) -> float:
        layer = [p for n, p in model.named_parameters() if ".layers." in n]
        return sum(p.to_local().numel() if is_sharded(p) else p.numel() for p in layer) / sum(
            p.numel() for p in layer
        )

    record = {"rank": dist.rank, "world": dist.world_size, "alphas": result.alphas,
              "rewards": result.rewards, "problems": engine.rng.integers(1 << 30),
              "layer_share": layer_share(engine.student),
              "snapshot_weights": len(env.unwrapped._initial["student"])}  # fmt: skip
    # the frozen teacher: sharded as the student (copied a layer at a time under FSDP), still the
    # starting weights after training, sharing no tensor with the student, its own ties kept
    teacher = engine.teacher.copy
    start = env.unwrapped._initial["student"]
    record["teacher_layer_share"] = layer_share(teacher)  # before gather_state, which reshards

    def pointers(model) -> set[int]:
        return {(p.to_local() if is_sharded(p) else p).data_ptr() for p in model.parameters()}

    whole = gather_state(teacher)[0] if engine.sharded else teacher.state_dict()
    record |= {
        "teacher_is_start": bool(start)
        and whole.keys() == start.keys()
        and all(torch.equal(whole[k], start[k]) for k in start),
        "teacher_shares_tensors": bool(pointers(teacher) & pointers(engine.student)),
        "teacher_tied": teacher.lm_head.weight is teacher.model.embed_tokens.weight,
        "teacher_trains": any(p.requires_grad for p in teacher.parameters()) or teacher.training,
    }
    # a teacher's scoring (a forward with no backward) leaves its layers sharded behind it
    with engine.teacher.scoring() as model:
        model.model(torch.tensor([[1, 2, 3]]))
    record["after_scoring"] = layer_share(teacher)
    # an EMA teacher of a fresh (random, identical on every rank) student: its update after a step
    # moves each shard toward the student's by 1 - decay (it once met a whole teacher layer and failed)
    ema_cfg = dataclasses.replace(engine.cfg, teacher=TeacherConfig(kind="ema"))
    other = DistillEngine(build_tiny_qwen3(engine.tokenizer, cfg.real.model), engine.tokenizer, engine.task,
                          ema_cfg, dist=dist)  # fmt: skip

    def local(model) -> list[torch.Tensor]:
        return [(p.to_local() if is_sharded(p) else p).detach().clone() for p in model.parameters()]

    before = local(other.teacher.copy)
    other.step(0.5)
    share = 1 - ema_cfg.teacher.ema_decay
    expected = [b + share * (s - b) for b, s in zip(before, local(other.student), strict=True)]
    now = local(other.teacher.copy)
    record["ema"] = {
        "layer_share": layer_share(other.teacher.copy),
        "error": max(float((a - b).abs().max()) for a, b in zip(now, expected, strict=True)),
        "moved": any(not torch.equal(a, b) for a, b in zip(before, now)),
    }
    del other, before, expected, now
    # a sharded evaluation, watched: the prompts this rank generates for and the problems it grades.
    # Bands of 15 (shards of 8 and 7), and a grader that accepts a fixed third of the questions whatever
    # the text (this model solves none), so the result is known and a mean of unequal shards shows.
    calls, graded = [], []  # the prompts of each generate call; (band, question) of each verdict
    sets = {band: problems[:15] for band, problems in engine.task.eval_sets().items()}
    engine.task.eval_sets = lambda: sets
    generate, verify = engine.sampler.generate, engine.task.verify

    def grade(problem, text):
        graded.append((problem.band, problem.question))
        accepted = zlib.crc32(problem.question.encode()) % 3 == 0
        return dataclasses.replace(verify(problem, text), correct=accepted)

    def watched(prompts, *args):
        calls.append(prompts)
        return generate(prompts, *args)

    def evaluation(whole: bool, **kwargs) -> tuple[dict, list]:
        """(evaluate(**kwargs), the prompts of its generate calls); `whole`: as one process runs it."""
        calls.clear()
        engine.dist = Dist.single() if whole else dist
        try:
            return engine.evaluate(**kwargs), list(calls)
        finally:
            engine.dist = dist

    engine.sampler.generate, engine.task.verify = watched, grade
    sharded, prompts = evaluation(False, k=2)
    record |= {"eval": sharded, "eval_rows": [len(p) for p in prompts], "eval_graded": list(graded)}
    # the shared generator stays the same on every rank; each rank samples on a stream of its own
    record["eval_gen"] = hashlib.sha256(engine.eval_gen.get_state().numpy().tobytes()).hexdigest()
    record["rank_stream"] = rank_eval_generator(engine).initial_seed()
    whole, prompts = evaluation(True, k=2)
    record |= {"eval_single": whole, "eval_single_rows": [len(p) for p in prompts]}
    record["eval_sets"] = {band: [p.question for p in ps] for band, ps in engine.task.eval_sets().items()}
    # teacher prompts with another problem's reference: this rank's are its shard of one process's
    exposure = dataclasses.replace(engine.cfg.exposure, reference="other")
    engine.cfg = dataclasses.replace(engine.cfg, exposure=exposure)
    record["teacher_prompts"] = [evaluation(whole, teacher_alpha=0.5)[1] for whole in (False, True)]
    (out / f"rank{dist.rank}.json").write_text(json.dumps(record, default=int))
    weights = {  # whole on every rank (an all-gather per sharded tensor)
        k: (v.full_tensor() if is_sharded(v) else v).detach().clone().contiguous()
        for k, v in engine.student.state_dict().items()
    }
    weights.pop("lm_head.weight", None)  # tied to the embeddings
    save_file(weights, str(out / f"rank{dist.rank}.safetensors"))
    # unreachable before close() collects and leaves the group
    del env, controller, engine, teacher, start, whole
    dist.close()
