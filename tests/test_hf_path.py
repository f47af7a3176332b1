"""The real-model path on a tiny checkpoint saved to disk: a Qwen3-style tokenizer whose chat template
honours enable_thinking, LoRA through peft with the base teacher = adapters off, and the HF options."""

import math
import warnings

import pytest
import torch

from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.models import (
    HFModelConfig,
    LoraSettings,
    load_hf_model,
)

peft = pytest.importorskip("peft", reason="LoRA needs the optional extra [lora] (peft)")


def test_student_prompt_is_non_thinking_and_teacher_prompt_thinking(checkpoint, small_task):
    model, tokenizer = load_hf_model(HFModelConfig(name_or_path=str(checkpoint), dtype="float32"))
    engine = DistillEngine(model, tokenizer, small_task, EngineConfig(batch_size=2))
    problem = small_task.eval_sets()["C3"][0]
    student = engine.builder.student_prompt(problem)
    teacher = engine.builder.teacher_prompt(problem, 0.5)
    assert student.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking=False
    assert teacher.endswith("<|im_start|>assistant\n") and "<think>" not in teacher  # thinking on
    assert teacher.startswith("<|im_start|>user\n" + problem.question)


def test_a_lora_window_from_the_saved_path_trains_only_adapters_then_evaluates(checkpoint, small_task):
    cfg = HFModelConfig(name_or_path=str(checkpoint), dtype="float32", gradient_checkpointing=True)
    model, tokenizer = load_hf_model(cfg, LoraSettings(rank=4, alpha=8.0))
    assert isinstance(model, peft.PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    engine = DistillEngine(
        model, tokenizer, small_task,
        EngineConfig(batch_size=4, lr=1e-2, sampling=SamplingConfig(max_new_tokens=12)),
    )  # fmt: skip
    assert engine.teacher.uses_adapters and engine.teacher.copy is None  # base teacher = adapters off
    window = engine.run_window(0.5, 2)
    assert len(window.losses) == 3 and all(torch.isfinite(torch.tensor(window.losses)))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in base_before.items())  # the base never moves
    assert any(not torch.equal(params[n], p) for n, p in lora_before.items())  # the adapters do
    result = engine.evaluate()
    assert set(result) == {f"accuracy/{b}" for b in small_task.eval_sets()}
    # a snapshot holds the adapters, not the frozen base (a checkpoint need not rewrite it), and
    # loading it restores the adapters and what the window then computes
    state = engine.state_dict()
    assert set(state["student"]) == trainable
    again = engine.run_window(0.5, 1)
    engine.load_state_dict(state)
    assert engine.run_window(0.5, 1).losses == again.losses


def test_a_16_bit_full_fine_tune_is_warned_about():
    import warnings

    from atesd.builder import RealConfig, check_precision
    from atesd.models import HFModelConfig, LoraSettings

    with pytest.warns(UserWarning, match="keeps no float32 master weights"):
        check_precision(
            RealConfig(hf=HFModelConfig(name_or_path="m", dtype="bfloat16"), lora=LoraSettings(rank=0))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_precision(
            RealConfig(hf=HFModelConfig(name_or_path="m", dtype="bfloat16"), lora=LoraSettings(rank=8))
        )
        check_precision(
            RealConfig(hf=HFModelConfig(name_or_path="m", dtype="float32"), lora=LoraSettings(rank=0))
        )
    # real.hf.dtype=auto: the checkpoint's dtype, known once loaded (hub Qwen3 checkpoints are bf16)
    auto = RealConfig(hf=HFModelConfig(name_or_path="m", dtype="auto"), lora=LoraSettings(rank=0))
    model = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_precision(auto)
        check_precision(auto, model)
    with pytest.warns(UserWarning, match=r"in bfloat16 \(the checkpoint's own dtype"):
        check_precision(auto, model.to(torch.bfloat16))


def test_hf_options_are_checked():
    with pytest.raises(ValueError, match="name_or_path is empty"):
        load_hf_model(HFModelConfig())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_model(HFModelConfig(name_or_path="./no/such/checkpoint"))
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=-1)


