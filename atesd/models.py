"""Models and tokenizers, only ever through the Hugging Face interfaces.

Builds the embedded default (a character-level `PreTrainedTokenizerFast` with a chat template and
a tiny `Qwen3ForCausalLM`), saves and loads both with `save_pretrained` / `from_pretrained`
(safetensors), and loads any HF causal LM by hub id or path. It knows nothing of tasks or training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

log = logging.getLogger(__name__)

SYNTHETIC_CHARS = "0123456789+-*=;|QA"
SYNTHETIC_SPECIAL = (
    "<|pad|>",
    "<|eos|>",
    "<|user|>",
    "<|assistant|>",
    "<|ref|>",
    "<|ans|>",
    "<|go|>",
    "<|unk|>",
)
# Roles render as single special tokens; an assistant turn ends with <|eos|>, as Qwen's ends with <|im_end|>.
SYNTHETIC_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|eos|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_synthetic_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer for the synthetic task, built with the `tokenizers` library."""
    vocab = {tok: i for i, tok in enumerate(SYNTHETIC_SPECIAL + tuple(SYNTHETIC_CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SYNTHETIC_SPECIAL))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
        padding_side="left",
    )
    tok.chat_template = SYNTHETIC_CHAT_TEMPLATE
    return tok


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the embedded Qwen3-architecture model (defaults: about 1M parameters)."""

    num_layers: int = field(default=4, metadata={"help": "decoder layers (>= 1)"})
    hidden_size: int = field(default=128, metadata={"help": "model width (multiple of num_heads)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads (>= 1)"})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads (divides num_heads)"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width (>= 1)"})
    max_position: int = field(default=512, metadata={"help": "longest sequence in tokens"})
    init_seed: int = field(default=0, metadata={"help": "seed of the random initialisation"})

    def __post_init__(self) -> None:
        if min(self.num_layers, self.num_heads, self.num_kv_heads, self.intermediate_size) < 1:
            raise ValueError("num_layers, num_heads, num_kv_heads and intermediate_size must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")


def build_tiny_qwen3(
    tokenizer: PreTrainedTokenizerBase, cfg: TinyModelConfig | None = None
) -> Qwen3ForCausalLM:
    """A randomly initialised `Qwen3ForCausalLM` sized for a CPU, seeded by `cfg.init_seed`."""
    cfg = cfg or TinyModelConfig()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    # fork_rng(devices=[]) saves and restores only the CPU generator: the global RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save model (safetensors) and tokenizer side by side, as a hub checkpoint is laid out."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def load_pretrained(
    name_or_path: str | Path,
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any HF causal LM and its tokenizer by hub id or local path (remote code off unless asked).

    Raises:
        FileNotFoundError: a local-looking path that does not exist.
    """
    path = Path(name_or_path)
    if (str(name_or_path).startswith((".", "/", "~")) or path.suffix) and not path.expanduser().exists():
        raise FileNotFoundError(
            f"model path {name_or_path} does not exist; pass an existing directory or a hub id"
        )
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    ).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def num_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
