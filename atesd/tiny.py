"""The embedded default model: a character-level `PreTrainedTokenizerFast` with a chat template and a
tiny `Qwen3ForCausalLM`, and the Qwen3-style character tokenizer that stands in for a real Qwen3 one.
Builds them only (saving and loading are atesd.models'); knows nothing of tasks or training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

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


# Qwen3's chat layout: <|im_start|>role\ncontent<|im_end|>\n per turn; with enable_thinking=False the
# generation prompt ends with an empty think block (the model answers directly), as Qwen3's own template.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
QWEN3_STYLE_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|unk|>")


def build_qwen3_style_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with Qwen3's special tokens and a chat template
    that honours `enable_thinking` as Qwen3's does: the tests' stand-in for a real Qwen3 tokenizer
    (same code path: `apply_chat_template(..., enable_thinking=...)`, eos `<|im_end|>`)."""
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(QWEN3_STYLE_SPECIAL + tuple(chars))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(QWEN3_STYLE_SPECIAL))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|unk|>",
        padding_side="left",
    )
    tok.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
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
        sizes = (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "max_position",
        )
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_position < 1:
            raise ValueError(f"max_position must be >= 1, got {self.max_position}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:  # rotary embeddings rotate pairs of dimensions
            raise ValueError(
                f"hidden_size / num_heads ({self.hidden_size} / {self.num_heads} = "
                f"{self.hidden_size // self.num_heads}) must be even: the head size rotary embeddings take"
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
