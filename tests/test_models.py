import pickle

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from atesd.models import (
    TinyModelConfig,
    build_synthetic_tokenizer,
    build_tiny_qwen3,
    load_pretrained,
    num_parameters,
    save_pretrained,
)


def test_default_model_is_a_1m_parameter_qwen3(tokenizer):
    model = build_tiny_qwen3(tokenizer)
    assert isinstance(model, Qwen3ForCausalLM)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (
        4,
        128,
        4,
        2,
    )
    assert 0.9e6 < num_parameters(model) < 1.1e6


def test_same_init_seed_same_weights_and_global_rng_untouched(tokenizer):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_qwen3(
        tokenizer, TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1)
    )
    after = torch.rand(1)
    b = build_tiny_qwen3(
        tokenizer, TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1)
    )
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_tokenizer_and_model_round_trip_through_save_pretrained(tmp_path, tiny_model):
    tok = build_synthetic_tokenizer()
    save_pretrained(tiny_model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    model2, tok2 = load_pretrained(tmp_path)
    auto_tok = AutoTokenizer.from_pretrained(tmp_path)  # the plain HF path works too
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), Qwen3ForCausalLM)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Q1+2|3"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>Q1+2|3<|assistant|>"
    for t in (tok2, auto_tok):
        assert (
            t(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        )
        assert (
            t.apply_chat_template(
                [{"role": "user", "content": "Q1+2|3"}], tokenize=False, add_generation_prompt=True
            )
            == text
        )
    assert tok2.decode(tok("Q1+2=3;A3")["input_ids"]) == "Q1+2=3;A3"
    for (k, v), (k2, v2) in zip(tiny_model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_missing_model_path_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained("runs/typo/final_model")  # two slashes: a path, not a hub id


def test_a_run_directory_given_as_the_model_names_its_final_model(checkpoint, tmp_path):
    """`--model runs/<run>` (the run, not its final_model) read the run's config.json as a model's and
    failed on the tokenizer; it now says where the trained student is."""
    import json
    import shutil

    import pytest

    run_dir = tmp_path / "run"
    shutil.copytree(checkpoint, run_dir / "final_model")
    (run_dir / "config.json").write_text(json.dumps({"controller": "beta_reinforce", "env": "real"}))
    with pytest.raises(
        ValueError, match=f"is a training run's directory, not a model: .*{run_dir / 'final_model'}"
    ):
        load_pretrained(run_dir)
    assert load_pretrained(run_dir / "final_model")[1] is not None


def test_hub_ids_with_dots_go_to_the_hub_and_a_home_path_is_expanded(
    tiny_model, tokenizer, tmp_path, monkeypatch
):
    import pytest
    import transformers

    asked = []

    def offline(name, **kw):
        asked.append(name)
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    for hub_id in ("Qwen/Qwen3-1.7B", "meta-llama/Llama-3.2-1B", "gpt2"):
        with pytest.raises(OSError, match="offline"):  # reached the hub, not refused as a missing file
            load_pretrained(hub_id)
    assert asked == ["Qwen/Qwen3-1.7B", "meta-llama/Llama-3.2-1B", "gpt2"]
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path))
    save_pretrained(tiny_model, tokenizer, tmp_path / "ckpt")
    model, _ = load_pretrained("~/ckpt")
    assert model.config.num_hidden_layers == tiny_model.config.num_hidden_layers


def test_a_small_checkpoint_loads_and_saves_without_progress_bars(tmp_path, tiny_model, capfd):
    """transformers drew "Loading weights" and "Writing model shards" bars (carriage returns and all)
    into every run's output for the embedded model's 46 tensors; a large checkpoint or a hub download
    (size unknown) keeps them, and the setting is restored either way."""
    from transformers.utils import logging as hf_logging

    from atesd.models import QUIET_BELOW_BYTES, quiet_if_small

    was = hf_logging.is_progress_bar_enabled()  # another test may have turned them off
    hf_logging.enable_progress_bar()
    try:
        save_pretrained(tiny_model, build_synthetic_tokenizer(), tmp_path)
        load_pretrained(tmp_path)
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "Writing model shards" not in err
        for size, shown in ((1, False), (QUIET_BELOW_BYTES, True), (None, True)):
            with quiet_if_small(size):
                assert hf_logging.is_progress_bar_enabled() == shown
            assert hf_logging.is_progress_bar_enabled()
    finally:
        if not was:
            hf_logging.disable_progress_bar()