def test_run_py_distils_a_saved_checkpoint_on_math_data_with_lora(checkpoint, tmp_path):
    """The real-model recipe path end to end on CPU: an HF checkpoint by path, LoRA, OPSD-format math
    data from a JSONL file, two windows, an evaluation, the run directory."""
    import json

    import recipes.run as run

    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 5), (6, 1), (9, 3)]
    solution = "We add {a} and {b}.\n\nThe sum is $\\boxed{{{s}}}$."
    rows = [
        {"problem": f"What is {a} + {b}?", "solution": solution.format(a=a, b=b, s=a + b)} for a, b in pairs
    ]
    data = tmp_path / "opsd.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    overrides = f"""
        threads=1 plots=false out_dir={tmp_path / "runs"}
        real.hf.name_or_path={checkpoint} real.hf.dtype=float32 real.lora.rank=4 real.lora.alpha=8
        real.task_kind=math real.data.source={data} real.data.eval_size=2 real.data.probe_size=2
        real.engine.batch_size=2 real.engine.sampling.max_new_tokens=8 real.engine.loss.kind=forward_kl
        real.engine.loss.clip_tau=0.05 real.env.hold_steps=2 real.env.total_steps=4 real.env.eval_every=1
    """.split()
    run_dir = run.main(["--controller", "beta_reinforce", *overrides])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["windows"] == 2 and summary["updates"] == 4
    assert list(summary["final_eval"]) == ["accuracy/opsd"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["real"]["lora"]["rank"] == 4 and config["real"]["hf"]["name_or_path"] == str(checkpoint)
    # a LoRA run's final_model (the adapter over its base) evaluates with eval.py
    from recipes.eval import main as evaluate

    argv = ["--model", str(run_dir / "final_model"), "--task", str(data), "max_problems=2",
            "sampling.samples=2", "sampling.max_new_tokens=8", f"out_dir={tmp_path / 'eval'}",
            "real.device=cpu"]  # fmt: skip
    eval_dir = evaluate(argv)
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["completions"] == 4 and sum(summary["graded_by"].values()) == 4


def test_a_pickle_only_checkpoint_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    """Only safetensors is loaded: a directory with just pytorch_model.bin is named, not unpickled."""
    import shutil

    import recipes.run as run

    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.rename(pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds only pickle weights"):
        load_hf_model(HFModelConfig(name_or_path=str(pickled), dtype="float32"))
    with pytest.raises(SystemExit) as exc:
        run.main(["--controller", "fixed", f"real.hf.name_or_path={pickled}", f"out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "loads safetensors only" in err and "\n" not in err, err
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, pickled / "adapter_model.safetensors")  # a stray safetensors file
    with pytest.raises(OSError, match="no file named model.safetensors"):  # the pickle is never loaded
        load_hf_model(HFModelConfig(name_or_path=str(pickled), dtype="float32"))


def test_a_lora_state_of_another_student_is_refused_by_name(checkpoint, small_task):
    cfg = HFModelConfig(name_or_path=str(checkpoint), dtype="float32")
    model, tokenizer = load_hf_model(cfg, LoraSettings(rank=4))
    engine = DistillEngine(model, tokenizer, small_task, EngineConfig(batch_size=2))
    state = engine.state_dict()
    extra = {**state["student"], "nope.weight": torch.zeros(1)}
    fewer = dict(list(state["student"].items())[1:])
    for student, message in ((extra, r"has not: \['nope.weight'\]"), (fewer, "lacks adapter weights")):
        with pytest.raises(ValueError, match=message):
            engine.load_state_dict({**state, "student": student})


def test_lora_is_seeded_by_the_runs_seed(monkeypatch):
    """build_engine seeds the engine with the run's seed; LoRA's init read the config's unused
    engine.seed (0 whatever the run's seed), so every seed of a bench started from the same adapters."""
    import atesd.builder as builder

    class Stop(Exception):
        pass

    seen = []

    def student(cfg, *args, **kwargs):
        seen.append(cfg.engine.seed)
        raise Stop

    monkeypatch.setattr(builder, "build_student", student)
    for seed in (0, 7):
        with pytest.raises(Stop):
            builder.build_engine(builder.RealConfig(), seed)
    assert seen == [0, 7]


def test_a_student_to_be_sharded_loads_on_the_cpu(monkeypatch):
    """Under FSDP the builder leaves the checkpoint on the CPU (the engine moves it to the device a
    layer at a time as it shards it), read by rank 0 alone (tests/test_distributed_load.py runs it);
    otherwise it loads on the run's device."""
    import dataclasses

    import atesd.builder as builder
    import atesd.models as models
    from atesd.distributed import Dist
    from atesd.models import HFModelConfig

    seen = []
    monkeypatch.setattr(models, "load_hf_model", lambda hf, lora, device, seed: (seen.append(device), None))
    monkeypatch.setattr(builder, "load_on_rank0", lambda cfg, dist: (seen.append("rank 0's"), None))
    monkeypatch.setattr(builder, "resolve_device", lambda device, dist=None: "cuda:1")  # as under torchrun
    cfg = builder.RealConfig(hf=HFModelConfig(name_or_path="Qwen/Qwen3-0.6B"), device="cuda")
    ranks = Dist(rank=1, world_size=2)
    for fsdp in (True, False):
        real = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, fsdp=fsdp))
        builder.build_student(real, None, dist=ranks)
    # remote code is read by rank 0 alone too (the others load its classes first); LoRA (refused under
    # FSDP by the engine, with its own message) loads on every rank, onto the CPU
    for change in (
        {"hf": dataclasses.replace(cfg.hf, trust_remote_code=True)},
        {"lora": LoraSettings(rank=4)},
    ):
        real = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, fsdp=True), **change)
        builder.build_student(real, None, dist=ranks)
    builder.build_student(cfg, None, dist=Dist.single())  # fsdp ignored in one process
    assert seen == ["rank 0's", "cuda:1", "rank 0's", "cpu", "cuda:1"]


