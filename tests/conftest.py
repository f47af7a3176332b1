import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import hub  # noqa: E402
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


MAX_WORKERS = 4  # past 4 the longest files (tests/test_reliability.py: ~2.5 min) set the wall time


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per core this process may use, at most MAX_WORKERS
    (every worker imports torch and transformers, ~0.5 GB); none where the tests asked for lie in one
    file (--dist loadfile would give it to one worker anyway, after seconds of start-up);
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    files = {str(arg).split("::")[0] for arg in config.args}
    if len(files) == 1 and files.pop().endswith(".py"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_WORKERS, cores)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Tests never reach for the network: a hub id read in a test finds the hub unreachable (as on
    CI), and the offline switch that follows is undone after the test (tests/test_hub.py checks the
    switch itself against ports of this machine)."""
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "reachable", lambda url, timeout=hub.CONNECT_TIMEOUT_S: False)
    monkeypatch.setattr(hub, "_checked", {})
    env, flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    config = sys.modules.get("datasets.config")
    flags = (config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE) if config is not None else (flag, flag)
    yield
    if env is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = env
    constants.HF_HUB_OFFLINE = flag
    config = sys.modules.get("datasets.config")  # imported during the test, it copied the switch
    if config is not None:
        config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE = flags


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