def test_meta_skeleton_is_the_loaded_model_without_its_weights(tmp_path, tiny_model, tokenizer, small_task):
    """What FSDP's ranks other than rank 0 build instead of reading the checkpoint: the same tensors
    by name, shape and dtype (one kept in another dtype, as checkpoints keep some modules in float32),
    the same generation config (its EOS ids end the rollouts), ties kept, nothing allocated."""
    import pytest

    from atesd.distributed import _place, on_meta
    from atesd.engine import DistillEngine
    from atesd.models import load_tokenizer, meta_skeleton, model_spec

    save_pretrained(tiny_model, tokenizer, tmp_path / "m")
    model, _ = load_pretrained(tmp_path / "m", dtype="bfloat16")
    model.model.norm.weight.data = model.model.norm.weight.data.float()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 3]
    skeleton = meta_skeleton(model_spec(model))
    assert on_meta(skeleton) and not on_meta(model)
    tensors = {n: (t.shape, t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    assert {
        n: (t.shape, t.dtype) for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()]
    } == tensors
    assert (
        skeleton.model.norm.weight.dtype == torch.float32 and skeleton.lm_head.weight.dtype == torch.bfloat16
    )
    assert skeleton.generation_config.eos_token_id == [tokenizer.eos_token_id, 3]
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight
    assert load_tokenizer(tmp_path / "m").padding_side == "left"
    # without FSDP nothing would fill it: refused, not trained from uninitialised memory
    with pytest.raises(ValueError, match="skeleton on the meta device"):
        DistillEngine(skeleton, tokenizer, small_task)
    _place(skeleton, torch.device("cpu"))  # storage, uninitialised; the tie made again
    assert not on_meta(skeleton) and skeleton.lm_head.weight is skeleton.model.embed_tokens.weight
    spec = model_spec(model)
    spec["tensors"]["model.extra"] = ((1,), torch.float32)
    with pytest.raises(ValueError, match="first differing tensor: model.extra"):
        meta_skeleton(spec)


class _TwoRanks:
    """One rank of two, its collectives answered by what the other rank would send (`theirs`)."""

    def __init__(self, rank: int, theirs=None) -> None:
        from atesd.distributed import Dist

        self.dist = Dist(rank=rank, world_size=2)
        self.theirs, self.sent = theirs, []
        self.dist.broadcast_object = self.broadcast_object
        self.dist.gather_objects = self.gather_objects

    def broadcast_object(self, obj, src=0):
        self.sent.append(obj)
        return obj if self.dist.rank == 0 else self.theirs

    def gather_objects(self, obj):
        self.sent.append(obj)
        return [obj, self.theirs] if self.dist.rank == 0 else [None, obj]


def test_fsdp_loading_on_rank_0_fails_every_rank_alike(tmp_path, tiny_model, tokenizer, monkeypatch):
    """`load_on_rank0` under FSDP: a load that failed on rank 0, or a skeleton that failed on another
    rank, left the others waiting for it in their next collective; each now fails on every rank, the
    error naming the rank's own (one line: a ValueError, as run.py prints user errors)."""
    import pytest

    import atesd.models as models
    from atesd.builder import RealConfig, load_on_rank0
    from atesd.distributed import on_meta
    from atesd.models import HFModelConfig, LoraSettings

    save_pretrained(tiny_model, tokenizer, tmp_path / "m")

    def cfg(path):
        hf = HFModelConfig(name_or_path=str(path), dtype="float32")
        return RealConfig(hf=hf, lora=LoraSettings(rank=0))

    # every rank built: rank 0 the model, rank 1 its skeleton from what rank 0 sent
    zero = _TwoRanks(0)
    model, _ = load_on_rank0(cfg(tmp_path / "m"), zero.dist)
    spec = zero.sent[0]
    one = _TwoRanks(1, theirs=spec)
    skeleton, tok = load_on_rank0(cfg(tmp_path / "m"), one.dist)
    assert not on_meta(model) and on_meta(skeleton) and tok.padding_side == "left"
    # rank 0 cannot load: it raises its own error, having told the others, which raise it by name
    zero = _TwoRanks(0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_on_rank0(cfg(tmp_path / "missing"), zero.dist)
    (said,) = zero.sent
    with pytest.raises(ValueError, match=r"rank 0 could not load .*missing: FileNotFoundError: model path"):
        load_on_rank0(cfg(tmp_path / "missing"), _TwoRanks(1, theirs=said).dist)
    # rank 1's skeleton fails: it raises its own error after telling rank 0, which raises it by name

    def broken(spec, trust_remote_code=False):
        raise ValueError("no skeleton here")

    monkeypatch.setattr(models, "meta_skeleton", broken)
    one = _TwoRanks(1, theirs=spec)
    with pytest.raises(ValueError, match="no skeleton here"):
        load_on_rank0(cfg(tmp_path / "m"), one.dist)
    why = one.sent[-1]
    assert why == "ValueError: no skeleton here"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="rank 1 could not build the model of .*: ValueError: no skeleton"):
        load_on_rank0(cfg(tmp_path / "m"), _TwoRanks(0, theirs=why).dist)
    # rank 0's spec cannot be read on rank 1 (a config class of remote code it cannot import): the same
    one = _TwoRanks(1, theirs=b"\x80\x04not a pickle")
    with pytest.raises(pickle.UnpicklingError):
        load_on_rank0(cfg(tmp_path / "m"), one.dist)
    assert one.sent[-1].startswith("UnpicklingError")


def test_a_checkpoint_without_its_tokenizer_or_any_eos_is_one_line(checkpoint, tmp_path):
    """A folder without tokenizer files loaded an empty tokenizer (one token, every text encoded to
    nothing) and failed later on the chat template or on empty prompts; a tokenizer without an EOS
    token, where the generation config names none either, never ended a completion (eval) or failed
    with a TypeError (training). Both are one line now; an EOS the generation config names is taken."""
    import json
    import shutil

    import pytest

    from atesd.models import load_tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    with pytest.raises(ValueError, match=r"holds no tokenizer .*copy the checkpoint's tokenizer files"):
        load_pretrained(bare)

    no_eos = tmp_path / "no_eos"
    shutil.copytree(checkpoint, no_eos)
    config = json.loads((no_eos / "tokenizer_config.json").read_text())
    (no_eos / "tokenizer_config.json").write_text(json.dumps(config | {"eos_token": None, "pad_token": None}))
    generation = json.loads((no_eos / "generation_config.json").read_text())
    want = generation["eos_token_id"]
    want = want[0] if isinstance(want, list) else want
    assert load_tokenizer(no_eos).eos_token_id == want  # the generation config's
    (no_eos / "generation_config.json").write_text(json.dumps(generation | {"eos_token_id": None}))
    with pytest.raises(ValueError, match="its tokenizer has no EOS token .*names no eos_token_id"):
        load_tokenizer(no_eos)


def test_a_head_size_rotary_embeddings_cannot_take_is_refused_by_name():
    """hidden_size 12 over 4 heads (head size 3) built, then failed at the first warm-start step inside
    the rotary embedding (a traceback, a run directory left behind)."""
    import pytest

    with pytest.raises(ValueError, match=r"hidden_size / num_heads \(12 / 4 = 3\) must be even"):
        TinyModelConfig(hidden_size=12, num_heads=4, num_kv_heads=2)


def test_negative_seeds_of_the_task_and_the_warm_start_are_refused_by_name():
    """numpy said "expected non-negative integer", naming no setting."""
    import pytest

    from atesd.sft import WarmStartConfig
    from atesd.tasks.synthetic import ChainBagConfig

    with pytest.raises(ValueError, match="eval_seed must be >= 0, got -1"):
        ChainBagConfig(eval_seed=-1)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        WarmStartConfig(seed=-1)