def test_a_large_model_that_auto_puts_on_the_cpu_is_warned_of(checkpoint, monkeypatch):
    """real.device=auto without a GPU (a CPU build of torch on a GPU machine, as the README's set-up
    installs) falls back to the CPU: said for a model large enough to take minutes per update."""
    import dataclasses
    import warnings

    import atesd.builder as builder
    from atesd.models import HFModelConfig, num_parameters

    monkeypatch.setattr(builder.torch.cuda, "is_available", lambda: False)
    cfg = builder.RealConfig(hf=HFModelConfig(name_or_path=str(checkpoint)), device="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiny checkpoint is far below the size: no warning
        model, _ = builder.build_student(cfg, None)
    size = num_parameters(model)
    monkeypatch.setattr(builder, "CPU_WARN_PARAMETERS", size)  # as if it were a large model
    with pytest.warns(UserWarning, match=r"real\.device=auto found no CUDA device .*CUDA build .*on the CPU"):
        builder.build_student(cfg, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real.device=cpu: meant
        builder.build_student(dataclasses.replace(cfg, device="cpu"), None)
    # under FSDP the student loads onto the CPU on its way to the GPUs: that stop was warned of as if
    # the run had found no GPU
    from atesd.distributed import Dist

    fsdp = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, fsdp=True))
    monkeypatch.setattr(builder, "load_on_rank0", lambda cfg, dist: (model, None))
    for device, warned in (("cuda:1", False), ("cpu", True)):
        monkeypatch.setattr(builder, "resolve_device", lambda d, dist=None, device=device: device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            builder.build_student(fsdp, None, dist=Dist(rank=1, world_size=2))
        assert any("found no CUDA device" in str(w.message) for w in caught) == warned


def test_a_lora_adapter_directory_loads_merged_as_a_plain_model(checkpoint, tmp_path):
    """A LoRA run's final_model is an adapter directory. transformers loaded it with adapter layers
    injected under names vLLM does not know (its weight push raised KeyError, so eval.py with the vllm
    backend could not run on it); it now loads as its base with the adapter merged in."""
    pytest.importorskip("peft", reason="LoRA needs the optional extra [lora] (peft)")
    from atesd.models import load_pretrained
    from atesd.rollout.vllm import vllm_weights

    model, tokenizer = load_hf_model(
        HFModelConfig(name_or_path=str(checkpoint), dtype="float32"), LoraSettings(rank=4, alpha=8.0)
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained adapters: B is zero at init, which would merge nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    loaded, _ = load_pretrained(tmp_path / "adapter")
    assert not any("lora_" in n or "base_layer" in n for n in loaded.state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-5)
    assert {n for n, _ in vllm_weights(loaded)} == set(loaded.state_dict())
    # a new LoRA over it would save an adapter naming the first one's base (reloading without it)
    with pytest.raises(ValueError, match="is a LoRA adapter: a new LoRA over it"):
        load_hf_model(HFModelConfig(name_or_path=str(tmp_path / "adapter")), LoraSettings(rank=4))
    full, _ = load_hf_model(
        HFModelConfig(name_or_path=str(tmp_path / "adapter"), dtype="float32"), LoraSettings()
    )
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, expected, atol=1e-5)


def test_an_env_that_evaluates_a_task_without_an_evaluation_set_is_refused(checkpoint, tmp_path, capsys):
    """Math data holds no evaluation rows unless real.data.eval_size says so: the shipped Qwen3 configs
    evaluated every 4 windows and scored a mean of nothing ("Mean of empty slice", final score "-")."""
    import json

    import recipes.run as run

    data = tmp_path / "opsd.jsonl"
    rows = [
        {"problem": f"What is {a} + 1?", "solution": f"So.\n\nIt is $\\boxed{{{a + 1}}}$."} for a in range(8)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["--controller", "fixed", "threads=1", "plots=false", f"out_dir={tmp_path / 'runs'}",
            f"real.hf.name_or_path={checkpoint}", "real.hf.dtype=float32", "real.task_kind=math",
            f"real.data.source={data}", "real.data.probe_size=2", "real.env.total_steps=2",
            "real.env.hold_steps=1"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no evaluation set" in err and "real.data.eval_size=N" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # as the error says: without evaluations it runs and reports no score (it evaluated nothing at
    # the end: "Mean of empty slice" and an empty evaluation in the last window's info)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run.main([*argv, "real.env.eval_every=0", "real.env.eval_at_reset=false"])
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_score"] is None or math.isnan(summary["final_score"])


def test_a_lora_ema_teacher_averages_the_adapters_alone(checkpoint, small_task):
    """Under LoRA the EMA teacher keeps no copy of the frozen base: the averaged adapters are swapped
    into the student while it scores, and its own come back after (on an error too)."""
    import copy

    from atesd.teacher import TeacherConfig

    torch.manual_seed(0)
    cfg = HFModelConfig(name_or_path=str(checkpoint), dtype="float32")
    model, tokenizer = load_hf_model(cfg, LoraSettings(rank=4, alpha=8.0))
    engine = DistillEngine(
        model, tokenizer, small_task,
        EngineConfig(batch_size=4, lr=1e-2, sampling=SamplingConfig(max_new_tokens=12),
                     teacher=TeacherConfig(kind="ema", ema_decay=0.5)),
    )  # fmt: skip
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert engine.teacher.copy is None and set(engine.teacher.state_dict()) == trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    engine.step(0.5)
    after = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    expected = {n: torch.lerp(before[n], after[n], 0.5) for n in trainable}
    reference = copy.deepcopy(model).eval()  # the whole-model teacher the averages stand for
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in expected:
                p.copy_(expected[n])
    ids = torch.tensor([tokenizer.encode("The answer is 12")])
    with torch.no_grad():
        want = reference(input_ids=ids).logits
    with engine.teacher.scoring() as teacher:
        assert teacher is model and not teacher.training
        assert torch.equal(teacher(input_ids=ids).logits, want)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], after[n]) for n in trainable)  # the student's own are back
    assert model.training
    with pytest.raises(RuntimeError, match="scoring failed"), engine.teacher.scoring():
        raise RuntimeError("scoring failed")
    assert all(torch.equal(params[n], after[n]) for n in trainable)
    # a snapshot restores the averages; a whole-model teacher state (older checkpoints) loads too
    state = engine.state_dict()
    assert all(torch.equal(state["teacher"][n], expected[n]) for n in trainable)
    again = engine.run_window(0.5, 2)
    engine.load_state_dict(state)
    assert engine.run_window(0.5, 2).losses == again.losses
    engine.teacher.load_state_dict(reference.state_dict())
    assert all(torch.equal(engine.teacher.state_dict()[n], expected[n]) for n in trainable)
    with pytest.raises(ValueError, match="lacks averaged adapter weights"):
        engine.teacher.load_state_dict({})


