"""A colocated vLLM engine as the rollout backend (optional extra `atesd[vllm]`, GPU only).

The student trains in this process with `transformers`; a vLLM engine in the same process holds a
copy of its weights in `VLLMConfig.gpu_memory_utilization` of the GPU and samples the rollouts. After
every optimiser step the engine's weights are overwritten from the student's (`sync_weights`: a LoRA
student's layers are pushed as base + adapter delta, computed out of place, so a bf16 base is never
written and cannot drift from push to push) and vLLM's prefix cache is reset, so no cached key/value
of the old weights survives. Randomness stays ours: every prompt gets a vLLM seed drawn
from the caller's `torch.Generator`, so a run with the same seed draws the same seeds.

The weight push follows TRL's colocate mode (`trl/generation/vllm_generation.py`): parameters are
renamed to the plain checkpoint names (peft's `base_model.model.` prefix and `.base_layer` removed,
adapter tensors skipped) and handed to the engine model's `load_weights`. vLLM stops a completion
only at our EOS ids (`ignore_eos` with our `stop_token_ids`: vLLM would otherwise add every EOS id
of the checkpoint's generation config), as our own sampler does. vLLM is imported only here,
only when this backend is built; everything vLLM-specific is in this file.

Tested pair: see docs/USAGE.md ("vLLM rollouts"); vLLM pins exact torch and transformers versions.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from atesd.models import base_model, is_peft
from atesd.rollout.base import RolloutBatch, SamplingParams

EXTRA_HINT = "pip install 'atesd[vllm]' (needs a CUDA GPU and the torch version vLLM pins)"
SEED_RANGE = 2**31 - 1
DTYPES = ("auto", "bfloat16", "float16", "float32")  # vLLM takes a per-request seed as a non-negative int


@dataclass(frozen=True)
class VLLMConfig:
    """The colocated engine's settings (vLLM's own names where one exists)."""

    gpu_memory_utilization: float = field(
        default=0.3,
        metadata={"help": "fraction of the GPU vLLM may take for its weights and KV cache, in (0, 1); "
                  "the rest is the trainer's"},
    )  # fmt: skip
    max_model_len: int = field(
        default=0, metadata={"help": "longest prompt + completion in tokens (0 = the model's own limit)"}
    )
    max_num_seqs: int = field(default=256, metadata={"help": "sequences vLLM decodes at once (>= 1)"})
    max_num_batched_tokens: int = field(
        default=4096,
        metadata={"help": "tokens per engine step (0 = vLLM's default; its memory profiler can misjudge "
                  "very large defaults when colocated)"},
    )  # fmt: skip
    dtype: str = field(
        default="auto", metadata={"help": "vLLM dtype: auto (the student's), bfloat16, float16, float32"}
    )
    enforce_eager: bool = field(default=False, metadata={"help": "no CUDA graphs (slower, less memory)"})
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "reuse KV of shared prompt prefixes (reset after every weight push)"}
    )
    enable_sleep_mode: bool = field(
        default=False,
        metadata={"help": "release vLLM's GPU memory outside rollouts (level 1 sleep: KV cache freed, "
                  "weights offloaded to the CPU); more memory for training, slower rollouts"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        checks = (
            ("gpu_memory_utilization", 0 < self.gpu_memory_utilization < 1, "in (0, 1)"),
            ("max_model_len", self.max_model_len >= 0, ">= 0"),
            ("max_num_seqs", self.max_num_seqs >= 1, ">= 1"),
            ("max_num_batched_tokens", self.max_num_batched_tokens >= 0, ">= 0"),
            ("dtype", self.dtype in DTYPES, f"one of {DTYPES}"),
        )  # fmt: skip
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"vllm.{name} must be {rule}, got {getattr(self, name)!r}")


def import_vllm() -> Any:
    """The `vllm` module, or an ImportError naming the extra."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"the 'vllm' rollout backend needs the optional extra: {EXTRA_HINT}") from err
    return vllm


