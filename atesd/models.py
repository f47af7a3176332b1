"""Models and tokenizers, only ever through the Hugging Face interfaces.

Saves and loads a model and its tokenizer with `save_pretrained` / `from_pretrained` (safetensors):
the embedded default (built in atesd.tiny) or any HF causal LM by hub id or path; LoRA through peft,
and what the engine asks of a model (its output head, EOS ids, dropout). It knows nothing of tasks or
training.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from atesd.hub import cache_only_hint
from atesd.tiny import (
    QWEN3_STYLE_CHAT_TEMPLATE,
    QWEN3_STYLE_SPECIAL,
    SYNTHETIC_CHARS,
    SYNTHETIC_CHAT_TEMPLATE,
    SYNTHETIC_SPECIAL,
    TinyModelConfig,
    build_qwen3_style_tokenizer,
    build_synthetic_tokenizer,
    build_tiny_qwen3,
)

# the embedded default (now atesd.tiny's) is imported from here too, as it always was
__all__ = [
    "QUIET_BELOW_BYTES", "QWEN3_STYLE_CHAT_TEMPLATE", "QWEN3_STYLE_SPECIAL", "SYNTHETIC_CHARS",
    "SYNTHETIC_CHAT_TEMPLATE", "SYNTHETIC_SPECIAL", "HFModelConfig", "LoraSettings", "TinyModelConfig",
    "apply_lora", "base_model", "build_qwen3_style_tokenizer", "build_synthetic_tokenizer",
    "build_tiny_qwen3", "dropout_free", "enable_checkpointing", "eos_token_ids", "head_problem", "is_peft",
    "load_hf_model", "load_pretrained", "load_tokenizer", "meta_skeleton", "model_spec",
    "num_parameters", "quiet_if_small", "save_pretrained",
]  # fmt: skip


@dataclass(frozen=True)
class HFModelConfig:
    """A Hugging Face causal LM to distill instead of the embedded tiny model."""

    name_or_path: str = field(
        default="", metadata={"help": "hub id or local path ('' = the embedded tiny model, warm-started)"}
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="bfloat16", metadata={"help": "weights dtype"}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "attention kernel: sdpa, eager, flash_attention_2 (GPU)"}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the checkpoint's own code"})


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters through peft (rank 0 = full fine-tuning); OPSD v3 (METHOD.md §1): r 64, alpha 128."""

    rank: int = field(default=0, metadata={"help": "adapter rank r (0 = full fine-tuning)"})
    alpha: float = field(default=128.0, metadata={"help": "lora_alpha (scale alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "adapter dropout, in [0, 1)"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "module names that get adapters"},
    )

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rank and not self.target_modules:
            raise ValueError("target_modules must name at least one module when rank > 0")


def is_peft(model: torch.nn.Module) -> bool:
    """A peft-wrapped model (LoRA adapters): its frozen base is reached by `base_model`. Not a
    transformers model that loaded an adapter directory itself (it has `peft_config` too, but is its
    own base: a LoRA run's final_model loaded for evaluation)."""
    return type(model).__module__.startswith("peft")  # the one PEFT test of the project


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if is_peft(model) else model


def head_problem(model: torch.nn.Module) -> str | None:
    """Why the model's logits are not `hidden @ lm_head.weight.T` (how the engine scores tokens: the
    loss, probe, grounded score and mismatch), or None: a head with a bias or adapters, or a config
    that softcaps or scales the logits (Gemma 2, Cohere, Granite)."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        return "it has no output head with a weight (get_output_embeddings())"
    if hasattr(head, "lora_A") or hasattr(head, "base_layer"):
        return "its output head carries adapters (LoRA on lm_head: leave it out of the target modules)"
    if getattr(head, "bias", None) is not None:
        return "its output head has a bias"
    text = model.config.get_text_config(decoder=True)
    for key, plain in (("final_logit_softcapping", None), ("logit_scale", None), ("logits_scaling", 1.0)):
        value = getattr(text, key, plain)
        if value is not None and value != plain:
            return f"its config sets {key}={value}"
    return None


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion, in training, evaluation and on any backend: the tokenizer's
    EOS and the model's generation-config EOS ids (Qwen3 ends a turn at <|im_end|> and its generation
    config also at <|endoftext|>)."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(base_model(model).generation_config, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return sorted(i for i in ids if i is not None)


def apply_lora(model: PreTrainedModel, cfg: LoraSettings, seed: int = 0) -> PreTrainedModel:
    """Wrap `model` with LoRA adapters (only they train); unchanged when cfg.rank == 0. The engine's
    `base` teacher is then the same model with its adapters disabled (atesd/teacher.py). The adapters'
    random init draws from a generator seeded by `seed` (the engine's), not from the process's global
    one, whose state depends on whatever ran before (a second engine in one process, a bench worker's
    previous unit); the global generators are left as they were."""
    if cfg.rank == 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("LoRA needs the optional extra: pip install -e '.[lora]' (peft)") from err
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, lora)


def load_hf_model(
    cfg: HFModelConfig, lora: LoraSettings | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_pretrained` with the config's dtype, attention and remote-code settings, then gradient
    checkpointing and LoRA as asked (its init seeded by `seed`)."""
    if not cfg.name_or_path:
        raise ValueError("HFModelConfig.name_or_path is empty: give a hub id or a local checkpoint path")
    local = Path(cfg.name_or_path).expanduser()
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("pytorch_model*.bin")):
        raise ValueError(
            f"{local} holds only pickle weights (pytorch_model*.bin); atesd loads safetensors only "
            "(no pickle is ever unpickled): convert the checkpoint with save_pretrained(..., "
            "safe_serialization=True)"
        )
    if lora is not None and lora.rank > 0 and (local / "adapter_config.json").is_file():
        raise ValueError(  # it loads merged; the new adapter would be saved over the first one's base
            f"{local} is a LoRA adapter: a new LoRA over it would save a final_model whose adapter "
            "names the first one's base, and reload without the first adapter; train it with "
            "real.lora.rank=0 (a full fine-tune of the merged model), or save the merged model first "
            "(peft's merge_and_unload, then save_pretrained) and start from that"
        )
    model, tokenizer = load_pretrained(
        cfg.name_or_path, cfg.dtype, cfg.attn_implementation, cfg.trust_remote_code, device
    )
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return apply_lora(model, lora or LoraSettings(), seed), tokenizer


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in backward (non-reentrant), under either transformers name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name (the 5.16-5.20 pin lacks it)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


QUIET_BELOW_BYTES = 100 << 20  # a checkpoint this small loads or saves at once: no progress bar


@contextlib.contextmanager
def quiet_if_small(nbytes: int | None) -> Iterator[None]:
    """transformers' progress bars ("Loading weights", "Writing model shards") off while a checkpoint
    of `nbytes` (None: unknown, a hub download) below QUIET_BELOW_BYTES loads or saves: the embedded
    model's 46 tensors drew a bar, carriage returns and all, into every run's output."""
    from transformers.utils import logging as hf_logging

    quiet = nbytes is not None and nbytes < QUIET_BELOW_BYTES and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save model (safetensors) and tokenizer side by side, as a hub checkpoint is laid out."""
    from atesd.state import model_bytes

    with quiet_if_small(model_bytes(model)):
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


_LOCAL_MODEL = "give a local checkpoint directory (real.hf.name_or_path=PATH)"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")  # a hub repo id, not a path


def _hub_repo(local: Path, name_or_path: str) -> str | None:
    """The hub repo a load of `name_or_path` reads: the name itself where it is not on disk, a LoRA
    adapter directory's base where that is not on disk; None where everything is local."""
    if not local.exists():
        return name_or_path
    config = local / "adapter_config.json"
    if config.is_file():
        base = json.loads(config.read_text()).get("base_model_name_or_path") or ""
        if base and not Path(base).expanduser().exists():
            return base
    return None


def load_pretrained(
    name_or_path: str | Path,
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any HF causal LM and its tokenizer by hub id or local path (remote code off unless asked).

    A name that exists on disk (`~` expanded) is a local checkpoint; one that reads as a hub id
    (`name` or `owner/name`, dots allowed: `Qwen/Qwen3-1.7B`) goes to the hub (or its cache); any
    other path must exist. A LoRA adapter directory (a LoRA run's final_model) loads as its base with
    the adapter merged in: a plain model, so that every backend sees the trained weights (vLLM takes a
    plain model's weights by name; the adapter layers transformers would otherwise inject are names
    it does not know); `load_hf_model` refuses a new LoRA over one.

    Raises:
        FileNotFoundError: a path that is not a hub id and does not exist.
        ImportError: an adapter directory without peft installed.
    """
    local, name_or_path, hub_id = _resolve(name_or_path)
    tokenizer = _tokenizer(name_or_path, hub_id, trust_remote_code)
    kwargs = {
        "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,  # never a pickle file, beside safetensors ones or from the hub
    }
    plain = local.is_dir() and not (local / "adapter_config.json").is_file()  # an adapter's base: unknown
    size = sum(f.stat().st_size for f in local.glob("*.safetensors")) if plain else None
    with quiet_if_small(size), cache_only_hint(hub_id, "model", _LOCAL_MODEL):
        model = _load_model(local, name_or_path, kwargs, device)
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """`load_pretrained`'s tokenizer alone (the same path rules, padding on the left), no weights read."""
    _, name_or_path, hub_id = _resolve(name_or_path)
    return _tokenizer(name_or_path, hub_id, trust_remote_code)


def _resolve(name_or_path: str | Path) -> tuple[Path, str, str | None]:
    """(the path on disk, the name to load, the hub repo the load reads or None): see `load_pretrained`."""
    local = Path(name_or_path).expanduser()
    if (local / "final_model").is_dir():  # its config.json is a run config: read as a model's, a riddle
        raise ValueError(
            f"{name_or_path} is a training run's directory, not a model: its trained student is "
            f"{local / 'final_model'}"
        )
    if local.exists():  # absolute: a LoRA adapter saved from this model names it as its base
        local = local.resolve()
        name_or_path = str(local)
    elif not _HUB_ID.fullmatch(str(name_or_path)):
        raise FileNotFoundError(
            f"model path {name_or_path} does not exist; pass an existing directory or a hub id (owner/name)"
        )
    return local, str(name_or_path), _hub_repo(local, str(name_or_path))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _tokenizer(name_or_path: str, hub_id: str | None, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, padding on the left: an adapter folder without one reads its base's;
    one without an EOS token takes the generation config's; pad falls back to EOS. ValueError, in one
    line, where no tokenizer is there (AutoTokenizer returned an empty one, which encodes every text
    to nothing) or nothing ends a completion."""
    local = Path(name_or_path)
    base = _adapter_base(local)
    if base is not None and not any((local / name).is_file() for name in TOKENIZER_FILES):
        name_or_path = base  # a LoRA run's adapter saved alone: its base model's tokenizer
    with cache_only_hint(hub_id, "model", _LOCAL_MODEL):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if len(tokenizer) <= 1 or not tokenizer("a b", add_special_tokens=False)["input_ids"]:
        raise ValueError(
            f"{name_or_path} holds no tokenizer (AutoTokenizer gave one of {len(tokenizer)} token(s), which "
            f"encodes every text to nothing): copy the checkpoint's tokenizer files beside its weights "
            f"({', '.join(TOKENIZER_FILES[:2])}, or vocab.json and merges.txt, or tokenizer.model)"
        )
    if tokenizer.eos_token_id is None:
        eos = _generation_eos(name_or_path)
        if eos is None:
            raise ValueError(
                f"{name_or_path}: its tokenizer has no EOS token (eos_token in tokenizer_config.json) and "
                "its generation_config.json names no eos_token_id, so no completion could end: set one"
            )
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _adapter_base(local: Path) -> str | None:
    """The base model a LoRA adapter folder names (adapter_config.json), or None for anything else."""
    try:
        config = json.loads((local / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def _generation_eos(name_or_path: str) -> int | None:
    """The first eos_token_id of the checkpoint's generation config, or None (none there, or no file)."""
    from transformers import GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(name_or_path).eos_token_id
    except (OSError, ValueError):
        return None
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return next((int(i) for i in ids if i is not None), None)


def model_spec(model: PreTrainedModel) -> dict:
    """What `meta_skeleton` needs to build `model` again without its weights: its config and generation
    config, its attention implementation, and every parameter's and buffer's name, shape and dtype."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return {
        "class": type(model).__name__,
        "config": model.config,
        "attn_implementation": model.config._attn_implementation,
        "generation_config": model.generation_config,
        "tensors": {name: (tuple(t.shape), t.dtype) for name, t in tensors},
    }


def meta_skeleton(spec: dict, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model `spec` (`model_spec`'s) describes, every parameter and buffer on the meta device (no
    storage, nothing read from disk), each with the dtype it had there. Under FSDP the ranks other than
    rank 0 start from this, and rank 0's weights are broadcast into their shards
    (`atesd.distributed.shard_layers` with `fill`). `trust_remote_code`: the config's class is the
    checkpoint's own code (already imported: unpickling `spec` needed it), whose model class builds it.

    Raises:
        ValueError: the skeleton's tensors differ from `spec`'s by name or shape (a model class that
            builds other tensors from the same config than it loaded with)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            spec["config"],
            attn_implementation=spec["attn_implementation"],
            trust_remote_code=trust_remote_code,
        )
    want = spec["tensors"]
    have = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    wrong = sorted(set(want) ^ set(have)) or [n for n in want if tuple(have[n].shape) != want[n][0]]
    if type(model).__name__ != spec["class"] or wrong:
        raise ValueError(
            f"{spec['class']} built again from its config on the meta device is not the loaded model "
            f"({type(model).__name__}; first differing tensor: {wrong[0] if wrong else '-'}): set "
            "real.engine.fsdp=false, or report the model"
        )
    for name, tensor in have.items():
        if tensor.dtype != want[name][1]:  # the loaded dtypes (a checkpoint may keep some modules in float32)
            tensor.data = torch.empty_like(tensor, dtype=want[name][1])
    model.generation_config = copy.deepcopy(spec["generation_config"])  # its EOS ids end the rollouts
    return model


def _load_model(
    local: Path, name_or_path: str | Path, kwargs: dict, device: str | torch.device
) -> PreTrainedModel:
    """`load_pretrained`'s model: a plain checkpoint, or a LoRA adapter's base with the adapter merged."""
    if (local / "adapter_config.json").is_file():
        if not (local / "adapter_model.safetensors").is_file() and (local / "adapter_model.bin").is_file():
            raise ValueError(  # peft would torch.load it: use_safetensors is not passed on to adapters
                f"{local} holds only pickle adapter weights (adapter_model.bin); atesd loads safetensors "
                "only (no pickle is ever unpickled): save the adapter with save_pretrained(..., "
                "safe_serialization=True)"
            )
        try:
            from peft import AutoPeftModelForCausalLM
        except ImportError as err:
            raise ImportError(
                f"{local} is a LoRA adapter: loading it needs the optional extra: "
                "pip install -e '.[lora]' (peft)"
            ) from err
        return AutoPeftModelForCausalLM.from_pretrained(name_or_path, **kwargs).merge_and_unload().to(device)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).to(device)


def num_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def dropout_free(model: torch.nn.Module) -> bool:
    """Whether training mode computes what eval mode does, so a training forward can stand in for an
    eval one: no dropout layer with p > 0 and no config setting that draws noise in training (any
    `*dropout*`, `*pdrop*` or `*jitter*` above 0: attention or hidden dropout, a MoE router's
    jitter; a noise setting named otherwise is not seen)."""
    settings = model.config.get_text_config(decoder=True).to_dict()
    noisy = [
        k for k, v in settings.items()
        if any(w in k for w in ("dropout", "pdrop", "jitter")) and isinstance(v, (int, float)) and v > 0
    ]  # fmt: skip
    layers = (m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd))
    return not noisy and all(p == 0 for p in layers)
