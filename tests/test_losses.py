"""Distillation losses: hand-computed values, clipping, top-k, masking, and chunked == naive."""

import math

import pytest
import torch

from atesd.losses import LossConfig, chunked_distill_loss, naive_distill_loss, per_token_divergence

P_T = [0.7, 0.2, 0.1]
P_S = [0.4, 0.4, 0.2]
NEG_INF = float("-inf")


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])  # (1, V): log_softmax gives probs back


def _div(kind: str, **kw) -> float:
    return per_token_divergence(_logits(P_S), _logits(P_T), LossConfig(kind=kind, **kw)).item()


def test_forward_reverse_jsd_by_hand():
    fwd = 0.7 * math.log(0.7 / 0.4) + 0.2 * math.log(0.2 / 0.4) + 0.1 * math.log(0.1 / 0.2)
    rev = 0.4 * math.log(0.4 / 0.7) + 0.4 * math.log(0.4 / 0.2) + 0.2 * math.log(0.2 / 0.1)
    m = [0.55, 0.3, 0.15]
    kl_tm = 0.7 * math.log(0.7 / m[0]) + 0.2 * math.log(0.2 / m[1]) + 0.1 * math.log(0.1 / m[2])
    kl_sm = 0.4 * math.log(0.4 / m[0]) + 0.4 * math.log(0.4 / m[1]) + 0.2 * math.log(0.2 / m[2])
    assert _div("forward_kl") == pytest.approx(fwd, abs=1e-6)
    assert _div("reverse_kl") == pytest.approx(rev, abs=1e-6)
    assert _div("jsd", beta=0.5) == pytest.approx(0.5 * kl_tm + 0.5 * kl_sm, abs=1e-6)
    # beta = 0.25: M = 0.25 p_T + 0.75 p_S
    m = [0.25 * t + 0.75 * s for t, s in zip(P_T, P_S, strict=True)]
    jsd = sum(
        0.25 * t * math.log(t / mi) + 0.75 * s * math.log(s / mi)
        for t, s, mi in zip(P_T, P_S, m, strict=True)
    )
    assert _div("jsd", beta=0.25) == pytest.approx(jsd, abs=1e-6)


def test_jsd_endpoints_equal_kl_exactly():
    s, t = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), torch.randn(5, 7)
    for beta, kind in [(0.0, "forward_kl"), (1.0, "reverse_kl")]:
        jsd = per_token_divergence(s, t, LossConfig(kind="jsd", beta=beta))
        assert torch.equal(jsd, per_token_divergence(s, t, LossConfig(kind=kind)))


def test_sampled_token_by_hand():
    s = _logits(P_S).requires_grad_(True)
    cfg = LossConfig(kind="sampled_token")
    term = per_token_divergence(s, _logits(P_T), cfg, target_ids=torch.tensor([0]))
    adv = math.log(0.7) - math.log(0.4)
    assert term.item() == pytest.approx(-adv * math.log(0.4), abs=1e-6)
    term.sum().backward()  # d/dz of -A log p_S(y) = -A (onehot(y) - p_S)
    expected = [-adv * (1 - 0.4), -adv * (0 - 0.4), -adv * (0 - 0.2)]
    assert s.grad[0].tolist() == pytest.approx(expected, abs=1e-6)
    one = torch.ones(1, 1)  # hidden = 1 and head = logits column: hidden @ head.T gives the logits back
    out = naive_distill_loss(
        one, one, _logits(P_S).T, _logits(P_T).T, torch.tensor([True]), cfg, torch.tensor([0])
    )
    assert out.per_token.item() == pytest.approx(math.log(0.4) - math.log(0.7), abs=1e-6)
    assert out.student_token_logprob.item() == pytest.approx(math.log(0.4), abs=1e-6)
    assert out.teacher_token_logprob.item() == pytest.approx(math.log(0.7), abs=1e-6)


def test_temperature_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    p0 = math.e / (math.e + 1)  # softmax([2, 0] / 2)
    fwd = p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)
    got = per_token_divergence(s, t, LossConfig(temperature=2.0)).item()
    assert got == pytest.approx(fwd, abs=1e-6)


