"""grpo.loss against hand-computed values, a slow pure-Python reference, and analytic gradients.

    python -m pytest tests/test_loss.py
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpo.loss import LOSSES

F64 = torch.float64
CLIP = dict(eps_low=0.2, eps_high=0.28)  # DAPO's clip-higher: asymmetric on purpose


def reference_loss(variant, logp, old, ref, adv, mask, eps_low, eps_high, beta, max_len=None, num_tokens=None):
    """Slow reference on Python floats, one token at a time, straight from the formulas in the brief."""
    clamp = lambda x: max(-20.0, min(20.0, x))
    N, T = len(logp), len(logp[0])
    rows, ratios, kls, low, high = [], [], [], 0, 0
    for i in range(N):
        row = []
        for t in range(T):
            if not mask[i][t]:
                continue
            ratio = math.exp(clamp(logp[i][t] - old[i][t]))
            a = adv[i]
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * a, clipped * a)
            low += ratio < 1 - eps_low and a < 0
            high += ratio > 1 + eps_high and a > 0
            if beta > 0:
                r = clamp(ref[i][t] - logp[i][t])
                kls.append(math.exp(r) - r - 1)
                loss += beta * kls[-1]
            ratios.append(ratio)
            row.append(loss)
        rows.append(row)
    n = sum(len(row) for row in rows)
    if variant == "grpo":
        value = sum(sum(row) / max(len(row), 1) for row in rows) / N
    elif variant == "bnpo":
        value = sum(map(sum, rows)) / max(n, 1)
    elif variant == "dr_grpo":
        value = sum(map(sum, rows)) / (N * (max_len or T))
    else:
        value = sum(map(sum, rows)) / max(num_tokens or n, 1)
    metrics = {"loss/clip_frac_low": low / max(n, 1), "loss/clip_frac_high": high / max(n, 1),
               "loss/ratio_mean": sum(ratios) / max(n, 1), "loss/tokens": float(n)}
    if beta > 0:
        metrics["actor/kl"] = sum(kls) / max(n, 1)
    return value, metrics


def random_batch(seed, N=6, T=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(N, T, generator=g, dtype=F64) * 3
    old = logp + torch.randn(N, T, generator=g, dtype=F64) * 0.4  # ratios both sides of the clip range
    ref = logp + torch.randn(N, T, generator=g, dtype=F64) * 0.5
    adv = torch.randn(N, generator=g, dtype=F64)
    adv[0] = 0.0
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[1] = 0  # a sample masked out entirely (reward None)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return logp, old, ref, adv, mask


def call(variant, logp, old, ref, adv, mask, beta=0.0, **kw):
    return LOSSES[variant](logp, old, ref, adv, mask, **{**CLIP, **kw}, beta=beta)


def test_registry_names():
    assert set(LOSSES) == {"grpo", "bnpo", "dr_grpo", "dapo"}


@pytest.mark.parametrize("variant", sorted(LOSSES))
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference(variant, beta, seed):
    logp, old, ref, adv, mask = random_batch(seed)
    kw = {"dr_grpo": dict(max_len=11), "dapo": dict(num_tokens=57)}.get(variant, {})
    loss, metrics = call(variant, logp, old, ref if beta else None, adv, mask, beta=beta, **kw)
    want, want_metrics = reference_loss(variant, logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(),
                                        mask.tolist(), beta=beta, **CLIP, **kw)
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert set(metrics) == set(want_metrics)
    for key, value in want_metrics.items():
        assert metrics[key].item() == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert 0 < metrics["loss/clip_frac_low"] + metrics["loss/clip_frac_high"]  # the case exercises clipping


def two_sequences():
    """Seq 0: ratios 1.5 and 0.5, A = +1. Seq 1: one valid token at ratio 1, A = +2, then padding whose
    old/ref log-probs are garbage (+inf, NaN) as a padded forward may leave them."""
    logp = torch.tensor([[-1.0, -1.0], [-2.0, -3.0]], dtype=F64)
    old = torch.tensor([[-1.0 - math.log(1.5), -1.0 - math.log(0.5)], [-2.0, math.inf]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False]])
    return logp, old, torch.tensor([1.0, 2.0], dtype=F64), mask


@pytest.mark.parametrize("variant, kw, want", [
    # per-token losses: seq 0 → −min(1.5, 1.28) = −1.28 and −min(0.5, 0.8) = −0.5; seq 1 → −2
    ("grpo", {}, ((-1.28 - 0.5) / 2 + -2.0) / 2),    # −1.445: mean per sequence, then over 2 sequences
    ("bnpo", {}, (-1.28 - 0.5 - 2.0) / 3),           # −1.26: 3 valid tokens
    ("dr_grpo", {"max_len": 4}, (-3.78) / (2 * 4)),  # −0.4725: B*G · T_max
    ("dapo", {"num_tokens": 10}, -3.78 / 10),        # the step holds 10 tokens in all
    ("dapo", {}, -3.78 / 3),                         # default: this call's 3 tokens
])
def test_hand_computed(variant, kw, want):
    logp, old, adv, mask = two_sequences()
    loss, m = call(variant, logp, old, None, adv, mask, **kw)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert m["loss/clip_frac_high"].item() == pytest.approx(1 / 3)  # ratio 1.5 > 1.28 with A > 0
    assert m["loss/clip_frac_low"].item() == 0.0  # ratio 0.5 < 0.8 but A > 0: the unclipped branch is active
    assert m["loss/ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.0) / 3)
    assert m["loss/tokens"].item() == 3.0


def one_token(ratio, adv):
    logp = torch.tensor([[-1.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-1.0 - math.log(ratio)]], dtype=F64)
    return logp, old, torch.tensor([adv], dtype=F64), torch.ones(1, 1, dtype=torch.bool)


@pytest.mark.parametrize("ratio, adv, eps_low, eps_high, want, low, high, grad", [
    (1.25, 1.0, 0.2, 0.2, -1.2, 0, 1, 0.0),      # symmetric 0.2 clips 1.25 ...
    (1.25, 1.0, 0.2, 0.28, -1.25, 0, 0, -1.25),  # ... clip-higher 0.28 lets it through; d/dlogp = −A·ratio
    (0.75, -1.0, 0.2, 0.28, 0.8, 1, 0, 0.0),     # −min(−0.75, −0.8): clipped from below
    (0.75, -1.0, 0.3, 0.28, 0.75, 0, 0, 0.75),   # wider eps_low: not clipped
    (1.5, -1.0, 0.2, 0.28, 1.5, 0, 0, 1.5),      # A < 0 has no upper bound: −min(−1.5, −1.28)
    (0.5, 1.0, 0.2, 0.28, -0.5, 0, 0, -0.5),     # A > 0 has no lower bound
])
def test_asymmetric_clipping(ratio, adv, eps_low, eps_high, want, low, high, grad):
    logp, old, a, mask = one_token(ratio, adv)
    loss, m = LOSSES["bnpo"](logp, old, None, a, mask, eps_low=eps_low, eps_high=eps_high, beta=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert (m["loss/clip_frac_low"].item(), m["loss/clip_frac_high"].item()) == (low, high)
    assert logp.grad.item() == pytest.approx(grad, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("log_r, want", [(math.log(2), 1 - math.log(2)), (-math.log(2), math.log(2) - 0.5)])
def test_kl_k3_hand_computed(log_r, want):
    # A = 0 and ratio 1: the loss is β·k3 alone; k3(r) = e^r − r − 1 with r = ref − logp
    logp = torch.tensor([[-1.0]], dtype=F64)
    loss, m = LOSSES["grpo"](logp, logp, logp + log_r, torch.zeros(1, dtype=F64), torch.ones(1, 1, dtype=bool),
                             **CLIP, beta=0.1)
    assert m["actor/kl"].item() == pytest.approx(want, rel=1e-12)
    assert loss.item() == pytest.approx(0.1 * want, rel=1e-12)


def test_kl_k3_is_unbiased_for_kl_under_policy_samples():
    # π = (1/2, 1/4, 1/4): the tokens [a, a, b, c] are an exact "sample" of π, so the mean k3 over them is
    # E_π[k3] = Σ π (ρ − log ρ − 1), ρ = π_ref/π, = KL(π ‖ π_ref) because Σ π ρ = Σ π_ref = 1
    pi, pi_ref = [0.5, 0.25, 0.25], [0.2, 0.5, 0.3]
    tokens = [0, 0, 1, 2]
    logp = torch.tensor([[math.log(pi[k]) for k in tokens]], dtype=F64)
    ref = torch.tensor([[math.log(pi_ref[k]) for k in tokens]], dtype=F64)
    _, m = LOSSES["bnpo"](logp, logp, ref, torch.zeros(1, dtype=F64), torch.ones(1, 4, dtype=bool), **CLIP, beta=1.0)
    kl = sum(p * math.log(p / q) for p, q in zip(pi, pi_ref))
    assert m["actor/kl"].item() == pytest.approx(kl, rel=1e-12)


@given(st.lists(st.tuples(st.floats(-15, 0), st.floats(-15, 0)), min_size=1, max_size=8))
def test_kl_k3_nonnegative_and_zero_at_reference(pairs):
    logp = torch.tensor([[p for p, _ in pairs]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[q for _, q in pairs]], dtype=F64)
    mask, zero = torch.ones_like(ref, dtype=torch.bool), torch.zeros(1, dtype=F64)
    loss, m = LOSSES["bnpo"](logp, logp.detach(), ref, zero, mask, **CLIP, beta=1.0)
    assert m["actor/kl"].item() >= 0 and loss.item() >= 0
    loss, m = LOSSES["bnpo"](logp, logp.detach(), logp.detach(), zero, mask, **CLIP, beta=1.0)
    loss.backward()
    assert m["actor/kl"].item() == 0.0 and loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))  # k3'(0) = 0: no pull at the reference


@pytest.mark.parametrize("variant", sorted(LOSSES))
def test_gradient_at_ratio_one_is_minus_advantage_times_grad_logp(variant):
    # logp = log_softmax(z)[y]: ∂logp/∂z = onehot(y) − softmax(z). At ratio 1 nothing is clipped, so
    # ∂loss/∂z = −Σ w·A·(onehot − softmax) with w the variant's per-token normaliser
    N, T, V = 4, 5, 7
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, T, V, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(V, (N, T), generator=g)
    adv = torch.tensor([1.5, -0.5, 0.0, -2.0], dtype=F64)
    lengths = torch.tensor([5, 2, 3, 1])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (N, T)
    logp = torch.log_softmax(z, -1).gather(-1, y[..., None])[..., 0]  # (N, T)
    w = {"grpo": 1 / (N * lengths[:, None].to(F64)),
         "bnpo": torch.tensor(1 / 11, dtype=F64),
         "dr_grpo": torch.tensor(1 / (N * 8), dtype=F64),
         "dapo": torch.tensor(1 / 30, dtype=F64)}[variant]
    kw = {"dr_grpo": dict(max_len=8), "dapo": dict(num_tokens=30)}.get(variant, {})
    loss, _ = call(variant, logp, logp.detach(), None, adv, mask, **kw)
    loss.backward()
    weight = torch.where(mask, -w * adv[:, None], 0.0)  # (N, T)
    dlogp_dz = torch.nn.functional.one_hot(y, V).to(F64) - torch.softmax(z.detach(), -1)  # (N, T, V)
    torch.testing.assert_close(z.grad, weight[..., None] * dlogp_dz, rtol=1e-12, atol=1e-14)
    assert loss.item() == pytest.approx(weight.sum().item(), rel=1e-12)  # and the value is −Σ w·A


@pytest.mark.parametrize("variant", sorted(LOSSES))
def test_garbage_at_masked_positions_is_harmless(variant):
    logp, old, ref, adv, mask = random_batch(3)
    clean = logp.clone().requires_grad_(True)
    dirty = torch.where(mask, logp, math.nan).requires_grad_(True)  # padding logp: NaN junk
    junk = torch.tensor([math.inf, -math.inf, math.nan], dtype=F64).repeat(mask.numel())[:mask.numel()]
    junk = junk.view_as(mask)  # what a padded forward or a cached old_logp may hold at padding
    old_dirty, ref_dirty = torch.where(mask, old, junk), torch.where(mask, ref, junk.flip(0))
    kw = {"dr_grpo": dict(max_len=9)}.get(variant, {})
    loss_c, m_c = call(variant, clean, old, ref, adv, mask, beta=0.1, **kw)
    loss_d, m_d = call(variant, dirty, old_dirty, ref_dirty, adv, mask, beta=0.1, **kw)
    loss_c.backward()
    loss_d.backward()
    assert torch.isfinite(loss_d) and torch.isfinite(dirty.grad).all()
    assert loss_d.item() == loss_c.item()
    assert torch.equal(dirty.grad, clean.grad)
    assert torch.equal(dirty.grad[~mask], torch.zeros_like(dirty.grad[~mask]))
    assert all(m_d[k].item() == m_c[k].item() for k in m_c)


def test_log_ratio_is_clamped_before_exp():
    # a stale old_logp 100 nats below logp would give exp(100) ≈ 2.7e43 (inf in fp32); clamped it is e^20
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)  # fp32 on purpose
    old = torch.tensor([[-100.0, -1.0]])
    loss, m = LOSSES["bnpo"](logp, old, None, torch.tensor([-1.0]), torch.ones(1, 2, dtype=bool), **CLIP, beta=0.0)
    loss.backward()
    assert m["loss/ratio_mean"].item() == pytest.approx((math.exp(20) + 1) / 2, rel=1e-6)
    # A = −1: −min(−r·1, −clip(r)) = r per token, so the loss is the mean ratio (e^20 + 1) / 2
    assert loss.item() == pytest.approx((math.exp(20) + 1) / 2, rel=1e-6)
    # past the clamp the log-ratio is constant: gradient 0, not exp(100); the other token: −A·ratio/2 = 1/2
    assert logp.grad.tolist() == [[0.0, 0.5]]


def test_metrics_are_detached_scalars_and_kl_only_with_beta():
    logp, old, ref, adv, mask = random_batch(4)
    logp.requires_grad_(True)
    _, m0 = call("dapo", logp, old, None, adv, mask, beta=0.0)
    _, m1 = call("dapo", logp, old, ref, adv, mask, beta=0.1)
    assert set(m0) == {"loss/clip_frac_low", "loss/clip_frac_high", "loss/ratio_mean", "loss/tokens"}
    assert set(m1) == set(m0) | {"actor/kl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in m1.values())


def test_user_errors_name_the_fix():
    logp, old, ref, adv, mask = random_batch(5)
    with pytest.raises(ValueError, match="ref_logp"):
        call("grpo", logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_len"):
        call("dr_grpo", logp, old, None, adv, mask, max_len=3)


# ---- gradient accumulation: k micro-batches versus one big batch ----

def accumulation_setup():
    """A shared weight W so micro-batch gradients add up in W.grad. Sequence lengths are very uneven, so the
    three micro-batches of 2 sequences hold 15, 3 and 11 tokens."""
    N, T, H, V = 6, 8, 3, 5
    g = torch.Generator().manual_seed(7)
    W = torch.randn(H, V, generator=g, dtype=F64, requires_grad=True)
    x = torch.randn(N, T, H, generator=g, dtype=F64)
    y = torch.randint(V, (N, T), generator=g)
    lengths = torch.tensor([8, 7, 1, 2, 8, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (N, T)
    logp0 = torch.log_softmax(x @ W, -1).gather(-1, y[..., None])[..., 0].detach()
    old = logp0 + torch.randn(N, T, generator=g, dtype=F64) * 0.3  # μ > 1: some ratios clipped
    ref = logp0 + torch.randn(N, T, generator=g, dtype=F64) * 0.3
    adv = torch.randn(N, generator=g, dtype=F64)

    def grad(variant, rows, scale=1.0, **kw):
        W.grad = None
        logp = torch.log_softmax(x[rows] @ W, -1).gather(-1, y[rows][..., None])[..., 0]  # (n, T)
        loss, _ = LOSSES[variant](logp, old[rows], ref[rows], adv[rows], mask[rows], **CLIP, beta=0.05, **kw)
        (loss * scale).backward()
        return loss.detach(), W.grad.clone()

    micro = [slice(0, 2), slice(2, 4), slice(4, 6)]
    return grad, micro, int(mask.sum())


def accumulate(grad, micro, variant, scale, **kw):
    parts = [grad(variant, rows, scale, **kw) for rows in micro]
    return sum(l * scale for l, _ in parts), sum(g for _, g in parts)


def test_dapo_sum_of_micro_batches_equals_full_batch():
    grad, micro, total = accumulation_setup()
    full_loss, full_grad = grad("dapo", slice(None))
    loss, g = accumulate(grad, micro, "dapo", 1.0, num_tokens=total)
    torch.testing.assert_close(g, full_grad, rtol=1e-12, atol=1e-14)
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
    # what TRL did before its PR #6024: each micro-batch normalised by its own tokens, then averaged
    _, local = accumulate(grad, micro, "dapo", 1 / 3)
    assert not torch.allclose(local, full_grad, rtol=1e-3)


@pytest.mark.parametrize("variant, kw", [("dr_grpo", {"max_len": 8}), ("grpo", {})])
def test_sequence_normalised_losses_average_exactly_over_equal_micro_batches(variant, kw):
    # dr_grpo's B*G·T_max and grpo's 1/(B*G) per sequence do not depend on how many tokens a micro-batch
    # holds, so averaging k equal-sized micro-batches is exact for them too
    grad, micro, _ = accumulation_setup()
    full_loss, full_grad = grad(variant, slice(None), **kw)
    loss, g = accumulate(grad, micro, variant, 1 / 3, **kw)
    torch.testing.assert_close(g, full_grad, rtol=1e-12, atol=1e-14)
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-12)


def test_bnpo_and_grpo_weigh_tokens_by_their_batch_or_sequence_not_the_step():
    grad, micro, total = accumulation_setup()
    _, dapo_full = grad("dapo", slice(None))
    # bnpo: micro-batches of 15, 3 and 11 tokens; averaging gives each token of the 3-token micro-batch
    # weight 1/(3·3) instead of 1/29, so accumulation is not the big batch — the reason dapo exists
    _, bnpo_full = grad("bnpo", slice(None))
    torch.testing.assert_close(bnpo_full, dapo_full, rtol=1e-12, atol=1e-14)  # one big batch: same weights
    for scale in (1.0, 1 / 3):
        _, g = accumulate(grad, micro, "bnpo", scale)
        assert not torch.allclose(g, bnpo_full, rtol=1e-3)
    # grpo accumulates exactly (above) but weighs a token by 1/(B*G·|o_i|): not the per-token 1/29 of dapo
    _, grpo_full = grad("grpo", slice(None))
    assert not torch.allclose(grpo_full, dapo_full, rtol=1e-3)


def test_bnpo_accumulates_exactly_when_micro_batches_hold_equal_tokens():
    # the control for the test above: it is the unequal token counts that break bnpo
    grad, _, _ = accumulation_setup()
    _, full = grad("bnpo", [0, 4])  # two sequences of 8 tokens
    _, g = accumulate(grad, [[0], [4]], "bnpo", 1 / 2)  # micro-batches of 8 and 8 tokens
    torch.testing.assert_close(g, full, rtol=1e-12, atol=1e-14)


def test_truncated_importance_weights_scale_the_surrogate_not_the_kl():
    """A hand-computed case. Trainer = old policy (ratio 1), engine log-probs differ: w = min(π_old/π_engine, 3).
    seq 0 (A=+1, 2 tokens): engine p .25, .5 vs ours .5, .25 → w 2, 0.5; its pad holds NaN (must not leak).
    seq 1 (A=−2, 3 tokens): engine p .01 vs ours .1 → 10 capped to 3; then w 1, 1. ref differs at seq 1 token 0
    (p .2 vs .1): KL_k3 = 2 − ln 2 − 1, added unweighted. bnpo = Σ / 5 tokens."""
    from grpo.loss import logp_gap, truncated_is_weights
    ln = math.log
    logp = torch.tensor([[ln(.5), ln(.25), 0.0], [ln(.1), ln(.8), ln(.9)]], dtype=F64, requires_grad=True)
    sampler = torch.tensor([[ln(.25), ln(.5), float("nan")], [ln(.01), ln(.8), ln(.9)]], dtype=F64)
    ref = torch.tensor([[ln(.5), ln(.25), 0.0], [ln(.2), ln(.8), ln(.9)]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0], dtype=F64)
    w = truncated_is_weights(logp, sampler, mask, cap=3.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 0.0], [3.0, 1.0, 1.0]], dtype=F64), rtol=1e-12, atol=0)
    assert not w.requires_grad  # a weight, not a path for the gradient
    kl = 1 - ln(2)
    loss, m = LOSSES["bnpo"](logp, logp.detach(), ref, adv, mask, **CLIP, beta=0.1, token_weights=w)
    # surrogate −w·A per token: −2, −0.5 | +6, +2, +2 → 7.5; + 0.1·KL
    assert loss.item() == pytest.approx((7.5 + 0.1 * kl) / 5, rel=1e-12)
    loss.backward()
    # d/dlogp of −w·A·ratio at ratio 1 is −w·A; KL_k3' = −(e^r − 1) = −1 at seq 1 token 0
    expect = torch.tensor([[-2.0, -0.5, 0.0], [6.0 - 0.1, 2.0, 2.0]], dtype=F64) / 5
    torch.testing.assert_close(logp.grad, expect, rtol=1e-12, atol=1e-15)
    gap = logp_gap(logp, sampler, mask)
    assert gap["rollout/logp_gap_mean"].item() == pytest.approx((2 * ln(2) + ln(10)) / 5, rel=1e-12)
    assert gap["rollout/logp_gap_max"].item() == pytest.approx(ln(10), rel=1e-12)
    # every variant takes the keyword; weights of 1 change nothing
    for name, fn in LOSSES.items():
        plain, _ = fn(logp, logp.detach() + 0.1, ref, adv, mask, **CLIP, beta=0.1)
        ones, _ = fn(logp, logp.detach() + 0.1, ref, adv, mask, **CLIP, beta=0.1, token_weights=torch.ones_like(ref))
        assert ones.item() == plain.item(), name
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(logp, sampler, mask, cap=0)


@pytest.mark.parametrize("variant, kw", [("dapo", {}), ("dr_grpo", {"max_len": 8}), ("grpo", {})])
@pytest.mark.parametrize("world", [1, 3])
def test_combine_weights_give_the_full_batch_on_any_world(variant, kw, world):
    """What the loop does with `combine`: each rank backprops Σ_c combine.grad · loss_c, DDP averages the ranks'
    gradients, and the reported loss adds combine.report · loss_c, then sums or averages over ranks. Both must equal
    one pass over the whole batch (here: 3 micro-batches of 2 sequences, split over `world` ranks)."""
    from grpo.loss import combine
    grad, micro, total = accumulation_setup()
    full_loss, full_grad = grad(variant, slice(None), **kw)
    per_rank = {1: [micro], 3: [[m] for m in micro]}[world]  # world 3: one micro-batch per rank
    if variant == "dapo":
        kw = {"num_tokens": total}
    rank_grads, rank_losses = [], []
    for chunks in per_rank:
        n = sum(c.stop - c.start for c in chunks)
        g_sum, l_sum = 0.0, 0.0
        for c in chunks:
            w = combine(variant, (c.stop - c.start) / n, world)
            loss, g = grad(variant, c, w.grad, **kw)
            g_sum, l_sum = g_sum + g, l_sum + loss * w.report
        rank_grads.append(g_sum)
        rank_losses.append(l_sum)
    torch.testing.assert_close(sum(rank_grads) / world, full_grad, rtol=1e-12, atol=1e-14)  # DDP: mean of ranks
    ranks = combine(variant, 1.0, world).ranks
    reported = sum(rank_losses) if ranks == "sum" else sum(rank_losses) / world
    assert reported.item() == pytest.approx(full_loss.item(), rel=1e-12)


def test_every_loss_declares_its_normaliser():
    from grpo.loss import GLOBAL_NORMALISER
    assert set(GLOBAL_NORMALISER) == set(LOSSES) and GLOBAL_NORMALISER["dapo"] and not GLOBAL_NORMALISER["grpo"]