def test_an_adapter_of_a_relative_base_path_loads_from_anywhere_and_a_pickled_one_is_refused(
    checkpoint, tmp_path, monkeypatch
):
    """A LoRA final_model names its base as loaded: a relative path (as typed on the command line)
    read as a hub id from another directory; it is now absolute. An adapter saved as a pickle is
    refused like a pickled model (peft would torch.load it)."""
    import json

    from atesd.models import load_pretrained

    monkeypatch.chdir(checkpoint.parent)
    model, tokenizer = load_hf_model(
        HFModelConfig(name_or_path=checkpoint.name, dtype="float32"), LoraSettings(rank=4, alpha=8.0)
    )
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    base = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(checkpoint.resolve())
    monkeypatch.chdir(tmp_path)
    loaded, _ = load_pretrained(tmp_path / "adapter")
    assert not any("lora_" in n for n in loaded.state_dict())
    model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    tokenizer.save_pretrained(tmp_path / "pickled")
    assert (tmp_path / "pickled" / "adapter_model.bin").is_file()
    with pytest.raises(ValueError, match="only pickle adapter weights"):
        load_pretrained(tmp_path / "pickled")


def test_an_adapter_saved_without_its_tokenizer_reads_its_bases(checkpoint, tmp_path):
    """An adapter folder without tokenizer files failed with 'Couldn't instantiate the backend
    tokenizer ... install sentencepiece or tiktoken': it now reads its base model's tokenizer."""
    from atesd.models import load_pretrained

    model, tokenizer = load_hf_model(
        HFModelConfig(name_or_path=str(checkpoint), dtype="float32"), LoraSettings(rank=4, alpha=8.0)
    )
    model.save_pretrained(tmp_path / "adapter")  # the adapter alone
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "adapter")
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.eos_token == tokenizer.eos_token and loaded_tokenizer.padding_side == "left"


