import copy
import math

import numpy as np
import pytest
import torch

import atesd.losses as losses_mod
from atesd.engine import DistillEngine, EngineConfig, NonFiniteLossError, SamplingConfig
from atesd.exposure import ExposureConfig
from atesd.losses import LossConfig, mean_nll
from atesd.rollout.base import RolloutBatch
from atesd.teacher import TeacherConfig


def make_engine(model, tokenizer, task, **kw):
    cfg = EngineConfig(batch_size=8, lr=1e-3, sampling=SamplingConfig(max_new_tokens=24), **kw)
    return DistillEngine(model, tokenizer, task, cfg)


def test_window_changes_parameters_and_lowers_the_loss_on_a_fixed_batch(tiny_model, tokenizer, small_task):
    engine = make_engine(tiny_model, tokenizer, small_task)
    # the base teacher's weights before anything that could move them: the student's noise and its window
    teacher_before = {k: v.clone() for k, v in engine.teacher.model.state_dict().items()}
    with torch.no_grad():  # move the student away from the frozen base teacher, so there is a gap to close
        for p in tiny_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    fixed = engine.rollout(small_task.sample(np.random.default_rng(99), 8), torch.Generator().manual_seed(5))
    with torch.no_grad():
        before_loss = float(engine.batch_loss(fixed, 1.0)[0].loss)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    window = engine.run_window(1.0, 6)
    with torch.no_grad():
        after_loss = float(engine.batch_loss(fixed, 1.0)[0].loss)
    changed = [k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) >= len(before) - 1  # every trained tensor moved
    assert after_loss < 0.8 * before_loss
    assert len(window.steps) == 6 and len(window.losses) == 7 and all(s.alpha == 1.0 for s in window.steps)
    # the frozen base teacher did not move: neither the student's noise nor its updates reached it
    teacher_after = engine.teacher.model.state_dict()
    assert teacher_after.keys() == teacher_before.keys()
    moved = [k for k, v in teacher_after.items() if not torch.equal(v, teacher_before[k])]
    assert moved == []


def test_step_statistics_are_finite_and_typed(tiny_model, tokenizer, small_task):
    engine = make_engine(tiny_model, tokenizer, small_task)
    s = engine.step(0.5)
    for name in (
        "loss",
        "mismatch_top1",
        "divergence_p90",
        "divergence_p99",
        "confidence",
        "grounded",
        "probe_nll",
    ):
        assert math.isfinite(getattr(s, name)), name
    assert 0 <= s.mismatch_top1 <= 1 and 0 < s.confidence <= 1 and s.grounded <= 0
    assert s.divergence_p90 <= s.divergence_p99 and s.num_tokens > 0 and s.tokens_per_s > 0
    assert set(engine.stats.values) == {"alpha", "loss", "mismatch", "probe_nll", "confidence"}
    assert engine.stats.values["alpha"] == 0.5
    keys = s.metrics()
    assert "student/loss" in keys and "time/rollout_s" in keys


def test_same_seed_same_run(tokenizer, small_task):
    from atesd.models import TinyModelConfig, build_tiny_qwen3

    cfg = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    runs = []
    for _ in range(2):
        engine = make_engine(build_tiny_qwen3(tokenizer, cfg), tokenizer, small_task)
        runs.append([(s.loss, s.probe_nll) for s in engine.run_window(0.5, 2).steps])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", ["base", "live", "ema"])
def test_teacher_kinds(tiny_model, tokenizer, small_task, kind):
    engine = make_engine(tiny_model, tokenizer, small_task, teacher=TeacherConfig(kind=kind, ema_decay=0.5))
    initial = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    engine.step(1.0)
    t_state, s_state = engine.teacher.model.state_dict(), tiny_model.state_dict()
    key = "model.layers.0.mlp.up_proj.weight"
    if kind == "base":
        assert torch.equal(t_state[key], initial[key])
    elif kind == "live":
        assert engine.teacher.model is tiny_model
    else:  # halfway between the initial and the updated student
        assert torch.allclose(t_state[key], 0.5 * initial[key] + 0.5 * s_state[key], atol=1e-6)
    tiny_model.train()
    with pytest.raises(RuntimeError, match="scoring failed"), engine.teacher.scoring():
        raise RuntimeError("scoring failed")
    assert tiny_model.training  # a live teacher is the student: its mode comes back on an error too