def test_pointwise_clip_by_hand_negative_loss_and_zero_grad():
    s = _logits(P_S).requires_grad_(True)
    loss = per_token_divergence(s, _logits(P_T), LossConfig(clip_tau=0.1))
    # summand 0 (0.7 log 1.75 = 0.39) is capped at 0.1; summands 1, 2 are negative and untouched
    assert loss.item() == pytest.approx(0.1 + 0.2 * math.log(0.5) + 0.1 * math.log(0.5), abs=1e-6)
    assert loss.item() < 0
    loss.sum().backward()
    # d/dz_j of -p_T(v) log p_S(v) = -p_T(v)(1[v=j] - p_S(j)), summed over uncapped v in {1, 2} only
    expected = [0.4 * 0.3, -0.2 + 0.4 * 0.3, -0.1 + 0.2 * 0.3]
    assert s.grad[0].tolist() == pytest.approx(expected, abs=1e-6)
    # no summand above tau: identical to the unclipped loss
    assert _div("forward_kl", clip_tau=1.0) == _div("forward_kl")


def test_top_k_by_hand_and_neg_inf_in_support():
    s = _logits([0.1, 0.2, 0.3, 0.4])
    t = _logits([0.5, 0.3, 0.15, 0.05])
    got = per_token_divergence(s, t, LossConfig(top_k=2)).item()
    pt, ps = [0.5 / 0.8, 0.3 / 0.8], [0.1 / 0.3, 0.2 / 0.3]  # both renormalised over teacher's top-2 {0, 1}
    assert got == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)), abs=1e-6)
    # teacher has only one finite logit: its top-2 holds a -inf entry whose summand must be 0, not NaN
    s = torch.tensor([[0.0, math.log(3.0), 5.0]], requires_grad=True)
    t = torch.tensor([[0.0, NEG_INF, NEG_INF]])
    for kind in ["forward_kl", "jsd"]:
        val = per_token_divergence(s, t, LossConfig(kind=kind, top_k=2))
        val.sum().backward()
        assert torch.isfinite(val).all() and torch.isfinite(s.grad).all()
        s.grad = None
    # reverse KL with student mass where the teacher has none is genuinely infinite (not NaN)
    assert per_token_divergence(s, t, LossConfig(kind="reverse_kl", top_k=2)).item() == math.inf
    # forward: p_T' = [1, 0], p_S' = [1/4, 3/4] over {0, 1}
    assert per_token_divergence(s, t, LossConfig(top_k=2)).item() == pytest.approx(math.log(4.0), abs=1e-6)


def _problem(n: int = 10, h: int = 6, v: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, h, generator=g, requires_grad=True)
    t_h = torch.randn(n, h, generator=g)
    s_w, t_w = torch.randn(v, h, generator=g), torch.randn(v, h, generator=g)
    mask = torch.ones(n, dtype=torch.bool)
    mask[[1, 4, 9]] = False
    return s_h, t_h, s_w, t_w, mask, torch.randint(0, v, (n,), generator=g)


CONFIGS = [
    LossConfig(kind="forward_kl"),
    LossConfig(kind="reverse_kl", temperature=0.7),
    LossConfig(kind="jsd", beta=0.5, clip_tau=0.05),
    LossConfig(kind="jsd", beta=0.3, top_k=4),
    LossConfig(kind="sampled_token"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.kind)
def test_chunked_equals_naive(cfg):
    s_h, t_h, s_w, t_w, mask, y = _problem()
    s_w.requires_grad_(True)
    ref = naive_distill_loss(s_h, t_h, s_w, t_w, mask, cfg, target_ids=y)
    ref_grads = torch.autograd.grad(ref.loss, [s_h, s_w])
    for chunk in [1, 3, 4, 1024]:
        out = chunked_distill_loss(
            s_h, t_h, s_w, t_w, mask, LossConfig(**{**vars(cfg), "chunk_size": chunk}), y
        )
        grads = torch.autograd.grad(out.loss, [s_h, s_w])
        torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
        for name in ["per_token", "student_max_prob", "student_token_logprob", "teacher_token_logprob"]:
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=0)
        assert torch.equal(out.top1_disagree, ref.top1_disagree)
        for g, rg in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, rg, atol=1e-5, rtol=0)
        assert out.per_token.shape == (7,) and not out.per_token.requires_grad
    assert ref_grads[0][~mask].abs().sum() == 0 and ref_grads[0][mask].abs().sum() > 0


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "sampled_token"])
def test_chunked_keeps_no_logits_for_backward(kind):
    s_h, t_h, s_w, t_w, mask, y = _problem(v=9)
    for fn, expect_logits in [(naive_distill_loss, True), (chunked_distill_loss, False)]:
        saved: list[torch.Size] = []  # shapes autograd keeps outside any checkpoint; logits are (*, V)

        def pack(x: torch.Tensor, saved: list = saved) -> torch.Tensor:
            saved.append(x.shape)
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = fn(s_h, t_h, s_w, t_w, mask, LossConfig(kind=kind, chunk_size=3), y)
        out.loss.backward()
        assert any(shape[-1:] == (9,) for shape in saved) == expect_logits


