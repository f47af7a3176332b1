"""torchrun with the gloo backend on CPU: under FSDP only rank 0 reads the checkpoint, and the other
ranks' skeletons on the meta device get its weights as the engine shards them (a file of its own, so
that pytest's workers can run it beside tests/test_distributed.py)."""

import json
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, torchrun
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test launches torchrun subprocesses


def _rank0_checkpoint(path: Path, remote: bool = False) -> Path:
    """A tiny tied Qwen3 whose generation config ends at a second EOS id (rank 0's config must reach the
    other ranks' skeletons, or their rollouts would end elsewhere). `remote`: its config and model
    classes are the checkpoint's own code (Qwen3's subclassed), loaded with `trust_remote_code`."""
    from atesd.models import TinyModelConfig, build_synthetic_tokenizer, build_tiny_qwen3, save_pretrained

    tokenizer = build_synthetic_tokenizer()
    shape = TinyModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    model = build_tiny_qwen3(tokenizer, shape)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 3]
    save_pretrained(model, tokenizer, path)
    if remote:
        (path / "configuration_tiny.py").write_text(
            "from transformers import Qwen3Config\n\n\nclass TinyConfig(Qwen3Config):\n"
            "    model_type = 'tiny_remote'\n"
        )
        (path / "modeling_tiny.py").write_text(
            "from transformers import Qwen3ForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
            "class TinyForCausalLM(Qwen3ForCausalLM):\n    config_class = TinyConfig\n"
        )
        config = json.loads((path / "config.json").read_text())
        config |= {
            "model_type": "tiny_remote",
            "architectures": ["TinyForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_tiny.TinyConfig",
                "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM",
            },
        }
        (path / "config.json").write_text(json.dumps(config))
    return path


def test_fsdp_reads_the_checkpoint_on_rank_0_only(tmp_path):
    """Every rank read the whole checkpoint into host memory (8 ranks of an 8B model in float32: about 260 GB
    at once). Now rank 0 loads it, the others build the model on the meta device, and the engine
    broadcasts rank 0's weights into every rank's shards: the same start, teacher and training as
    every rank loading it itself. The checkpoint brings its own model code (`trust_remote_code`), whose
    config class the other ranks could not read before loading that code: such models were loaded on
    every rank; the vLLM test below covers a plain checkpoint."""
    checkpoint = _rank0_checkpoint(tmp_path / "ckpt", remote=True)
    args = [str(ROOT / "tests/_dist_rank0_load.py"), str(tmp_path), str(checkpoint), "float32", "ema,remote"]
    # an EMA teacher (a copy made and filled as the frozen one's is), with gradient checkpointing set on
    # the skeleton too; the checkpoint's code copied into a modules cache of the test's own
    out = torchrun(args, tmp_path, HF_MODULES_CACHE=str(tmp_path / "modules"))
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skeleton"] for r in ranks] == [False, True] and not any(r["after"] for r in ranks)
    assert [r["class"] for r in ranks] == ["TinyForCausalLM"] * 2  # the checkpoint's own class on both
    assert [r["eos"] for r in ranks] == [[1, 3], [1, 3]] and [r["dtypes"] for r in ranks] == [
        ["torch.float32"]
    ] * 2
    assert all(r["tied"] and r["teacher_tied"] for r in ranks)
    assert (
        ranks[0]["buffers"]
        == ranks[1]["buffers"]
        == ranks[0]["teacher_buffers"]
        == ranks[1]["teacher_buffers"]
    )
    assert ranks[0]["buffers"]  # the rotary tables, in no state dict: broadcast from rank 0
    saved = load_file(str(checkpoint / "model.safetensors"))
    start, teacher = (
        load_file(str(tmp_path / "start.safetensors")),
        load_file(str(tmp_path / "teacher.safetensors")),
    )
    assert set(saved) <= set(start) and all(torch.equal(saved[k], start[k]) for k in saved)
    assert start.keys() == teacher.keys() and all(torch.equal(start[k], teacher[k]) for k in start)
    trained, other = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("trained", "trained_other"))
    assert trained.keys() == other.keys() and all(torch.equal(trained[k], other[k]) for k in trained)
    assert not all(torch.equal(trained[k], start[k]) for k in start)  # the two updates moved the weights
    # a state loaded (weights, teacher, AdamW moments: whole on rank 0) is left as it was, through the
    # training after it too (its containers are copied for the loaders, no longer its tensors)
    assert all(r["reloaded"] and r["state_kept"] for r in ranks) and ranks[0]["state_tensors"] > 50


def test_fsdp_over_vllm_pushes_rank_0s_weights_once_filled(tmp_path):
    """vLLM's sampler pushed the student's weights as it was built, from a skeleton with no data on the
    ranks other than 0; it now waits for the engine, which pushes once the shards are filled."""
    checkpoint = _rank0_checkpoint(tmp_path / "ckpt")
    args = [str(ROOT / "tests/_dist_rank0_load.py"), str(tmp_path), str(checkpoint), "float32", "vllm"]
    out = torchrun(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["pushes_before"] for r in ranks] == [1, 0] and [r["pushes"] for r in ranks] == [2, 1]
    assert ranks[0]["pushed_start"] and ranks[0]["held_sum"] == ranks[1]["held_sum"] != 0
    assert ranks[0]["pushed"] == ranks[1]["pushed"] and len(ranks[0]["pushed"]) > 10