def test_reference_controls(tiny_model, tokenizer, small_task):
    engine = make_engine(tiny_model, tokenizer, small_task)
    problems = small_task.sample(np.random.default_rng(0), 3)
    own = engine.teacher_prompts(problems, 1.0, ["", "", ""])
    other_engine = make_engine(
        tiny_model, tokenizer, small_task, exposure=engine.cfg.exposure.__class__(reference="other")
    )
    other = other_engine.teacher_prompts(problems, 1.0, ["", "", ""])
    decoded = [tokenizer.decode(ids) for ids in other]
    assert other != own
    for i, text in enumerate(decoded):  # problem i's question with problem i+1's reference
        assert problems[i].question in text and problems[(i + 1) % 3].solution.rsplit("A", 1)[0] in text


def test_the_other_reference_is_never_the_problems_own_when_a_batch_draws_it_twice():
    """The neighbour's reference gave a problem drawn twice in a row its own reference under the
    control that exists to withhold it (a batch larger than the pool draws problems again)."""
    from atesd.engine import other_references
    from atesd.tasks.base import Problem

    a, b = (Problem(q, ("step. ",), "1", "A1", "x", {}) for q in ("first?", "second?"))
    assert other_references([a, a, b]) == [b, b, a]
    assert other_references([a, b, b]) == [b, a, a]
    with pytest.raises(ValueError, match="reference=other needs two different problems in a batch"):
        other_references([a, a])


def test_the_other_reference_control_needs_two_problems_a_batch(tiny_model, tokenizer, small_task):
    with pytest.raises(ValueError, match="reference=other.*batch_size >= 2"):
        DistillEngine(
            tiny_model,
            tokenizer,
            small_task,
            EngineConfig(batch_size=1, exposure=ExposureConfig(reference="other")),
        )


def test_a_window_without_the_probe_measures_none(tiny_model, tokenizer, small_task):
    cfg = EngineConfig(batch_size=2, probe_every=0, sampling=SamplingConfig(max_new_tokens=8))
    window = DistillEngine(tiny_model, tokenizer, small_task, cfg, probe=[]).run_window(0.5, 2)
    assert math.isnan(window.probe_before) and all(math.isnan(s.probe_nll) for s in window.steps)
    # a task without a probe set (no references) measures NaN too, also at the default probe_every=1,
    # whether the probe runs in line or beside the rollout (it raised torch.cat's empty-list error)
    for overlap in (True, False):
        cfg = EngineConfig(batch_size=2, sampling=SamplingConfig(max_new_tokens=8), overlap_probe=overlap)
        window = DistillEngine(tiny_model, tokenizer, small_task, cfg, probe=[]).run_window(0.5, 2)
        assert math.isnan(window.probe_before) and all(math.isnan(s.probe_nll) for s in window.steps)
        assert all(math.isfinite(s.loss) for s in window.steps)


def test_nonfinite_losses_skip_updates_then_stop(tiny_model, tokenizer, small_task):
    engine = make_engine(tiny_model, tokenizer, small_task, max_nonfinite_steps=2)

    def poison(module, args, output):  # NaN only in the student's training pass (grad enabled)
        return output * float("nan") if torch.is_grad_enabled() else output

    tiny_model.model.norm.register_forward_hook(poison)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    s = engine.step(0.5)
    assert s.skipped and math.isnan(s.loss) and engine.nonfinite_total == 1
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    assert engine.stats.values.get("loss") is None  # a skipped update never reaches the statistics
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row"):
        engine.step(0.5)


def test_an_update_skipped_for_its_gradient_measures_no_grounded_score(tiny_model, tokenizer, small_task):
    """A finite loss whose gradient is not finite skips the update too, and measures no g (METHOD
    §3): a window of such updates is credited no grounded term, not the noise between two
    measurements of one state."""
    engine = make_engine(tiny_model, tokenizer, small_task, max_nonfinite_steps=5)
    hook = next(tiny_model.parameters()).register_hook(lambda grad: grad * float("nan"))
    steps = engine.run_window(0.5, 2).steps
    hook.remove()
    assert all(s.skipped and math.isfinite(s.loss) and math.isnan(s.grounded) for s in steps)
    assert math.isfinite(engine.step(0.5).grounded)