def test_stats_match_direct_computation():
    s_h, t_h, s_w, t_w, mask, y = _problem()
    out = chunked_distill_loss(s_h, t_h, s_w, t_w, mask, LossConfig(temperature=2.0, chunk_size=3))
    s, t = (s_h @ s_w.T)[mask] / 2.0, (t_h @ t_w.T)[mask] / 2.0
    torch.testing.assert_close(out.student_max_prob, s.softmax(-1).amax(-1).detach())
    assert torch.equal(out.top1_disagree, s.argmax(-1) != t.argmax(-1))
    assert out.student_token_logprob is None and out.teacher_token_logprob is None
    div = per_token_divergence(s, t, LossConfig(temperature=1.0))
    torch.testing.assert_close(out.per_token, div.detach())
    torch.testing.assert_close(out.loss, div.mean())


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "sampled_token"])
def test_masked_garbage_gives_no_nan(kind):
    cfg = LossConfig(kind=kind, chunk_size=2)
    s_h, t_h, s_w, t_w, mask, y = _problem()
    with torch.no_grad():
        s_h[~mask] = float("nan")
        t_h[~mask] = float("inf")
    s_w.requires_grad_(True)
    for fn in [chunked_distill_loss, naive_distill_loss]:
        out = fn(s_h, t_h, s_w, t_w, mask, cfg, target_ids=y)
        grads = torch.autograd.grad(out.loss, [s_h, s_w])
        assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(out.per_token).all()
    logits = torch.randn(4, 5, requires_grad=True)
    garbage = torch.tensor([[NEG_INF] * 5, [float("nan")] * 5, [0.0] * 5, [NEG_INF] * 5])
    row_mask = torch.tensor([False, False, True, False])
    bad_s = torch.where(row_mask[:, None], logits, garbage)
    bad_t = torch.where(row_mask[:, None], torch.randn(4, 5), garbage.flip(0))
    val = per_token_divergence(bad_s, bad_t, cfg, torch.tensor([0, 1, 2, 3]), mask=row_mask)
    val.sum().backward()
    assert torch.isfinite(val).all() and val[~row_mask].eq(0).all()
    assert torch.isfinite(logits.grad).all()


def test_empty_mask_gives_zero_loss_with_grad_path():
    s_h, t_h, s_w, t_w, mask, y = _problem()
    with torch.no_grad():
        s_h[:] = float("nan")  # all padding: garbage must not leak into the zero loss
    out = chunked_distill_loss(s_h, t_h, s_w, t_w, torch.zeros_like(mask), LossConfig(), target_ids=y)
    out.loss.backward()
    assert out.loss.item() == 0.0 and s_h.grad.abs().sum() == 0 and out.per_token.numel() == 0
    assert out.student_token_logprob.numel() == 0


