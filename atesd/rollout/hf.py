"""Our batched KV-cache sampler for any Hugging Face causal LM (`HFSampler`).

Owns left padding, position ids, the KV cache, the decode attention mask, the sampling filters
(temperature, top-k, top-p, in HF's order), stopping at EOS and dropping finished rows from the batch.
Knows nothing of tokenizers, tasks or losses: token ids in, token ids out. It talks to the model only
through its HF forward (`input_ids`, `attention_mask`, `position_ids`, the cache, `logits_to_keep`).
"""

from __future__ import annotations

import inspect
import time

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from atesd.models import base_model
from atesd.rollout.base import RolloutBatch, SamplingParams
from atesd.rollout.lean import LeanDecoder, lean_unsupported

# Attention implementations whose forward takes a ready 4D mask: sdpa wants a boolean one (True = attend),
# eager an additive one. Both are what `transformers.masking_utils` would build itself.
_MASK_4D_KINDS = ("sdpa", "eager")


def left_pad(
    prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pads prompts into one batch.

    Args:
        prompts: token ids per prompt, each non-empty.
        pad_token_id: id written into the padding.
        device: where the tensors go.

    Returns:
        input_ids (B, T) and attention_mask (B, T), bool, True on real tokens.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)  # (B, T)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = True
    return input_ids.to(device), mask.to(device)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Applies temperature, then top-k, then top-p, with HF's semantics (`TopPLogitsWarper` & co).

    Args:
        logits: (B, V) next-token logits.
        params: a non-greedy `SamplingParams`.

    Returns:
        (B, V) float32 logits with filtered tokens at -inf; the top token always survives.
    """
    scores = logits.float() / params.temperature  # (B, V)
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)  # (B, V) ascending
        cum_probs = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum_probs <= (1 - params.top_p)  # mass strictly below the nucleus
        remove_sorted[..., -1:] = False  # always keep the top token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Picks one token per row: argmax when greedy, else a draw from the filtered softmax.

    Args:
        logits: (B, V) next-token logits.
        params: how to sample.
        generator: the only source of randomness; required unless greedy.

    Returns:
        (B,) long token ids.
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    if generator is None:
        raise ValueError("sampling with temperature > 0 needs an explicit torch.Generator")
    probs = filter_logits(logits, params).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def mask_kind(model: PreTrainedModel) -> str | None:
    """The attention kind a hand-built 4D mask is handed to (sdpa or eager), or None for the model's
    own 2D mask: also where a layer's cache is not plain full attention (a sliding-window layer crops
    its cache and masks by the window) or where ALiBi is built from the mask's shape (Bloom, Falcon
    with alibi: a 4D mask crashed every padded batch)."""
    cfg = model.config.get_text_config(decoder=True)
    attn = cfg._attn_implementation
    if attn not in _MASK_4D_KINDS or cfg.model_type == "bloom" or getattr(cfg, "alibi", False):
        return None
    key = (id(model.config), cfg.model_type, cfg.num_hidden_layers, repr(getattr(cfg, "layer_types", None)),
           getattr(cfg, "sliding_window", None), getattr(cfg, "use_sliding_window", None))  # fmt: skip
    if key not in _FULL_ATTENTION:  # asked every forward (batching): build a cache once per model
        layers = DynamicCache(config=model.config).layers
        _FULL_ATTENTION[key] = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
    return attn if _FULL_ATTENTION[key] else None


_FULL_ATTENTION: dict[tuple, bool] = {}  # whether a config's cache layers are all full attention


def free_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can take on `device` now: on CUDA the driver's free memory plus what
    torch's allocator holds unused; None elsewhere (not checked). A CPU allocation takes pages only
    as they are written, so a buffer larger than the memory available may still run (a batch whose
    rows end long before the limit, and never drop a row): comparing would refuse it."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


class KVCacheTooLarge(ValueError):
    """The preallocated KV cache of a rollout batch cannot fit the device's free memory."""


def check_kv_cache(per_row: int, rows: int, capacity: int, layers: int, device: torch.device) -> None:
    """KVCacheTooLarge (one line, with the rows that fit) where `rows` rows of `per_row` bytes exceed
    the free memory of `device`: the allocation would fail anyway, as a CUDA OOM traceback (eval.py's
    paper defaults, 64 rows x 38,912 new tokens, ask about 266 GiB of Qwen3-1.7B in bfloat16)."""
    free = free_memory(device)
    if free is None or per_row * rows <= free:
        return
    fits = free // per_row

    def size(n: int) -> str:
        return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

    raise KVCacheTooLarge(
        f"the sampler's KV cache for {rows} rows x {capacity:,} positions ({layers} layers) needs "
        f"{size(per_row * rows)}, {size(free)} free on {device}: at most {fits} rows fit "
        "at once (eval.py: sampling.batch_size; training: real.engine.batch_size, and for the in-training "
        "evaluation, which samples its whole band at once, real.data.eval_size), or ask fewer new "
        "tokens (max_new_tokens), or sample with vLLM (sampling.backend=vllm), whose cache is paged"
    )


