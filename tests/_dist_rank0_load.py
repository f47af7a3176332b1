"""Launched by tests/test_distributed.py under torchrun: FSDP's student loaded on rank 0 only (the other
ranks build a skeleton on the meta device and get rank 0's weights as the engine shards them), against
every rank loading the checkpoint itself. Each rank writes what it held before and after the engine
was built, and the weights of both engines after two updates (whole, gathered on rank 0).
Arguments: out dir, checkpoint dir, dtype [, modes, comma-separated]. Modes: `ema` (an EMA teacher,
gradient checkpointing), `remote` (`trust_remote_code`: a checkpoint with its own model code),
`vllm` (the engine built over vLLM's sampler, vLLM stood in for as in tests/test_vllm.py;
construction only)."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd.builder import RealConfig, build_student  # noqa: E402
from atesd.distributed import Dist, gather_state, on_meta  # noqa: E402
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig  # noqa: E402
from atesd.models import HFModelConfig, LoraSettings, eos_token_ids, load_hf_model  # noqa: E402
from atesd.state import arrays_of  # noqa: E402
from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask  # noqa: E402
from atesd.teacher import TeacherConfig  # noqa: E402


def _tensors(state):
    return [t for t in arrays_of(state) if isinstance(t, torch.Tensor)]


if __name__ == "__main__":
    out, checkpoint, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist = Dist.from_env()
    modes = sys.argv[4].split(",") if len(sys.argv) > 4 else []
    teacher_cfg = TeacherConfig(kind="ema" if "ema" in modes else "base")
    sampling = SamplingConfig(max_new_tokens=24)
    engine_cfg = EngineConfig(batch_size=4, fsdp=True, sampling=sampling, teacher=teacher_cfg)
    hf = HFModelConfig(
        name_or_path=checkpoint, dtype=dtype, gradient_checkpointing="ema" in modes,
        trust_remote_code="remote" in modes,
    )  # fmt: skip
    cfg = RealConfig(hf=hf, lora=LoraSettings(rank=0), engine=engine_cfg, device="cpu")
    task = ChainBagTask(
        ChainBagConfig(chain_lengths=(0, 3), bag_sizes=(0, 2), bands=((3, 0), (0, 2), (2, 2)))
    )
    model, tokenizer = build_student(cfg, task, dist=dist)
    record = {"rank": dist.rank, "skeleton": on_meta(model), "eos": eos_token_ids(model, tokenizer)}
    record["dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    record["class"] = type(model).__name__
    sampler = None
    if "vllm" in modes:  # a push from the skeleton failed (no data on the meta device)
        import types

        from atesd.rollout.vllm import VLLMSampler
        from tests.test_vllm import FakeLLM, FakeSamplingParams

        sys.modules["vllm"] = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams)
        llm = FakeLLM(model=checkpoint)
        with torch.no_grad():
            for p in llm.engine_model.model.parameters():
                p.zero_()  # so that only a push gives it the weights
        sampler = VLLMSampler(model, eos_token_ids(model, tokenizer), tokenizer.pad_token_id, llm=llm)
        record["pushes_before"] = sampler.pushes
    engine = DistillEngine(model, tokenizer, task, engine_cfg, sampler=sampler, dist=dist, device="cpu")
    if "vllm" in modes:
        held = llm.engine_model.model.state_dict()
        start = {k: v.clone() for k, v in gather_state(engine.student)[0].items()}
        record["pushes"] = sampler.pushes
        record["pushed"] = sorted(k for k in held if not torch.equal(held[k], torch.zeros_like(held[k])))
        record["pushed_start"] = dist.is_main and all(torch.equal(held[k], start[k]) for k in held)
        record["held_sum"] = float(sum(v.double().sum() for v in held.values()))
        (out / f"rank{dist.rank}.json").write_text(json.dumps(record))
        del engine, model, start
        dist.close()
        sys.exit(0)
    record["after"] = on_meta(engine.student) or on_meta(engine.teacher.copy)
    head, embed = engine.student.lm_head.weight, engine.student.model.embed_tokens.weight
    record["tied"] = head is embed
    record["teacher_tied"] = (
        engine.teacher.copy.lm_head.weight is engine.teacher.copy.model.embed_tokens.weight
    )
    record["buffers"] = {n: b.tolist() for n, b in engine.student.named_buffers()}
    record["teacher_buffers"] = {n: b.tolist() for n, b in engine.teacher.copy.named_buffers()}
    start, teacher = (
        {k: v.clone() for k, v in gather_state(m)[0].items()} for m in (engine.student, engine.teacher.copy)
    )
    # the same engine built as before: every rank reads the checkpoint itself
    every, tok = load_hf_model(cfg.hf, cfg.lora, "cpu", engine_cfg.seed)
    other = DistillEngine(every, tok, task, engine_cfg, dist=dist, device="cpu")
    engines = (engine, other)
    for e in engines:
        e.step(0.5)
        e.step(0.5)
    trained, trained_other = ({k: v.clone() for k, v in gather_state(e.student)[0].items()} for e in engines)
    # loading a state (a resume; a reset's snapshot is loaded again at every reset) leaves its tensors
    # as they were, through the load and the training after it: their containers are copied, not them
    state = engine.state_dict()
    before = [t.clone() for t in _tensors(state)]
    engine.load_state_dict(state)
    reloaded, _ = gather_state(engine.student)
    record["reloaded"] = all(torch.equal(reloaded[k], trained[k]) for k in trained)
    engine.step(0.5)
    record["state_kept"] = all(torch.equal(a, b) for a, b in zip(before, _tensors(state), strict=True))
    record["state_tensors"] = len(before)
    if dist.is_main:
        for name, state in [("start", start), ("teacher", teacher), ("trained", trained),
                            ("trained_other", trained_other)]:  # fmt: skip
            save_file({k: v.clone() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    (out / f"rank{dist.rank}.json").write_text(json.dumps(record))
    del engine, other, model, every, head, embed
    dist.close()
