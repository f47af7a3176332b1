"""Tokens/s of our `HFSampler` against `model.generate`, greedy, on the same left-padded prompts.

    python recipes/bench_sampler.py                 # 1M-param Qwen3, batch 32, 64 new tokens, 2 threads
    python recipes/bench_sampler.py --threads 1 --repeats 15

Both sides decode every row to the full length (the EOS id is outside the vocabulary), so they do the
same work; the best of `--repeats` interleaved runs is reported, since timings on a shared CPU are noisy.
`bench_sampler` is importable by larger benchmark scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd.rollout import HFSampler, SamplingParams  # noqa: E402
from atesd.rollout.hf import left_pad  # noqa: E402


def build_model(vocab_size: int = 32, seed: int = 0) -> Qwen3ForCausalLM:
    """The project's ~1M-parameter benchmark decoder, random init."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=512, tie_word_embeddings=True,
        max_position_embeddings=512, attn_implementation="sdpa",
    )  # fmt: skip
    return Qwen3ForCausalLM(config).eval()


def make_prompts(
    batch: int, vocab_size: int, seed: int, min_len: int = 10, max_len: int = 30
) -> list[list[int]]:
    """`batch` random prompts with lengths uniform in [min_len, max_len]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g).tolist()
    return [torch.randint(1, vocab_size, (n,), generator=g).tolist() for n in lengths]


def _hf_generate(
    model: nn.Module, prompts: list[list[int]], max_new_tokens: int, eos: int, pad: int
) -> list[list[int]]:
    input_ids, mask = left_pad(prompts, pad, model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
            do_sample=False, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad,
        )  # fmt: skip
    rows = out[:, input_ids.shape[1] :].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]  # drop the padding after EOS


def bench_sampler(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    repeats: int = 5,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> dict[str, float | int | bool]:
    """Times greedy `HFSampler` and `model.generate` on the same prompts, interleaved, best of `repeats`.

    Args:
        model: a `transformers` causal LM.
        prompts: token ids per prompt (left-padded into one batch by both sides).
        max_new_tokens: tokens to generate per prompt.
        repeats: timed runs per side (after one warm-up each).
        eos_token_id: stop id; default the vocabulary size, which is never sampled, so every row runs
            to max_new_tokens.
        pad_token_id: padding id.

    Returns:
        Best wall times, tokens/s of both, `speedup` (ours / HF tokens/s), our prefill/decode split,
        whether the greedy outputs are identical and whether every row ran to the full length.
    """
    eos = model.config.get_text_config().vocab_size if eos_token_id is None else eos_token_id
    sampler = HFSampler(model, eos_token_ids=[eos], pad_token_id=pad_token_id)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    ours = sampler.generate(prompts, params)
    theirs = _hf_generate(model, prompts, max_new_tokens, eos, pad_token_id)
    hf_times, our_times, splits = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _hf_generate(model, prompts, max_new_tokens, eos, pad_token_id)
        hf_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = sampler.generate(prompts, params)
        our_times.append(time.perf_counter() - t0)
        splits.append((batch.timings["prefill_s"], batch.timings["decode_s"]))
    tokens = ours.num_tokens
    hf_s, our_s = min(hf_times), min(our_times)
    best = splits[our_times.index(our_s)]
    return {
        "batch": len(prompts),
        "new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "hf_best_s": hf_s,
        "ours_best_s": our_s,
        "ours_prefill_s": best[0],
        "ours_decode_s": best[1],
        "hf_tokens_per_s": tokens / hf_s,
        "ours_tokens_per_s": tokens / our_s,
        "speedup": hf_s / our_s,
        "greedy_equal": ours.completion_ids == theirs,
        "full_length": all(len(c) == max_new_tokens for c in ours.completion_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="prompts per batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="model init and prompt seed")
    args = parser.parse_args()
    if min(args.threads, args.batch, args.new_tokens, args.repeats) < 1:
        parser.error("--threads, --batch, --new-tokens and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # generate() notes that top_k is unused when greedy
    model = build_model(seed=args.seed)
    prompts = make_prompts(args.batch, model.config.vocab_size, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen3 {n_params / 1e6:.2f}M params, batch {args.batch}, {args.new_tokens} new tokens, "
          f"{args.threads} threads, best of {args.repeats}")  # fmt: skip
    r = bench_sampler(model, prompts, max_new_tokens=args.new_tokens, repeats=args.repeats)
    print(f"model.generate : {r['hf_tokens_per_s']:8.0f} tokens/s  ({r['hf_best_s'] * 1e3:.1f} ms)")
    print(f"HFSampler      : {r['ours_tokens_per_s']:8.0f} tokens/s  ({r['ours_best_s'] * 1e3:.1f} ms: "
          f"prefill {r['ours_prefill_s'] * 1e3:.1f}, decode {r['ours_decode_s'] * 1e3:.1f})")  # fmt: skip
    print(f"speedup        : {r['speedup']:.2f}x")
    print(f"greedy equal   : {r['greedy_equal']}   every row {args.new_tokens} tokens: {r['full_length']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