def _perturb(model, scale=0.05):
    """Move the student away from the frozen base teacher (seeded), so there is a gap to measure."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))


def _reference_mismatch(engine, alpha, problems, seed):
    """Mean per-token KL(student || teacher) and top-1 disagreement, from the two models' own logits."""
    from atesd.batching import completion_hidden

    batch = engine.rollout(problems, torch.Generator().manual_seed(seed))  # the rollout mismatch draws
    pad = engine.tokenizer.pad_token_id
    teacher_prompts = engine.teacher_prompts(problems, alpha, batch.texts)
    with torch.no_grad():
        engine.student.eval()
        s_hidden, _ = completion_hidden(engine.student, batch.prompts, batch.completions, pad)
        engine.student.train()
        t_hidden, _ = completion_hidden(engine.teacher.model, teacher_prompts, batch.completions, pad)
        s_logp = torch.log_softmax(s_hidden @ engine.student.lm_head.weight.T, -1)
        t_logp = torch.log_softmax(t_hidden @ engine.teacher.model.lm_head.weight.T, -1)
    kl = float((s_logp.exp() * (s_logp - t_logp)).sum(-1).mean())
    top1 = float((s_logp.argmax(-1) != t_logp.argmax(-1)).float().mean())
    return kl, top1


def test_evaluate_and_mismatch(tiny_model, tokenizer, small_task):
    engine = make_engine(tiny_model, tokenizer, small_task)
    ev = engine.evaluate(k=2)
    assert set(ev) == {f"{m}/{b}" for m in ("accuracy", "avg_at_2") for b in small_task.eval_sets()}
    assert all(0 <= v <= 1 for v in ev.values())

    # evaluate grades what the sampler answers: every reference solution, half of them, or garbage
    eos = tokenizer.eos_token_id
    solutions = {}
    for problems in small_task.eval_sets().values():
        for i, p in enumerate(problems):
            prompt = tuple(engine.builder.encode(engine.builder.student_prompt(p)))
            solutions[prompt] = (i, engine.builder.encode(p.solution) + [eos])
    garbage = engine.builder.encode("garbage") + [eos]
    answer = {
        "all": lambda i, ids: ids,
        "even": lambda i, ids: ids if i % 2 == 0 else garbage,
        "none": lambda i, ids: garbage,
    }
    for mode, want in (("all", 1.0), ("even", 0.5), ("none", 0.0)):
        engine.sampler.generate = lambda prompts, params, gen, mode=mode: RolloutBatch(
            prompts, [answer[mode](*solutions[tuple(p)]) for p in prompts], [True] * len(prompts)
        )
        ev = engine.evaluate(k=2)
        assert len(ev) == 2 * len(small_task.eval_sets())
        assert ev == {key: want for key in ev}, mode
    del engine.sampler.generate  # the real sampler again

    problems = small_task.eval_sets()["M22"]
    m0 = engine.mismatch(0.0, problems, torch.Generator().manual_seed(0))
    m1 = engine.mismatch(0.0, problems, torch.Generator().manual_seed(0))
    assert m0 == m1 and m0["kl"] >= 0 and 0 <= m0["top1"] <= 1
    _perturb(tiny_model)  # the student now differs from the frozen base teacher
    for alpha in (0.0, 1.0):
        m = engine.mismatch(alpha, problems, torch.Generator().manual_seed(0))
        kl, top1 = _reference_mismatch(engine, alpha, problems, seed=0)
        assert m["kl"] == pytest.approx(kl, rel=1e-4) and m["kl"] > 1e-3
        assert m["top1"] == pytest.approx(top1, abs=1e-6) and m["top1"] > 0
    shown = engine.mismatch(1.0, problems, torch.Generator().manual_seed(0))
    hidden = engine.mismatch(0.0, problems, torch.Generator().manual_seed(0))
    assert shown["kl"] != pytest.approx(hidden["kl"], rel=1e-3)  # the teacher's exposure moves it