def check_runnable() -> None:
    """ImportError naming the extra where vLLM is not installed, OSError where there is no CUDA GPU."""
    import_vllm()
    if not torch.cuda.is_available():
        raise OSError(
            f"the 'vllm' rollout backend needs a CUDA GPU; use the 'hf' backend here ({EXTRA_HINT})"
        )


def model_path(model: nn.Module) -> str:
    """The hub id or directory the student was loaded from (vLLM loads its own copy from it)."""
    base = base_model(model)
    path = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
    if not path:
        raise ValueError(
            "the vLLM backend loads the model from its hub id or directory, and this model has none "
            "(the embedded model is built in memory): use the 'hf' backend, or save the model first"
        )
    return str(path)


def sampling_kwargs(params: SamplingParams, eos_token_ids: list[int], seed: int | None) -> dict[str, Any]:
    """Our sampling settings as vLLM `SamplingParams` keywords (one completion, ids only, our EOS)."""
    return {
        "n": 1,
        "temperature": params.temperature,  # 0 is greedy in vLLM too
        "top_k": params.top_k if params.top_k > 0 else -1,  # our 0 = off; -1 = off in every vLLM
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": list(eos_token_ids),
        "ignore_eos": True,  # stop at our ids only, not also at the generation config's EOS ids
        "seed": seed,
        "detokenize": False,  # we decode with our tokenizer
    }


def lora_layers(model: nn.Module) -> dict[str, tuple[nn.Module, list[str]]]:
    """{state-dict name of a LoRA layer's base weight: (the layer, its active adapters)}; empty for a
    model without peft adapters (or with them merged already)."""
    if not is_peft(model):
        return {}
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            active = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
            if active:
                layers[f"{name}.base_layer.weight"] = (module, active)
    return layers