def test_gradient_reaches_student_only():
    s_h, t_h, s_w, _, mask, _ = _problem()
    t_h.requires_grad_(True)
    shared_head = s_w.clone().requires_grad_(True)  # self-distillation: one head for both sides
    out = chunked_distill_loss(s_h, t_h, shared_head, shared_head, mask, LossConfig(chunk_size=3))
    out.loss.backward()
    assert t_h.grad is None and s_h.grad.abs().sum() > 0
    head = s_w.clone().requires_grad_(True)
    ref = chunked_distill_loss(
        s_h.detach().requires_grad_(True), t_h, head, s_w, mask, LossConfig(chunk_size=3)
    )
    ref.loss.backward()
    torch.testing.assert_close(shared_head.grad, head.grad)  # teacher's use of the head adds nothing


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"kind": "mse"}, "kind"),
        ({"beta": 1.5}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"clip_tau": 0.0}, "clip_tau"),
        ({"top_k": -1}, "top_k"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"kind": "sampled_token", "clip_tau": 1.0}, "clip_tau"),
        ({"kind": "sampled_token", "top_k": 5}, "top_k"),
    ],
)
def test_config_validation_names_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        LossConfig(**kwargs)


@pytest.mark.parametrize("kind", ["jsd", "forward_kl", "reverse_kl"])
def test_bf16_inputs_give_the_fp32_loss_of_their_values(kind):
    """The head product runs in fp32 inside each chunk: bf16 hidden states and heads give exactly the
    loss fp32 maths gives on the same (bf16-rounded) values; rounding the logits to bf16 first was up
    to 8e-4 off here (1e-2 at Qwen's 152k vocabulary)."""
    gen = torch.Generator().manual_seed(0)
    sh, th = (torch.randn(64, 256, generator=gen) * 0.5 for _ in range(2))
    head = torch.randn(50_000, 256, generator=gen) * 0.3
    mask = torch.ones(64, dtype=torch.bool)
    cfg = LossConfig(kind=kind)
    low = chunked_distill_loss(sh.bfloat16(), th.bfloat16(), head.bfloat16(), head.bfloat16(), mask, cfg)
    high = chunked_distill_loss(*(x.bfloat16().float() for x in (sh, th, head, head)), mask, cfg)
    assert float(low.loss) == pytest.approx(float(high.loss), abs=1e-6)


@pytest.mark.parametrize("kind,beta", [("reverse_kl", 0.5), ("jsd", 1.0), ("forward_kl", 0.5)])
def test_a_teacher_zero_under_student_mass_is_capped_with_a_finite_gradient(kind, beta):
    """With clip_tau, a teacher entry at -inf where the student has mass gave a finite loss and an
    all-NaN gradient row; now the capped entry is a constant (zero gradient) and the rest learn."""
    s = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    t[0, 1] = -math.inf
    terms = per_token_divergence(s, t, LossConfig(kind=kind, beta=beta, clip_tau=1.0))
    terms.sum().backward()
    assert torch.isfinite(terms).all() and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    unclipped = per_token_divergence(s.detach(), t, LossConfig(kind=kind, beta=beta))
    assert unclipped[0] == math.inf if kind != "forward_kl" else math.isfinite(float(unclipped[0]))


@pytest.mark.parametrize("kw", [{"clip_tau": 0.01}, {"top_k": 2}, {"clip_tau": 0.05, "top_k": 3}])
def test_the_divergence_statistic_is_the_full_unclipped_divergence(kw):
    """With clip_tau or top_k the per-token statistic (divergence_mean/p90/p99) was the loss's clipped or
    restricted terms, which can be negative; the loss keeps them, the statistic is the divergence."""
    gen = torch.Generator().manual_seed(0)
    s_h, t_h = torch.randn(7, 4, generator=gen), torch.randn(7, 4, generator=gen)
    head = torch.randn(9, 4, generator=gen)
    mask = torch.ones(7, dtype=torch.bool)
    cfg = LossConfig(kind="reverse_kl", chunk_size=3, **kw)
    out = chunked_distill_loss(s_h.requires_grad_(), t_h, head, head, mask, cfg)
    logp_s, logp_t = torch.log_softmax(s_h @ head.T, -1), torch.log_softmax(t_h @ head.T, -1)
    full = (logp_s.exp() * (logp_s - logp_t)).sum(-1)  # KL(p_S || p_T) per position, by hand
    assert torch.allclose(out.per_token, full.detach(), atol=1e-6) and bool((out.per_token >= 0).all())
    plain = chunked_distill_loss(s_h, t_h, head, head, mask, LossConfig(kind="reverse_kl", chunk_size=3))
    assert float(out.loss.detach()) < float(plain.loss.detach()) - 1e-3  # the loss: clipped / top-k terms