def test_loss_kind_is_configurable(tiny_model, tokenizer, small_task):
    """The update's loss is the configured divergence (kind and clip): on one fixed batch the engine's
    loss equals the reference loss of that config, and forward and reverse KL engines differ."""
    from atesd.batching import completion_hidden
    from atesd.losses import naive_distill_loss

    configs = {
        "forward_clipped": LossConfig(kind="forward_kl", clip_tau=0.05),
        "forward": LossConfig(kind="forward_kl"),
        "reverse": LossConfig(kind="reverse_kl"),
    }
    # every engine's frozen base teacher is the starting weights; the student then moves away from them
    engines = {name: make_engine(tiny_model, tokenizer, small_task, loss=c) for name, c in configs.items()}
    _perturb(tiny_model)
    engine = engines["forward_clipped"]
    fixed = engine.rollout(small_task.sample(np.random.default_rng(99), 8), torch.Generator().manual_seed(5))
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        losses = {name: float(e.batch_loss(fixed, 1.0)[0].loss) for name, e in engines.items()}
        teacher_prompts = engine.teacher_prompts(fixed.problems, 1.0, fixed.texts)
        t_hidden, targets = completion_hidden(engine.teacher.model, teacher_prompts, fixed.completions, pad)
        s_hidden, _ = completion_hidden(tiny_model, fixed.prompts, fixed.completions, pad)
        mask = torch.ones(targets.shape[0], dtype=torch.bool)
        heads = (tiny_model.lm_head.weight, engine.teacher.model.lm_head.weight)
        reference = {
            name: float(naive_distill_loss(s_hidden, t_hidden, *heads, mask, c, targets).loss)
            for name, c in configs.items()
        }
    for name in configs:
        assert losses[name] == pytest.approx(reference[name], rel=1e-5), name
    # the three references are far apart: a loss that ignored the kind or the clip would not match
    assert reference["forward"] != pytest.approx(reference["reverse"], rel=1e-2)
    assert reference["forward_clipped"] < reference["forward"] * 0.99
    assert losses["forward"] != pytest.approx(losses["reverse"], rel=1e-2)
    assert math.isfinite(engine.step(1.0).loss)


def test_the_in_training_evaluation_decodes_as_configured(tiny_model, tokenizer, small_task):
    """EngineConfig.eval sets the evaluation's length limit and Average@k sampling, apart from the
    training rollouts' (a documented choice; eval.py keeps the paper's protocol)."""
    from atesd.engine import EvalSettings

    settings = EvalSettings(temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=5)
    cfg = EngineConfig(batch_size=2, sampling=SamplingConfig(max_new_tokens=16), eval=settings)
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    seen = []
    generate = engine.sampler.generate
    engine.sampler.generate = lambda prompts, params, gen: (
        seen.append(params) or generate(prompts, params, gen)
    )
    engine.evaluate(k=1)
    greedy, sampled = seen[0], seen[1]
    assert (greedy.temperature, greedy.max_new_tokens) == (0.0, 5)
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.max_new_tokens) == (0.6, 0.95, 20, 5)
    with pytest.raises(ValueError, match="top_p must be in"):
        EvalSettings(top_p=0.0)


def test_per_outcome_exposure_scores_solved_rollouts_at_their_own_alpha(tiny_model, tokenizer, small_task):
    exposure = ExposureConfig(solved_alpha=0.0)
    engine = make_engine(tiny_model, tokenizer, small_task, exposure=exposure)
    problems = small_task.sample(np.random.default_rng(0), 4)
    texts = [problems[0].solution, "garbage", problems[2].solution, ""]  # solved, failed, solved, empty
    assert [small_task.verify(p, t).correct for p, t in zip(problems, texts)] == [True, False, True, False]
    prompts = engine.teacher_prompts(problems, 1.0, texts)
    for i, a in enumerate([0.0, 1.0, 0.0, 1.0]):
        assert prompts[i] == engine.builder.encode(engine.builder.teacher_prompt(problems[i], a)), i
    plain = engine.teacher_prompts(
        problems, 1.0, texts, per_outcome=False
    )  # grounded_by=teacher_fixed's view
    assert plain == [engine.builder.encode(engine.builder.teacher_prompt(p, 1.0)) for p in problems]
    with pytest.raises(ValueError, match="solved_alpha"):
        ExposureConfig(solved_alpha=1.5)
    with pytest.raises(ValueError, match="solved_alpha"):
        ExposureConfig(solved_alpha=True)  # a bool is not an exposure
    assert ExposureConfig(solved_alpha=np.float32(0.5)).solved_alpha == 0.5  # numpy's float32 is one
    # a misspelt unit or reference took another branch (a token cut mid-step; path_matched) unsaid
    with pytest.raises(ValueError, match="unit must be one of step, token, got 'steps'"):
        ExposureConfig(unit="steps")
    with pytest.raises(ValueError, match="reference must be one of own, other, path_matched"):
        ExposureConfig(reference="othre")


