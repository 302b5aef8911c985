"""kernels.linear_logprobs against an fp64 matmul + log_softmax, forward and backward.

    python -m pytest tests/test_kernels_linear.py

Same arrangement as tests/test_kernels_logprobs.py: torch path here; Triton path here on CUDA, otherwise in a
TRITON_INTERPRET=1 subprocess (test_triton_cases_in_interpreter). Inputs are bf16/fp32 values; the reference
sees the same values in fp64, so the only error measured is the kernel's own. Outputs are NaN-poisoned first.
"""
import importlib
import json
import math

import pytest
import torch

from grpo import kernels
from grpo.kernels import _common
from test_kernels_logprobs import DEVICE, IMPLS, TRITON_HERE, check_logp, run_bench, run_interpreted

lin = importlib.import_module("grpo.kernels.linear_logprobs")  # `kernels.linear_logprobs` is the function
# Gradients are sums over V (dhidden) or N (dW) terms of either sign, so each entry's error is judged against the
# sum of the terms' magnitudes, mag = |dz| @ |W| (resp. |dz|ᵀ @ |hidden|), computed in fp64. fp32: a K-long fp32
# matmul sum (K = 151,936 here) alone reaches ~2e-5·mag; bf16: dz and the result are rounded to bf16 (2^-8 each,
# 2^-7 under the interpreter, which truncates).
GRAD_TOL = {torch.bfloat16: 2 ** -6, torch.float32: 1e-4}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Outputs start as NaN, and the torch path uses tiny chunks so row and vocab chunk boundaries are crossed."""
    monkeypatch.setattr(_common, "empty",
                        lambda *shape, dtype=None, device=None:
                        torch.empty(*shape, dtype=dtype, device=device).fill_(float("nan")))
    monkeypatch.setattr(lin, "_CHUNK_ROWS", 16)
    monkeypatch.setattr(lin, "_CHUNK_VOCAB", 700)


def check_grad(grad, ref, mag, dtype):
    assert grad.dtype == dtype and not grad.isnan().any()
    err = (grad.double().cpu() - ref).abs()
    worst = (err / mag.clamp_min(1e-300)).max().item()
    assert (err <= GRAD_TOL[dtype] * mag).all(), f"max error / term magnitude = {worst:.3g}"


def fp64_reference(hidden, weight, targets, temperature, g):
    """logp, entropy, dhidden, dweight and the term magnitudes of both gradients, all fp64 on the CPU."""
    h = hidden.detach().double().cpu().requires_grad_()
    w = weight.detach().double().cpu().requires_grad_()
    targets, g = targets.cpu(), g.double().cpu()
    logp, entropy = lin._reference(h, w, targets, temperature, with_entropy=True)
    logp.backward(g)
    with torch.no_grad():
        p = torch.softmax(h @ w.t() / temperature, -1)                       # (N, V)
        dz = g[:, None] / temperature * (torch.nn.functional.one_hot(targets, w.shape[0]) - p)
        mag_dh, mag_dw = dz.abs() @ w.abs(), dz.abs().t() @ h.abs()          # (N, H), (V, H)
    return logp.detach(), entropy, h.grad, w.grad, mag_dh, mag_dw


def make_inputs(N, H, V, dtype, seed, weight_grad):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    # logits of std ≈ 3: peaked enough that the target's probability varies over orders of magnitude
    weight = (3 / math.sqrt(H) * torch.randn(V, H, generator=gen)).to(dtype).to(DEVICE)
    weight.requires_grad_(weight_grad)
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    g = torch.randn(N, generator=gen).to(DEVICE)                     # one grad_output shared with the reference
    return hidden, weight, targets, g


# N = 1 and 37; V = 1823 (not a multiple of BLOCK_V = 128 or of the 700-column torch chunk); H = 96 (not a multiple
# of BLOCK_H = 64); H = 5120 (Qwen3-14B) with small N; V = 151,936 (Qwen3 vocab) with N = 2.
SHAPES = [(1, 64, 1823), (37, 96, 1823), (3, 5120, 300), (2, 64, 151_936)]
# Under TRITON_INTERPRET the Qwen3 vocabulary is 2 × 1,187 interpreted tiles (~50 s in bf16, whose dot is emulated):
# it runs there in fp32 only. The vocabulary tiling is the same for every dtype (BLOCK_V = 128), bf16's arithmetic is
# checked at the other three shapes, and on CUDA every combination runs.
CASES = [pytest.param(impl, dtype, N, H, V, id=f"{N}-{H}-{V}-{name}-{impl}")
         for N, H, V in SHAPES for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")) for impl in IMPLS
         if not (impl == "triton" and kernels.INTERPRET and V == 151_936 and dtype == torch.bfloat16)]


@pytest.mark.parametrize("impl, dtype, N, H, V", CASES)
def test_matches_fp64(impl, dtype, N, H, V):
    temperature, weight_grad = (0.7, True) if N != 2 else (1.0, False)   # the big vocab once, frozen head
    hidden, weight, targets, g = make_inputs(N, H, V, dtype, N * H + V, weight_grad)
    ref_logp, ref_ent, ref_dh, ref_dw, mag_dh, mag_dw = fp64_reference(hidden, weight, targets, temperature, g)

    logp, entropy = kernels.linear_logprobs(hidden, weight, targets, temperature, with_entropy=True, impl=impl)
    logp.backward(g)
    check_logp(logp.cpu(), ref_logp, dtype)
    torch.testing.assert_close(entropy.double().cpu(), ref_ent, rtol=1e-5, atol=1e-5)
    check_grad(hidden.grad, ref_dh, mag_dh, dtype)
    if weight_grad:
        check_grad(weight.grad, ref_dw, mag_dw, dtype)
    else:
        assert weight.grad is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])  # powers of two: x/T is exact
def test_extreme_logits_with_tied_maxima(impl, dtype, temperature):
    # hidden[r] = 100·e_r and weight[v, r] = ±100 give logits[r, v] = ±1e4 exactly (exact in bf16 inputs and in
    # an fp32 accumulator); row r has k_r tied maxima. Hand-computed: logp = −log k for a maximal target,
    # −2e4/T − log k otherwise; entropy = log k.
    N, H, V, ks = 4, 64, 1823, [1, 2, 7, 1823]
    hidden = torch.zeros(N, H)
    hidden[:, :N] = 100 * torch.eye(N)
    weight = torch.zeros(V, H)
    weight[:, :N] = -100.0
    for r, k in enumerate(ks):
        weight[torch.randperm(V, generator=torch.Generator().manual_seed(r))[:k], r] = 100.0
    logits = hidden @ weight.t()                                       # (N, V), only to pick the targets
    targets = torch.tensor([int(logits[0].argmax()), int(logits[1].argmin()), int(logits[2].argmax()), 5])
    hidden = hidden.to(dtype).to(DEVICE).requires_grad_()
    weight = weight.to(dtype).to(DEVICE).requires_grad_()
    targets = targets.to(DEVICE)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], device=DEVICE)
    logp, entropy = kernels.linear_logprobs(hidden, weight, targets, temperature, with_entropy=True, impl=impl)
    logp.backward(g)

    log_k = torch.tensor([math.log(k) for k in ks], dtype=torch.float64)
    hand = -log_k - torch.tensor([0.0, 2e4 / temperature, 0.0, 0.0], dtype=torch.float64)
    check_logp(logp.cpu(), hand, dtype)
    torch.testing.assert_close(entropy.double().cpu(), log_k, rtol=0, atol=1e-5)
    _, _, ref_dh, ref_dw, mag_dh, mag_dw = fp64_reference(hidden, weight, targets, temperature, g)
    check_grad(hidden.grad, ref_dh, mag_dh, dtype)
    check_grad(weight.grad, ref_dw, mag_dw, dtype)


def test_torch_path_gradcheck_fp64(monkeypatch):
    monkeypatch.setattr(lin, "_CHUNK_ROWS", 2)
    monkeypatch.setattr(lin, "_CHUNK_VOCAB", 5)                        # 3 row chunks × 3 vocab chunks
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=gen).requires_grad_()
    weight = torch.randn(13, 4, dtype=torch.float64, generator=gen).requires_grad_()
    targets = torch.tensor([0, 4, 5, 12, 9])                          # first/last column of a chunk
    assert torch.autograd.gradcheck(lambda h, w: kernels.linear_logprobs(h, w, targets, 0.7, impl="torch"),
                                    (hidden, weight))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch(impl):
    hidden = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    logp = kernels.linear_logprobs(hidden, torch.randn(50, 16, device=DEVICE), torch.zeros(0, dtype=torch.long,
                                                                                          device=DEVICE), impl=impl)
    logp.sum().backward()
    assert logp.shape == (0,) and hidden.grad.shape == (0, 16)


def test_argument_errors():
    h, w, t = torch.randn(3, 8), torch.randn(20, 8), torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match="dtype|bfloat16"):
        kernels.linear_logprobs(h, w.bfloat16(), t)
    with pytest.raises(ValueError, match=r"\(V, H\)"):
        kernels.linear_logprobs(h, w[:, :4], t)
    with pytest.raises(ValueError, match="temperature"):
        kernels.linear_logprobs(h, w, t, -1.0)


@pytest.mark.skipif(not kernels.HAS_TRITON or TRITON_HERE, reason="triton missing, or its cases already ran here")
def test_triton_cases_in_interpreter():
    run_interpreted(__file__)


def test_bench_script_runs_on_cpu(monkeypatch, capsys):
    """bench/bench_kernels.py at a tiny shape: table, then a JSON last line whose numbers are sane."""
    lines = run_bench(["--n", "37", "--h", "32", "--v", "1000", "--reps", "1"], monkeypatch, capsys)
    assert any(line.startswith("linear N=37") for line in lines)
    result = json.loads(lines[-1])
    for kind in ("linear", "selective"):
        rows = {row["method"]: row for row in result[kind]["37"]}
        ours = rows["ours: chunked torch path"]
        assert ours["ratio_err"] <= 2e-3 and ours["fwd_ms"] > 0 and ours["fwd+bwd_ms"] > 0