def test_eval_refuses_a_rollout_past_the_models_positions(checkpoint, tmp_path, capsys):
    """eval.py decoded past the model's positions (its default is 38,912 new tokens; Qwen2.5-Math holds
    4,096) and graded what came out there, saying nothing."""
    import json

    from recipes.eval import main as evaluate

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"problem": "What is 1 + 2?", "solution": "So $\\boxed{3}$."}))
    argv = ["--model", str(checkpoint), "--task", str(data), "sampling.samples=1", "real.device=cpu",
            f"out_dir={tmp_path / 'eval'}"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        evaluate([*argv, "sampling.max_new_tokens=1000"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the model holds 512 positions" in err, err
    assert "lower sampling.max_new_tokens to at most" in err and "a model with more positions" in err
    assert not (tmp_path / "eval").exists()  # no directory left for an evaluation never begun
    evaluate([*argv, "sampling.max_new_tokens=8"])


def test_eval_records_the_bad_rows_it_skipped(checkpoint, tmp_path):
    """With real.data.skip_bad_rows the skipped rows were one stderr line: summary.json, the record of
    the evaluation, said neither how many nor which, and the table counted the rows left."""
    import json

    from recipes.eval import main as evaluate

    data = tmp_path / "data.jsonl"
    good = json.dumps({"problem": "What is 1 + 2?", "solution": "So $\\boxed{3}$."})
    data.write_text("\n".join([good, "{not json", good, json.dumps({"problem": "no answer"})]) + "\n")
    argv = ["--model", str(checkpoint), "--task", str(data), "sampling.samples=1", "real.device=cpu",
            "sampling.max_new_tokens=4", "real.data.skip_bad_rows=true",
            f"out_dir={tmp_path / 'eval'}"]  # fmt: skip
    summary = json.loads((evaluate(argv) / "summary.json").read_text())
    assert summary["skipped_rows"] == 2 and summary["skipped_lines"] == [2, 4] and summary["completions"] == 2


def test_eval_records_each_rows_line_for_a_pass_rate_join(checkpoint, tmp_path):
    """docs/USAGE.md's pass-rate bands join eval.py's problems.jsonl back to the data by `line`:
    each record names its row's 1-based line, past blank lines and skipped rows."""
    import json

    from recipes.eval import main as evaluate

    rows = [{"problem": f"What is {a} + 1?", "solution": f"So $\\boxed{{{a + 1}}}$."} for a in range(3)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([json.dumps(rows[0]), "", "{bad", json.dumps(rows[1]), json.dumps(rows[2])]))
    argv = ["--model", str(checkpoint), "--task", str(data), "sampling.samples=1", "real.device=cpu",
            "sampling.max_new_tokens=4", "real.data.skip_bad_rows=true",
            f"out_dir={tmp_path / 'eval'}"]  # fmt: skip
    records = [json.loads(line) for line in (evaluate(argv) / "problems.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 4, 5] and {r["source"] for r in records} == {str(data)}
    lines = data.read_text().splitlines()
    assert [json.loads(lines[r["line"] - 1])["problem"] in r["question"] for r in records] == [True] * 3
