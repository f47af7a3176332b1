"""Launched by tests/test_distributed.py under torchrun (two ranks, gloo): the gradient averaging and
the engine's statistics across ranks. Arguments: out dir. Each rank writes rank<r>.json."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd.distributed import Dist  # noqa: E402
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig  # noqa: E402
from atesd.models import TinyModelConfig, build_synthetic_tokenizer, build_tiny_qwen3  # noqa: E402
from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist = Dist.from_env()
    record: dict = {"rank": dist.rank}
    # 1. a token mean over ranks of unequal tokens: each rank's loss times its share has, once the
    # gradients are averaged, the gradient of the pooled batch's mean (rank 0: 2 tokens, rank 1: 6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, generator=g)
    mine = slice(0, 2) if dist.rank == 0 else slice(2, 8)
    w = torch.nn.Parameter(torch.ones(3))
    share, total = dist.token_share(mine.stop - mine.start)
    (((x[mine] @ w - y[mine]) ** 2).mean() * share).backward()
    dist.average_gradients([w])
    pooled = torch.nn.Parameter(torch.ones(3))
    ((x @ pooled - y) ** 2).mean().backward()
    record["tokens"] = total
    record["pooled_gradient_error"] = float((w.grad - pooled.grad).abs().max())
    # 2. trained parameters of two dtypes (a bf16 model with fp32 routers) average each in its own
    low, high = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)), torch.nn.Parameter(torch.zeros(2))
    low.grad = torch.full((2,), float(dist.rank + 1), dtype=torch.bfloat16)
    high.grad = torch.full((2,), float(2 * dist.rank + 1))
    dist.average_gradients([low, high])
    record["mixed"] = [str(low.grad.dtype), low.grad.tolist(), str(high.grad.dtype), high.grad.tolist()]
    # 3. a per-band update: every statistic is the whole batch's on every rank (alpha, tokens too)
    tokenizer = build_synthetic_tokenizer()
    task = ChainBagTask(ChainBagConfig(chain_lengths=(0, 3), bag_sizes=(0, 2), bands=((3, 0), (0, 2), (2, 2)),
                                       eval_size=4, probe_size=4))  # fmt: skip
    model = build_tiny_qwen3(tokenizer, TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2,
                                                        num_kv_heads=1, intermediate_size=64))  # fmt: skip
    cfg = EngineConfig(batch_size=4, seed=dist.rank, sampling=SamplingConfig(max_new_tokens=12))
    engine = DistillEngine(model, tokenizer, task, cfg, dist=dist)
    bands = sorted(task.eval_sets())
    stats = engine.step(dict(zip(bands, (0.2, 0.5, 0.9))))
    record["step"] = {k: v for k, v in stats.metrics().items() if not k.startswith("time/")}
    (out / f"rank{dist.rank}.json").write_text(json.dumps(record))
    del engine, model
    dist.close()
