"""One builder for what every recipe trains or evaluates: task, student, rollout backend, engine.

Owns the `real.*` config sections (`RealConfig`: task, data, model, warm start, HF checkpoint, LoRA,
device, engine) and turns them into objects in one place: the device (`auto`), the EOS ids
(`atesd.models.eos_token_ids`), the backend, the embedded warm start or an HF checkpoint with LoRA.
run.py, sweep.py, bench.py, eval.py and the real env all build through here. Adding a task is a
file in `atesd/tasks/` plus one line in `TASKS` (and its config section here); adding a rollout
backend is a file in `atesd/rollout/` plus one line in `atesd.rollout.BACKENDS`. Knows nothing of
Gymnasium, controllers or recipes.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from atesd.distributed import Dist, local_cuda_index
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.exposure import PromptBuilder
from atesd.models import (
    HFModelConfig,
    LoraSettings,
    TinyModelConfig,
    apply_lora,
    base_model,
    build_synthetic_tokenizer,
    eos_token_ids,
    num_parameters,
)
from atesd.rollout import RolloutBackend, make_backend
from atesd.tasks.base import Task
from atesd.tasks.math import MathDataConfig
from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask
from atesd.warmstart import WarmStartConfig, warm_start

TaskKind = str  # a key of TASKS

WarmStartProgress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class RealConfig:
    """The model, task and engine of a real run: the embedded tiny model (warm-started, cached) on
    the synthetic task, or any HF checkpoint (optionally with LoRA) on math data."""

    task_kind: TaskKind = field(
        default="synthetic", metadata={"help": "synthetic (the embedded task) or math (`data`)"}
    )
    task: ChainBagConfig = field(default_factory=ChainBagConfig)
    data: MathDataConfig = field(default_factory=MathDataConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    hf: HFModelConfig = field(default_factory=HFModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    engine: EngineConfig = field(default_factory=EngineConfig)
    cache_dir: str = field(default="", metadata={"help": "warm-start cache ('' = ~/.cache/atesd)"})

    def __post_init__(self) -> None:
        if self.task_kind not in TASKS:
            raise ValueError(f"task_kind must be one of {', '.join(TASKS)}, got {self.task_kind!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {self.device!r}")

    @property
    def embedded(self) -> bool:
        """The embedded tiny model (no HF checkpoint named)."""
        return not self.hf.name_or_path


def _math_task(cfg: RealConfig) -> Task:
    from atesd.tasks.math import MathTask

    return MathTask.from_config(cfg.data)


# task kind -> its builder from the config
TASKS: dict[str, Callable[[RealConfig], Task]] = {
    "synthetic": lambda cfg: ChainBagTask(cfg.task),
    "math": _math_task,
}


def build_task(cfg: RealConfig) -> Task:
    """The task `cfg.task_kind` names."""
    return TASKS[cfg.task_kind](cfg)


def resolve_device(device: str, dist: Dist | None = None) -> str:
    """The torch device of this process: `auto` is cuda when available; under torchrun `auto` and `cuda`
    are this rank's own GPU (cuda:<local rank>, `local_cuda_index`) and another `cuda:N` is refused.
    ValueError (one line, before any model loads) for a device this machine lacks:
    torch's own error came as a traceback from deep in the model's loading."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"real.device={device}, but torch sees no CUDA device here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}): use real.device=cpu, or auto"
        )
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(
            f"real.device={device}, but this machine has {torch.cuda.device_count()} CUDA devices"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("real.device=mps, but torch finds no usable MPS device here: use real.device=cpu")
    torchrun = dist is not None and dist.active
    if torchrun and (device in ("cuda", "auto") and torch.cuda.is_available() or device.startswith("cuda:")):
        if device.startswith("cuda:"):  # refused on every rank alike (rank 0's own went on loading)
            raise ValueError(
                f"real.device={device} under torchrun would put every rank's model on that one GPU, while "
                "each rank works on its own (cuda:<local rank>): use real.device=cuda or auto"
            )
        return f"cuda:{local_cuda_index()}"  # each rank on its own GPU, where Dist bound NCCL
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_student(
    cfg: RealConfig,
    task: Task | None,
    progress: WarmStartProgress | None = None,
    dist: Dist | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student and its tokenizer: the HF checkpoint `cfg.hf` names (no warm start), or the
    embedded tiny model warm-started on `task` (trained once and cached; an HF checkpoint needs no
    task); LoRA as `cfg.lora` says.
    Under torchrun rank 0 warm-starts first and the others then read the cache. A model the engine
    will shard (`engine.fsdp` under torchrun) stays on the CPU: the engine moves it to its device one
    layer at a time as it shards it (`build_engine` passes the device)."""
    device = "cpu" if sharded(cfg, dist) else resolve_device(cfg.device, dist)
    if not cfg.embedded:
        from atesd.models import load_hf_model

        if sharded(cfg, dist) and cfg.lora.rank == 0:
            model, tokenizer = load_on_rank0(cfg, dist)  # the others build it on the meta device
        else:  # (LoRA is refused under FSDP by the engine, with its own message)
            model, tokenizer = load_hf_model(cfg.hf, cfg.lora, device, cfg.engine.seed)
        if cfg.device == "auto" and resolve_device(cfg.device, dist) == "cpu":  # not FSDP's CPU stop
            check_cpu_size(model)
        return model, tokenizer
    if cfg.task_kind != "synthetic":
        raise ValueError("the embedded tiny model only knows the synthetic task: set real.hf.name_or_path")
    waits = dist is not None and dist.active
    if waits and not dist.is_main:
        torch.distributed.barrier()  # rank 0 has the warm start in the cache
    model, tokenizer, _, _ = warm_start(task, cfg.model, cfg.warmstart, cfg.cache_dir or None, progress)
    if waits and dist.is_main:
        torch.distributed.barrier()
    model = model.to(device)
    return apply_lora(model, cfg.lora, cfg.engine.seed), tokenizer


def load_on_rank0(cfg: RealConfig, dist: Dist) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student under FSDP: rank 0 loads the checkpoint onto the CPU, and every other rank builds the
    same model on the meta device from rank 0's config (`atesd.models.meta_skeleton`: no storage, no
    weights read), so a node's host memory holds the checkpoint once instead of once per rank. The
    engine broadcasts rank 0's weights into every rank's shards as it shards them. Every rank loads
    the tokenizer; with `real.hf.trust_remote_code` every rank also loads the checkpoint's config
    through its own code first, so that rank 0's config (an instance of a class that code defines)
    can be read there. A load that fails on any rank fails on every rank, naming that rank's error
    (the others would wait for it in the next collective). The other ranks wait for rank 0's load in
    a collective, within the process group's timeout (torch's default: 30 minutes;
    `ATESD_DIST_TIMEOUT` raises it, `atesd.distributed.group_timeout`)."""
    from atesd.models import enable_checkpointing, load_hf_model, load_tokenizer, meta_skeleton, model_spec

    model = tokenizer = failed = None
    if dist.is_main:
        try:
            model, tokenizer = load_hf_model(cfg.hf, cfg.lora, "cpu", cfg.engine.seed)
            spec = pickle.dumps(model_spec(model))  # read by the others once they can (remote code)
        except Exception as err:
            dist.broadcast_object(f"{type(err).__name__}: {err}")
            raise
        dist.broadcast_object(spec)
    else:
        spec = dist.broadcast_object(None)
        if isinstance(spec, str):
            raise ValueError(f"rank 0 could not load {cfg.hf.name_or_path}: {spec}")
        try:
            if cfg.hf.trust_remote_code:  # makes the checkpoint's config and model classes importable
                AutoConfig.from_pretrained(cfg.hf.name_or_path, trust_remote_code=True)
            tokenizer = load_tokenizer(cfg.hf.name_or_path, cfg.hf.trust_remote_code)
            model = meta_skeleton(pickle.loads(spec), cfg.hf.trust_remote_code)
            if cfg.hf.gradient_checkpointing:
                enable_checkpointing(model)
        except Exception as err:  # said on every rank (below), not left to hang the others
            failed = err
    whys = dist.gather_objects(None if failed is None else f"{type(failed).__name__}: {failed}")
    if failed is not None:
        raise failed
    for rank, why in enumerate(whys):
        if why is not None:
            raise ValueError(f"rank {rank} could not build the model of {cfg.hf.name_or_path}: {why}")
    return model, tokenizer


CPU_WARN_PARAMETERS = 100_000_000  # from about this size an update on a CPU takes minutes


def check_cpu_size(model: torch.nn.Module) -> None:
    """Warn where `real.device=auto` found no GPU and the model is large enough that the CPU it falls
    back to takes minutes per update: most often a CPU build of torch on a GPU machine."""
    n = num_parameters(model)
    if n >= CPU_WARN_PARAMETERS:
        warnings.warn(
            f"real.device=auto found no CUDA device (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}), so the model of {n / 1e9:.2f}B parameters runs on the CPU, "
            "where one update can take minutes: install a CUDA build of torch (the README's set-up "
            "installs the CPU one), or set real.device=cpu to mean it",
            stacklevel=3,
        )


def sharded(cfg: RealConfig, dist: Dist | None) -> bool:
    """Whether the engine will shard the student's layers (FSDP: `engine.fsdp` under torchrun)."""
    return cfg.engine.fsdp and dist is not None and dist.active


def build_backend(
    cfg: RealConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sampling: SamplingConfig | None = None,
) -> RolloutBackend:
    """The rollout backend `sampling.backend` (default: `cfg.engine.sampling`'s) over `model`, ending
    at every EOS id of the model and tokenizer."""
    sampling = sampling or cfg.engine.sampling
    check_backend(cfg, sampling)
    return make_backend(
        sampling.backend, model, eos_token_ids(model, tokenizer), tokenizer.pad_token_id,
        compile=sampling.compile, vllm=sampling.vllm, trust_remote_code=cfg.hf.trust_remote_code,
    )  # fmt: skip


def check_backend(cfg: RealConfig, sampling: SamplingConfig) -> None:
    """Refuse, before a model is loaded or a warm start trains (minutes for a large one), a backend
    this machine or model cannot run: vllm on the embedded model, without the extra or without CUDA."""
    if sampling.backend != "vllm":
        return
    if cfg.embedded:
        raise ValueError(
            "the vllm backend needs an HF checkpoint (real.hf.name_or_path): vLLM loads the model from "
            "its hub id or directory; the embedded model runs on the hf backend"
        )
    from atesd.rollout.vllm import check_runnable

    check_runnable()


def build_engine(
    cfg: RealConfig,
    seed: int,
    progress: WarmStartProgress | None = None,
    dist: Dist | None = None,
    engine_overrides: dict[str, Any] | None = None,
) -> DistillEngine:
    """Task, student, backend and `DistillEngine` (seeded with `seed`; `engine_overrides` replace
    fields of `cfg.engine`) in one call."""
    engine_cfg = dataclasses.replace(cfg.engine, seed=seed, **(engine_overrides or {}))
    cfg = dataclasses.replace(cfg, engine=engine_cfg)  # LoRA's init follows the engine's seed too
    device = resolve_device(cfg.device, dist)  # a device this machine lacks fails before a warm start trains
    check_precision(cfg)
    check_backend(cfg, engine_cfg.sampling)
    task = build_task(cfg)
    if cfg.embedded:  # before the warm start trains a model that cannot hold the prompts
        check_lengths(build_synthetic_tokenizer(), task, engine_cfg, cfg.model.max_position, embedded=True)
    model, tokenizer = build_student(cfg, task, progress, dist)
    if cfg.hf.dtype == "auto":  # the checkpoint's own dtype: known once loaded (hub Qwen3 is bfloat16)
        check_precision(cfg, model)
    if not cfg.embedded:
        limit, holder = position_limit(model, engine_cfg.sampling)
        check_lengths(tokenizer, task, engine_cfg, limit, holder=holder)
    sampler = build_backend(cfg, model, tokenizer)
    # where it will be sharded the student is still on the CPU: the engine moves it layer by layer
    return DistillEngine(model, tokenizer, task, engine_cfg, sampler=sampler, dist=dist, device=device)


def check_precision(cfg: RealConfig, model: torch.nn.Module | None = None) -> None:
    """Warn before training a full fine-tune in 16-bit weights: no float32 master copy is kept, so an
    update below half a unit of a weight's last place rounds away (LoRA keeps its adapters in
    float32). By the config's dtype, or with `model` (real.hf.dtype=auto) by its trained weights'."""
    if cfg.embedded or cfg.lora.rank != 0:
        return
    dtype = cfg.hf.dtype
    if model is not None:
        low = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
        dtype = next((d for d in ("bfloat16", "float16") if d in low), dtype)
    if dtype in ("bfloat16", "float16"):
        loaded = " (the checkpoint's own dtype, real.hf.dtype=auto)" if cfg.hf.dtype == "auto" else ""
        warnings.warn(
            f"a full fine-tune (real.lora.rank=0) in {dtype}{loaded} keeps no float32 master weights: "
            "an update below half a unit of a weight's last place rounds away (at lr 5e-6 most do); "
            "train in real.hf.dtype=float32, or with LoRA",
            stacklevel=3,
        )


def position_limit(model: torch.nn.Module, sampling: SamplingConfig) -> tuple[int | None, str]:
    """How many positions a prompt and its rollout may take, and what holds them to it: the model's
    `max_position_embeddings`, or on the vllm backend its `max_model_len` where that is set and smaller
    (vLLM ends a request there as if at the length limit: the completion is cut short, without a word)."""
    limit = getattr(base_model(model).config, "max_position_embeddings", None)
    vllm_len = sampling.vllm.max_model_len if sampling.backend == "vllm" else 0
    if vllm_len and (not limit or vllm_len < limit):
        return vllm_len, f"vLLM's max_model_len={vllm_len} (sampling.vllm.max_model_len) holds"
    return limit, "the model holds"


def check_lengths(
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    engine_cfg: EngineConfig,
    limit: int | None,
    *,
    embedded: bool = False,
    holder: str = "the model holds",
) -> None:
    """ValueError, before any training, when the longest teacher prompt (the whole reference shown)
    plus a full rollout does not fit the model's `limit` positions: over the training pool (a task's
    `train` list, where it keeps one), the evaluation sets and the probe set, the longest in tokens
    among the 32 whose question and reference take the most tokens. `embedded` words the advice for the
    embedded model."""
    problems = [p for ps in task.eval_sets().values() for p in ps] + list(task.probe_set())
    problems += list(getattr(task, "train", None) or ())
    if not limit or not problems:
        return
    builder = PromptBuilder(tokenizer, task.prompt_format, engine_cfg.exposure)
    # every row counted in tokens in one batched call, the 32 longest rendered whole: ranked by their
    # characters, a row of digits (a token each) shorter than 32 prose rows passed and overflowed
    texts = [f"{p.question}\n{p.solution}" for p in problems]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    candidates = [problems[i] for i in sorted(range(len(problems)), key=counts.__getitem__)[-32:]]
    longest = max(len(builder.encode(builder.teacher_prompt(p, 1.0))) for p in candidates)
    new_tokens = {  # the training and the in-training evaluation rollouts
        "real.engine.sampling.max_new_tokens": engine_cfg.sampling.max_new_tokens,
        "real.engine.eval.max_new_tokens": engine_cfg.eval.max_new_tokens,
    }
    max_new = max(new_tokens.values())
    if longest + max_new <= limit:
        return
    more = "raise real.model.max_position" if embedded else "use a model with more positions"
    if longest >= limit:
        advice = f"the prompt alone does not fit: {more}, or data with shorter problems and references"
    else:
        over = " and ".join(key for key, n in new_tokens.items() if n > limit - longest)
        advice = f"lower {over} to at most {limit - longest}, or {more}"
    raise ValueError(
        f"{holder} {limit} positions, but the longest teacher prompt (the whole reference shown) "
        f"takes {longest} tokens and a rollout up to {max_new} more: {advice}"
    )
