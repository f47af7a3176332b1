import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd.models import (  # noqa: E402
    TinyModelConfig,
    build_qwen3_style_tokenizer,
    build_synthetic_tokenizer,
    build_tiny_qwen3,
    save_pretrained,
)
from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask  # noqa: E402

# one thread: the models here are tiny, and two OpenMP threads on a busy 2-core machine spin-wait badly
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_synthetic_tokenizer()


@pytest.fixture(scope="session")
def small_task():
    """A small chain-then-bag task: short problems and small eval sets, for fast tests."""
    return ChainBagTask(
        ChainBagConfig(
            chain_lengths=(0, 3), bag_sizes=(0, 2), bands=((3, 0), (0, 2), (2, 2)), eval_size=16, probe_size=8
        )
    )


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer, width-64 random Qwen3 (fresh per test, seeded)."""
    cfg = TinyModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    return build_tiny_qwen3(tokenizer, cfg)


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny Qwen3 and a tokenizer whose chat template honours enable_thinking, saved as an HF
    checkpoint directory: what the real-model path loads by path."""
    tokenizer = build_qwen3_style_tokenizer()
    cfg = TinyModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    save_pretrained(build_tiny_qwen3(tokenizer, cfg), tokenizer, tmp_path / "tiny-qwen3")
    return tmp_path / "tiny-qwen3"