def vllm_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of every weight vLLM holds. A LoRA student's adapted layers come as
    base + delta, computed here one layer at a time (the model is not written; all deltas at once, in
    the adapters' float32, held twice the adapted base weights: 28 GB for Qwen3-8B at rank 64 on every
    projection); peft's prefix and `.base_layer` are removed and adapter tensors skipped. An
    FSDP-sharded weight is gathered whole (a collective: every rank pushes at the same step)."""
    from atesd.distributed import is_sharded

    peft = is_peft(model)
    layers = lora_layers(model)
    for name, tensor in model.state_dict().items():
        if peft and ("lora_" in name or "original_module" in name):
            continue  # adapter factors: their product is in the delta; saved-module originals: unused
        tensor = (tensor.full_tensor() if is_sharded(tensor) else tensor).detach()
        if name in layers:
            module, active = layers[name]
            delta = sum(module.get_delta_weight(a) for a in active)
            tensor = tensor + delta.to(tensor.dtype)
            del delta
        if peft:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace("modules_to_save.default.", "")
        yield name, tensor


def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous of a single-process vLLM engine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dtype_name(model: nn.Module) -> str:
    """vLLM's name of the student's parameter dtype."""
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")


class VLLMSampler:
    """Rollouts from a vLLM engine colocated with the trainer; implements `RolloutBackend`.

    Args:
        model: the student (a `transformers` causal LM, or a peft model around one). vLLM loads its
            own copy from the student's hub id or directory, then follows the student through
            `sync_weights`.
        eos_token_ids: a completion stops after any of these (the EOS is kept, as in `HFSampler`).
        pad_token_id: unused by vLLM (no padding); kept for the backend signature.
        cfg: the engine's settings.
        trust_remote_code: passed to vLLM (as the student was loaded).
        llm: an already built `vllm.LLM` (tests); built from `cfg` when None.
    """

    owns_weights = True  # the engine's copy is overwritten from the student by `sync_weights`

    def __init__(
        self,
        model: nn.Module,
        eos_token_ids: list[int],
        pad_token_id: int,
        cfg: VLLMConfig | None = None,
        trust_remote_code: bool = False,
        llm: Any | None = None,
    ) -> None:
        self.cfg = cfg or VLLMConfig()
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.trust_remote_code = trust_remote_code
        self._vllm = import_vllm()
        self.llm = llm if llm is not None else self._build_llm()
        self.pushes = 0  # weight pushes so far
        self.asleep: set[str] = set()  # sleep mode: which of vLLM's "weights", "kv_cache" are released
        # the student may differ from its checkpoint already (a warm start, a resume); a skeleton on the
        # meta device (under FSDP the ranks but 0's, filled from rank 0's weights) is pushed once filled
        if not any(p.is_meta for p in model.parameters()):
            self.sync_weights()
        self._sleep()

    def _build_llm(self) -> Any:
        check_runnable()
        # One in-process engine per trainer rank, launched by torchrun (or this single process): vLLM's
        # "external_launcher" executor reads the torch.distributed variables, set here when absent.
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
        kwargs: dict[str, Any] = {
            "model": model_path(self.model),
            "dtype": dtype_name(self.model) if self.cfg.dtype == "auto" else self.cfg.dtype,
            "gpu_memory_utilization": self.cfg.gpu_memory_utilization,
            "max_num_seqs": self.cfg.max_num_seqs,
            "enforce_eager": self.cfg.enforce_eager,
            "enable_prefix_caching": self.cfg.enable_prefix_caching,
            "enable_sleep_mode": self.cfg.enable_sleep_mode,
            "distributed_executor_backend": "external_launcher",
            "tensor_parallel_size": 1,
            "seed": int(os.environ["RANK"]),
            "trust_remote_code": self.trust_remote_code,
        }
        if self.cfg.max_model_len:
            kwargs["max_model_len"] = self.cfg.max_model_len
        if self.cfg.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = self.cfg.max_num_batched_tokens
        return self._vllm.LLM(**kwargs)

    def _engine_model(self) -> Any:
        """vLLM's in-process model (what TRL's colocate mode loads weights into)."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as err:
            raise RuntimeError(
                "cannot reach the vLLM engine's model to push weights (llm.llm_engine.model_executor."
                "driver_worker.model_runner.model); this vLLM version is not the tested one "
                "(docs/USAGE.md, 'vLLM rollouts')"
            ) from err

    def _wake(self, *tags: str) -> None:
        """Sleep mode: map back those of `tags` that are released (vLLM refuses to wake what is awake)."""
        todo = [t for t in tags if t in self.asleep]
        if todo:
            torch.cuda.empty_cache()  # room for what comes back
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)

    def _sleep(self) -> None:
        """Sleep mode: release the KV cache and offload the weights (only when all of it is awake:
        vLLM skips a sleep while anything still sleeps)."""
        if self.cfg.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Push the student's current weights into the engine and reset its prefix cache (the KV
        cache stays released in sleep mode until the next rollout)."""
        self._wake("weights")
        engine_model = self._engine_model()
        for name, tensor in vllm_weights(self.model):
            engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self.pushes += 1

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        """One completion per prompt; each prompt's vLLM seed is drawn from `generator` (fresh seeds
        from the OS when None and sampling; greedy needs none)."""
        t0 = time.perf_counter()
        if generator is not None:
            seeds = torch.randint(
                0, SEED_RANGE, (len(prompts),), generator=generator, device=generator.device
            )
            seeds = seeds.tolist()
        else:
            seeds = [None] * len(prompts)
        per_prompt = [
            self._vllm.SamplingParams(**sampling_kwargs(params, self.eos_token_ids, s)) for s in seeds
        ]
        self._wake("weights", "kv_cache")
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], sampling_params=per_prompt, use_tqdm=False
        )
        self._sleep()
        eos = set(self.eos_token_ids)
        completions, finished = [], []
        for out in outputs:
            seq = out.outputs[0]
            ids = list(seq.token_ids)
            stopped = seq.finish_reason == "stop"
            # our contract keeps the EOS in the completion; add it back if vLLM left it out
            if stopped and (not ids or ids[-1] not in eos) and seq.stop_reason in eos:
                ids.append(int(seq.stop_reason))
            completions.append(ids)
            finished.append(bool(ids) and ids[-1] in eos)
        batch = RolloutBatch([list(p) for p in prompts], completions, finished)
        total_s = time.perf_counter() - t0
        batch.timings = {"total_s": total_s, "tokens_per_s": batch.num_tokens / max(total_s, 1e-9)}
        return batch