def test_mismatch_measures_the_alpha_asked_for_under_per_outcome_exposure(
    tiny_model, tokenizer, small_task, monkeypatch
):
    """mismatch(alpha) took a solved rollout's teacher prompt at solved_alpha: with every rollout
    solved, alpha 0 and alpha 1 measured the same teacher."""
    from atesd.tasks.base import Verdict

    engine = make_engine(tiny_model, tokenizer, small_task, exposure=ExposureConfig(solved_alpha=0.0))
    plain = make_engine(tiny_model, tokenizer, small_task)
    monkeypatch.setattr(small_task, "verify", lambda p, t: Verdict(True, True, True, "0"))  # all solved
    problems = small_task.eval_sets()["M22"]
    for alpha in (0.0, 1.0):
        got = engine.mismatch(alpha, problems, torch.Generator().manual_seed(0))
        assert got == plain.mismatch(alpha, problems, torch.Generator().manual_seed(0)), alpha
    zero, one = (engine.mismatch(a, problems, torch.Generator().manual_seed(0)) for a in (0.0, 1.0))
    assert zero != one


def test_a_window_after_an_unprobed_update_measures_its_start_again(tiny_model, tokenizer, small_task):
    """With probe_every > 1 the last probe can be of older weights: a window then took it as its l_0."""
    engine = make_engine(tiny_model, tokenizer, small_task, probe_every=2)
    engine.run_window(0.5, 3)  # updates 1-3: probed after 2, not after 3
    kept = engine.last_probe_nll
    start = engine.probe_nll()  # the weights the next window starts from (this call records it: undone)
    engine.last_probe_nll = kept
    assert engine.run_window(0.5, 1).losses[0] == pytest.approx(start, abs=1e-6)


def test_the_probe_nll_in_chunks_equals_one_pass(tiny_model, tokenizer, small_task, monkeypatch):
    """A real vocabulary over long probe solutions is scored in chunks of rows; the same mean."""
    engine = make_engine(tiny_model, tokenizer, small_task)
    whole = engine.probe_nll()
    monkeypatch.setattr(losses_mod, "LOGIT_FLOATS", 7 * tiny_model.config.vocab_size)  # 7 rows a chunk
    assert engine.probe_nll() == pytest.approx(whole, rel=1e-6)


def test_a_snapshot_is_a_cpu_copy_that_keeps_tied_weights_shared(tiny_model, tokenizer, small_task):
    from atesd.state import cpu_copy

    engine = make_engine(tiny_model, tokenizer, small_task)
    state = engine.state_dict()
    tensors = [t for t in state["student"].values()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert hasattr(state["student"], "_metadata")  # what load_state_dict reads for versions
    shared = torch.ones(2)
    copied = cpu_copy({"a": shared, "b": [shared, (1, "x")]})
    assert copied["a"] is copied["b"][0] and copied["a"] is not shared and copied["b"][1] == (1, "x")


def test_a_model_whose_logits_are_not_a_plain_head_is_refused(tokenizer, small_task):
    """The engine scores tokens as hidden @ lm_head.weight.T while the sampler runs the model's own
    forward: a head bias (Phi), softcapped or scaled logits (Gemma 2, Cohere) or LoRA on lm_head
    (whose adapters got no gradient) would silently train off-policy."""
    from atesd.models import LoraSettings, TinyModelConfig, apply_lora, build_tiny_qwen3

    def fresh():
        return build_tiny_qwen3(tokenizer, TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2,
                                                           num_kv_heads=1, intermediate_size=64))  # fmt: skip

    biased = fresh()
    old = biased.lm_head
    biased.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    capped = fresh()
    capped.config.final_logit_softcapping = 30.0
    adapted = apply_lora(fresh(), LoraSettings(rank=4, target_modules=("q_proj", "lm_head")))
    cases = ((biased, "has a bias"), (capped, "final_logit_softcapping=30.0"), (adapted, "adapters"))
    for model, why in cases:
        with pytest.raises(ValueError, match=f"lm_head.weight.T, which this model's are not: .*{why}"):
            make_engine(model, tokenizer, small_task)
    make_engine(apply_lora(fresh(), LoraSettings(rank=4)), tokenizer, small_task)  # the default targets