class _PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in one buffer sized for the whole rollout.

    `update` writes the new states in place and returns views, so no step pays a `torch.cat` of the
    whole cache; dropping finished rows is one row gather of the buffer. The first layer (`layers`
    given: the cache's layer count) checks that the whole cache fits before any buffer is made.
    """

    def __init__(self, capacity: int, layers: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.layers = layers

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.layers:
            per_row = (
                self.layers * h * self.capacity * (d + value_states.shape[-1]) * key_states.element_size()
            )
            check_kv_cache(per_row, b, self.capacity, self.layers, key_states.device)
        self._key_buf = key_states.new_empty(b, h, self.capacity, d)  # (B, H_kv, C, D)
        self._value_buf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self._key_buf[:, :, self.length : end] = key_states
        self._value_buf[:, :, self.length : end] = value_states
        first_write, self.length = self.length == 0, end
        self.keys, self.values = self._key_buf[:, :, :end], self._value_buf[:, :, :end]
        if first_write:  # the prefill gets its own contiguous states, as from `DynamicLayer`
            return key_states, value_states
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            # index_select: the same row copies as advanced indexing, without its general machinery
            self._key_buf = self._key_buf.index_select(0, indices)
            self._value_buf = self._value_buf.index_select(0, indices)
            self.keys = self._key_buf[:, :, : self.length]
            self.values = self._value_buf[:, :, : self.length]


class HFSampler:
    """Batched KV-cache sampling from any HF causal LM, through its forward API only.

    Plain decoders (every cache layer a full-attention `DynamicLayer`, sdpa or eager attention) get a
    preallocated cache and a precomputed 4D decode mask, so the model neither concatenates its cache nor
    builds a mask each step; anything else (sliding windows, flash attention, ...) gets a `DynamicCache`
    and a 2D mask, exactly as `model.generate` would. Rows that hit EOS are dropped from the batch (the
    cache rows are gathered), so finished rows stop costing compute; a smaller batch can change a BLAS
    kernel's last bits for the remaining rows, which never flipped a greedy token in our CPU checks.

    Args:
        model: a `transformers` causal LM.
        eos_token_ids: a row stops after sampling any of these (the EOS is kept in its completion).
        pad_token_id: id used for left padding.
        compact_fraction: drop finished rows once they are at least this fraction of the live batch
            (0 drops them at once; 1 never: they run on until every row is done, like `generate`).
        compile: torch.compile the HF forward (opt-in; see `SamplingConfig.compile`).
        lean: decode steps of a plain Llama-family model (Qwen3, Qwen2, Llama; sdpa) run as the HF
            forward's own ops without its modules (`atesd.rollout.lean`; bitwise the same logits; the
            embedded model's rollout about 1.3x faster on CPU); other models, and `compile`, keep the HF
            forward. `lean_reason` says why a model did not qualify.
    """

    owns_weights = False  # samples from the student module itself

    def sync_weights(self) -> None:
        """Nothing to do: the sampler reads the student's own parameters."""

    def __init__(
        self,
        model: PreTrainedModel,
        eos_token_ids: list[int],
        pad_token_id: int,
        compact_fraction: float = 0.0,
        compile: bool = False,
        lean: bool = True,
    ) -> None:
        if not 0.0 <= compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in [0, 1], got {compact_fraction}")
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.compact_fraction = compact_fraction
        # torch.compile of the forward (opt-in): the weights are read at call time, so optimiser
        # updates need no recompile; greedy output matched eager in our checks, but compiled kernels
        # are not guaranteed bit-identical to eager ones.
        self._call = torch.compile(model.forward, dynamic=True) if compile else model
        # a peft wrapper's forward takes **kwargs: read the wrapped model's signature
        base = base_model(model)
        forward_args = inspect.signature(base.forward).parameters
        # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name warns on every call).
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"
        self._extra_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in forward_args else {}
        self._num_layers = len(DynamicCache(config=model.config).layers)
        self.mask_kind = mask_kind(model)
        self.lean: LeanDecoder | None = None
        if not lean:
            self.lean_reason: str | None = "turned off (lean=False)"
        elif compile:
            self.lean_reason = "compile=True compiles the HF forward instead"
        elif self.mask_kind != "sdpa":
            attn = model.config.get_text_config(decoder=True)._attn_implementation
            self.lean_reason = f"no preallocated sdpa cache with a 4D mask (attention {attn!r})"
        else:
            self.lean_reason = lean_unsupported(model)
            self.lean = LeanDecoder(model) if self.lean_reason is None else None

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        """Samples one completion per prompt.

        Args:
            prompts: token ids per prompt; lengths may differ.
            params: temperature (0 = greedy), top-k, top-p, max_new_tokens.
            generator: the only randomness source, on the model's device; may be None when greedy.

        Returns:
            A `RolloutBatch` in prompt order; timings `prefill_s`, `decode_s`, `total_s`, `tokens_per_s`.
        """
        modes = [m.training for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                return self._generate(prompts, params, generator)
        finally:
            for module, mode in zip(self.model.modules(), modes, strict=True):
                module.training = mode

    def _generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None
    ) -> RolloutBatch:
        t0 = time.perf_counter()
        device = self.model.device
        input_ids, mask = left_pad(prompts, self.pad_token_id, device)  # (B, T), (B, T)
        padded = not bool(mask.all())
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T); pads get 0 like HF
        capacity = input_ids.shape[1] + params.max_new_tokens
        cache = self._new_cache(capacity)
        if self.lean is not None:
            self.lean.rotary_table(capacity, self.model.dtype, device)
        logits = self._forward(input_ids, mask if padded else None, positions, cache)  # (B, V)
        first = sample_next(logits, params, generator)  # (B,)
        t1 = time.perf_counter()
        decode_mask = self._decode_mask(mask, params.max_new_tokens) if padded else None
        tokens, lengths = self._decode(
            first, positions[:, -1], input_ids.shape[1], decode_mask, cache, params, generator
        )
        t2 = time.perf_counter()
        eos = set(self.eos_token_ids)
        completions = [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]
        finished = [len(c) > 0 and c[-1] in eos for c in completions]
        batch = RolloutBatch([list(p) for p in prompts], completions, finished)
        total_s = time.perf_counter() - t0
        batch.timings = {
            "prefill_s": t1 - t0,
            "decode_s": t2 - t1,
            "total_s": total_s,
            "tokens_per_s": batch.num_tokens / max(total_s, 1e-9),
        }
        return batch

    def _new_cache(self, capacity: int) -> Cache:
        if self.mask_kind is None:
            return DynamicCache(config=self.model.config)
        n = self._num_layers
        return Cache(layers=[_PreallocatedLayer(capacity, layers=n if i == 0 else 0) for i in range(n)])

    def _decode_mask(self, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The padding mask of every decode step at once, sliced per step: (B, T + N) or (B, 1, 1, T + N)."""
        full = torch.cat([mask, mask.new_ones(mask.shape[0], max_new_tokens)], dim=1)  # (B, T + N)
        if self.mask_kind is None:
            return full
        if self.mask_kind == "sdpa":
            return full[:, None, None, :]
        dtype = self.model.dtype
        additive = torch.zeros(full.shape, dtype=dtype, device=full.device)
        return additive.masked_fill(~full, torch.finfo(dtype).min)[:, None, None, :]

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        """One model call; returns (B, V) logits of the last position."""
        out = self._call(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kwarg: cache},
            **self._extra_kwargs,
        )
        return out.logits[:, -1]

    def _decode(
        self,
        first: torch.Tensor,
        last_pos: torch.Tensor,
        prompt_len: int,
        mask: torch.Tensor | None,
        cache: Cache,
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feeds tokens back until every row has hit EOS or max_new_tokens.

        Args:
            first: (B,) tokens sampled from the prefill.
            last_pos: (B,) position of each prompt's last token.
            prompt_len: T, the padded prompt width (positions already in the cache).
            mask: decode mask over all positions (see `_decode_mask`), None without padding.
            cache: the cache filled by the prefill.
            params: sampling parameters.
            generator: randomness source.

        Returns:
            tokens (B, N) and lengths (B,): row i's completion is tokens[i, :lengths[i]].
        """
        b, n_new = first.shape[0], params.max_new_tokens
        device = first.device
        tokens = torch.full((b, n_new), self.pad_token_id, dtype=torch.long, device=device)  # (B, N)
        lengths = torch.full((b,), n_new, dtype=torch.long, device=device)  # (B,)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
        rows = torch.arange(b, device=device)  # (b,) original index of each live row
        done = torch.zeros(b, dtype=torch.bool, device=device)  # (b,) live rows that already hit EOS
        nxt, pos = first, last_pos
        kv_len = prompt_len
        for step in range(n_new):
            tokens[rows, step] = nxt
            hit = torch.isin(nxt, eos) & ~done  # (b,)
            if bool(hit.any()):
                lengths[rows[hit]] = step + 1
                done = done | hit
                if bool(done.all()):
                    break
                if step < n_new - 1 and int(done.sum()) >= max(1.0, self.compact_fraction * len(rows)):
                    keep = (~done).nonzero().squeeze(-1)  # (b',) rows still running
                    rows, nxt, pos, done = rows[keep], nxt[keep], pos[keep], done[keep]
                    mask = None if mask is None else mask[keep]
                    cache.batch_select_indices(keep)
            if step == n_new - 1:
                break
            pos = pos + 1
            kv_len += 1
            step_mask = mask[..., :kv_len] if mask is not None else None
            if self.lean is not None:
                logits = self.lean.step(nxt[:, None], pos[:, None], step_mask, cache.layers)  # (b, V)
            else:
                logits = self._forward(nxt[:, None], step_mask, pos[:, None], cache)  # (b, V)
            nxt = sample_next(logits, params, generator)
        return tokens, lengths
