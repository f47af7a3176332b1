"""Tokens/s of our `HFSampler` against `model.generate` on the same left-padded prompts.

    python recipes/bench_sampler.py                  # 1M-param Qwen3, batch 32, 64 new tokens, 2 threads
    python recipes/bench_sampler.py --threads 1 --repeats 15
    python recipes/bench_sampler.py --temperature 1 --eos 5 7   # sampled rollouts that end at EOS

By default both sides decode greedily and every row to the full length (the EOS id is outside the
vocabulary), so they do the same work. With --eos, rows stop at EOS (our sampler drops finished rows;
`generate` keeps them) and each side's tokens/s counts its own tokens up to EOS. The best of
`--repeats` interleaved runs is reported, since timings on a shared CPU are noisy. `bench_sampler` is
importable by larger benchmark scripts.
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
    model: nn.Module, prompts: list[list[int]], params: SamplingParams, eos: list[int], pad: int
) -> list[list[int]]:
    """`model.generate` on the left-padded batch; each row cut after its first EOS."""
    input_ids, mask = left_pad(prompts, pad, model.device)
    sampling = (
        {"do_sample": True, "temperature": params.temperature} if not params.greedy else {"do_sample": False}
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=mask.long(), max_new_tokens=params.max_new_tokens,
            top_k=params.top_k, top_p=params.top_p, eos_token_id=eos, pad_token_id=pad, **sampling,
        )  # fmt: skip
    rows = out[:, input_ids.shape[1] :].tolist()
    return [row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in rows]


def bench_sampler(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    repeats: int = 5,
    eos_token_ids: list[int] | None = None,
    temperature: float = 0.0,
    pad_token_id: int = 0,
    seed: int = 0,
    compile: bool = False,
) -> dict[str, float | int | bool]:
    """Times `HFSampler` and `model.generate` on the same prompts, interleaved, best of `repeats`.

    Args:
        model: a `transformers` causal LM.
        prompts: token ids per prompt (left-padded into one batch by both sides).
        max_new_tokens: most tokens generated per prompt.
        repeats: timed runs per side (after one warm-up each).
        eos_token_ids: stop ids; default the vocabulary size, never sampled, so rows run to full length.
        temperature: 0 is greedy; above 0, run r samples with seed + r (`generate` draws from the global RNG).
        pad_token_id: padding id.
        seed: base seed of the sampled runs.
        compile: build our sampler with `compile=True` (the warm-up call pays the compile).

    Returns:
        Best wall times, tokens/s of both (each side's own tokens), `speedup` (ratio of tokens/s), our
        prefill/decode split, whether the warm-up outputs are identical and whether every row ran to
        max_new_tokens.
    """
    eos = [model.config.get_text_config().vocab_size] if eos_token_ids is None else list(eos_token_ids)
    sampler = HFSampler(model, eos_token_ids=eos, pad_token_id=pad_token_id, compile=compile)
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens)
    torch.manual_seed(seed)  # warm-up, and the outputs compared
    theirs = _hf_generate(model, prompts, params, eos, pad_token_id)
    first = sampler.generate(prompts, params, torch.Generator().manual_seed(seed))
    runs = {"hf": [], "ours": []}  # (seconds, tokens, prefill_s, decode_s) per run
    for r in range(1, repeats + 1):
        torch.manual_seed(seed + r)
        t0 = time.perf_counter()
        n_tokens = sum(map(len, _hf_generate(model, prompts, params, eos, pad_token_id)))
        runs["hf"].append((time.perf_counter() - t0, n_tokens, 0.0, 0.0))
        t0 = time.perf_counter()
        batch = sampler.generate(prompts, params, torch.Generator().manual_seed(seed + r))
        split = batch.timings["prefill_s"], batch.timings["decode_s"]
        runs["ours"].append((time.perf_counter() - t0, batch.num_tokens, *split))
    hf, ours = (max(v, key=lambda run: run[1] / run[0]) for v in runs.values())  # best tokens/s
    return {
        "batch": len(prompts),
        "new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "hf_best_s": hf[0],
        "ours_best_s": ours[0],
        "ours_prefill_s": ours[2],
        "ours_decode_s": ours[3],
        "hf_tokens_per_s": hf[1] / hf[0],
        "ours_tokens_per_s": ours[1] / ours[0],
        "speedup": (ours[1] / ours[0]) / (hf[1] / hf[0]),
        "outputs_equal": first.completion_ids == theirs,
        "full_length": all(len(c) == max_new_tokens for c in first.completion_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="prompts per batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="model init, prompt and sampling seed")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (>= 0)")
    parser.add_argument("--eos", type=int, nargs="*", default=None, help="EOS ids (default: none reachable)")
    args = parser.parse_args()
    if min(args.threads, args.batch, args.new_tokens, args.repeats) < 1 or args.temperature < 0:
        parser.error("--threads, --batch, --new-tokens and --repeats must be >= 1, --temperature >= 0")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # generate() notes that top_k is unused when greedy
    model = build_model(seed=args.seed)
    prompts = make_prompts(args.batch, model.config.vocab_size, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen3 {n_params / 1e6:.2f}M params, batch {args.batch}, {args.new_tokens} new tokens, "
          f"temperature {args.temperature}, EOS {args.eos}")  # fmt: skip
    print(f"{args.threads} threads, best of {args.repeats} interleaved runs")
    r = bench_sampler(
        model, prompts, args.new_tokens, args.repeats, args.eos, args.temperature, seed=args.seed
    )
    print(f"model.generate : {r['hf_tokens_per_s']:8.0f} tokens/s  ({r['hf_best_s'] * 1e3:.1f} ms)")
    print(f"HFSampler      : {r['ours_tokens_per_s']:8.0f} tokens/s  ({r['ours_best_s'] * 1e3:.1f} ms: "
          f"prefill {r['ours_prefill_s'] * 1e3:.1f}, decode {r['ours_decode_s'] * 1e3:.1f})")  # fmt: skip
    print(f"speedup        : {r['speedup']:.2f}x")
    print(f"same outputs   : {r['outputs_equal']}   every row {args.new_tokens} tokens: {r['full_length']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