def test_an_ema_teacher_of_16_bit_weights_is_refused(tiny_model):
    """(1 - decay) x the difference rounds away below a bf16 step: the teacher hardly moved (4,595
    of 77,440 entries after 10 updates at lr 1e-4), while the student trained."""
    from atesd.teacher import Teacher, TeacherConfig

    with pytest.raises(ValueError, match="teacher kind ema averages the trained weights, which are 16-bit"):
        Teacher(tiny_model.to(torch.bfloat16), TeacherConfig(kind="ema"))
    Teacher(tiny_model.to(torch.bfloat16), TeacherConfig(kind="base"))
    Teacher(tiny_model.to(torch.float32), TeacherConfig(kind="ema"))


def test_a_snapshot_replays_dropout(tiny_model, tokenizer, small_task):
    """Dropout (here LoRA's) draws from torch's global generator, which the engine's state now holds:
    a window run again from a snapshot repeats itself (as the env's reset and a resume need)."""
    from atesd.models import LoraSettings, apply_lora

    engine = make_engine(apply_lora(tiny_model, LoraSettings(rank=4, dropout=0.1)), tokenizer, small_task)
    snapshot = engine.state_dict()
    first = [s.loss for s in engine.run_window(0.5, 2).steps]
    engine.load_state_dict(snapshot)
    assert [s.loss for s in engine.run_window(0.5, 2).steps] == first


def test_a_state_of_another_device_kind_is_refused_in_one_line(tiny_model, tokenizer, small_task):
    """A GPU run's checkpoint resumed on a CPU (the qwen3 configs' device=auto matches on both) failed
    deep in torch: "Expected a CPUGeneratorImplState of size 5056 but found ... 16"."""
    engine = make_engine(tiny_model, tokenizer, small_task)
    state = engine.state_dict()
    state["sample_gen"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    with pytest.raises(
        ValueError, match=r"samplers ran on another kind of device than this engine's \(cpu\)"
    ):
        engine.load_state_dict(state)


def test_lora_init_and_dropout_do_not_depend_on_what_the_process_ran_before(tokenizer, small_task):
    """Two engines built in one process (a bench worker's units, branch_alpha's seeds) drew LoRA's
    init and its dropout from torch's global generator in whatever state earlier work had left it, so
    the same config trained otherwise. Both now come from the seed (apply_lora's, the engine's)."""
    from atesd.models import LoraSettings, TinyModelConfig, apply_lora, build_tiny_qwen3

    cfg = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    adapters, losses = [], []
    for noise in (1, 5):
        torch.rand(noise)  # other work in the process
        model = build_tiny_qwen3(tokenizer, cfg)
        before = torch.get_rng_state()
        model = apply_lora(model, LoraSettings(rank=4, dropout=0.1))
        assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
        adapters.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n})
        torch.rand(noise)
        losses.append([s.loss for s in make_engine(model, tokenizer, small_task).run_window(0.5, 2).steps])
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("chunked", [False, True])
def test_the_probe_nll_of_a_16_bit_model_takes_its_logits_in_float32(chunked, monkeypatch):
    """The probe NLL (the tracked loss of the progress reward) took the head product in bfloat16 and
    was 7e-4 off at a 1000-token vocabulary, more than a window's progress on a real run; it now
    takes it in float32, as the loss does."""
    if chunked:
        monkeypatch.setattr(losses_mod, "LOGIT_FLOATS", 1000 * 100)  # chunks of 100 rows
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(384, 64, generator=g).bfloat16()
    head = (torch.randn(1000, 64, generator=g) * 0.6).bfloat16()
    targets = torch.randint(0, 1000, (384,), generator=g)
    exact = float(torch.nn.functional.cross_entropy(hidden.double() @ head.double().T, targets))
    assert mean_nll(hidden, head, targets) == pytest.approx(exact, abs=1e-5)


def test_loading_a_snapshot_never_lets_training_write_into_it(tiny_model, tokenizer, small_task):
    """The env loads its reset snapshot at every reset: training after a load must leave every tensor
    of the snapshot as it was (the optimiser adopts the tensors it is given, so its part is copied)."""
    engine = make_engine(tiny_model, tokenizer, small_task)
    engine.run_window(0.5, 2)  # moments in the optimiser
    snapshot = engine.state_dict()
    kept = copy.deepcopy(snapshot)
    engine.load_state_dict(snapshot)
    engine.run_window(0.5, 2)
    engine.load_state_dict(snapshot)
    engine.run_window(1.0, 1)

    def tensors(tree):
        if isinstance(tree, torch.Tensor):
            return [tree]
        if isinstance(tree, dict):
            return [t for v in tree.values() for t in tensors(v)]
        if isinstance(tree, (list, tuple)):
            return [t for v in tree for t in tensors(v)]
        return []

    pairs = list(zip(tensors(snapshot), tensors(kept), strict=True))
    assert len(pairs) > 10 and all(torch.equal(a, b) for a, b in pairs)


def test_a_bad_alpha_is_refused_before_the_streams_move(tiny_model, tokenizer, small_task):
    """alpha was checked only where a teacher prompt used it: after the rollout had moved the problem
    stream and the sampler, and never where every row was solved under exposure.solved_alpha, or for
    a band no row drew (a NaN then reached the statistics a controller reads)."""
    from atesd.tasks.base import action_bands

    engine = make_engine(tiny_model, tokenizer, small_task, exposure=ExposureConfig(solved_alpha=1.0))
    bands = action_bands(small_task)
    before = (engine.rng.bit_generator.state, engine.sample_gen.get_state())
    for bad in (math.nan, 3.0, -0.1, "0.5", True, None, {**dict.fromkeys(bands, 0.5), bands[-1]: math.nan}):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            engine.step(bad)
    with pytest.raises(ValueError, match=rf"no alpha for band\(s\) \['{bands[-1]}'\]"):
        engine.run_window(dict.fromkeys(bands[:-1], 0.5), 1)
    assert engine.rng.bit_generator.state == before[0] and torch.equal(
        engine.sample_gen.get_state(), before[1]
    )
    assert engine.num_steps == 0


def test_loading_a_state_keeps_the_configs_stats_decay(tiny_model, tokenizer, small_task):
    """A state saved under another engine.stats_decay replaced the engine's decay on load: the run's
    statistics then moved at the saved rate, not at its config's."""
    import dataclasses

    cfg = EngineConfig(batch_size=2, sampling=SamplingConfig(max_new_tokens=8))
    saved = DistillEngine(copy.deepcopy(tiny_model), tokenizer, small_task, cfg)
    saved.step(0.5)
    slow = DistillEngine(tiny_model, tokenizer, small_task, dataclasses.replace(cfg, stats_decay=0.5))
    slow.load_state_dict(saved.state_dict())
    assert slow.stats.decay == 0.5 and slow.stats.values == saved.stats.values


def test_under_torchrun_the_grounded_score_is_pooled_by_answer_tokens(tiny_model, tokenizer, small_task):
    """Each rank's grounded score is a mean over its answer tokens, and the ranks' were averaged as
    they were: a rank of short answers weighed as much as one of long ones (on math data one process
    and two ranks over the same rows gave -3.268 and -3.288). It is now weighted by answer tokens."""
    from atesd.distributed import Dist

    engine = make_engine(tiny_model, tokenizer, small_task)
    batch = engine.rollout(small_task.sample(np.random.default_rng(0), 3))
    out, grounded, _ = engine.batch_loss(batch, 0.5)
    answer_tokens = sum(len(engine.builder.encode(p.final)) for p in batch.problems)
    seen = {}

    class OtherRankHasTwiceTheTokens(Dist):  # this rank's n of 3n answer tokens: share 2/3
        active = True
        world_size = 2

        def token_share(self, n):
            seen["n"] = n
            return 2 * n / (3 * n), 3 * n

        def mean(self, values):
            seen["values"] = values
            return values

    engine.dist = OtherRankHasTwiceTheTokens()
    times = dict.fromkeys(("rollout_s", "teacher_s", "update_s", "probe_s", "total_s"), 0.0)
    engine._step_stats(0.5, batch, out, 1.0, grounded, step=1, skipped=False, grad_norm=1.0, num_tokens=1,
                       probe_nll=math.nan, **times)  # fmt: skip
    assert seen["n"] == answer_tokens and seen["values"][7] == pytest.approx(grounded * 2 / 3)
