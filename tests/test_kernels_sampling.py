"""kernels.sample_tokens against today's sampler (grpo.rollout filter_logits + gumbel_noise argmax) and against math.

    python -m pytest tests/test_kernels_sampling.py

The chain of references: HF's warpers ≡ filter_logits (tests/test_rollout.py) ≡ the torch reference here (same
tokens on many rows, every filter alone and combined, ties, temperatures 0.3–2, V up to 151,936) ≡ the Triton kernel
(same tokens, run in a TRITON_INTERPRET=1 subprocess on a CPU, kept small because the interpreter runs each program
in Python). A chi-square test checks the samples follow the filtered softmax computed by hand. Outputs start as −1
and the torch path uses tiny chunks, so forgotten rows and chunk seams show.
"""
import pytest
import torch

from grpo import kernels
from grpo import rollout
from grpo.kernels import _common, sampling
from test_kernels_logprobs import DEVICE, IMPLS, TRITON_HERE, run_bench, run_interpreted

FILTERS = {"none": dict(top_k=0, top_p=1.0, min_p=0.0), "top_k": dict(top_k=20, top_p=1.0, min_p=0.0),
           "top_p": dict(top_k=0, top_p=0.9, min_p=0.0), "min_p": dict(top_k=0, top_p=1.0, min_p=0.1),
           "k_then_p": dict(top_k=5, top_p=0.6, min_p=0.0), "all": dict(top_k=50, top_p=0.8, min_p=0.05)}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    def filled_empty(*shape, dtype=None, device=None):
        return torch.empty(*shape, dtype=dtype, device=device).fill_(-1 if not dtype.is_floating_point else
                                                                     float("nan"))
    monkeypatch.setattr(_common, "empty", filled_empty)
    monkeypatch.setattr(sampling, "_CHUNK_ELEMS", 50_000)  # 27 rows of V=1823 per chunk


def todays_tokens(logits, seq_ids, t, *, seed, temperature, top_k, top_p, min_p):
    """grpo/rollout.py's sampler, as its decode loop calls it."""
    logp = rollout.filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return (logp + rollout.gumbel_noise(seed, seq_ids, t, logp.shape[-1]).to(logp.device)).argmax(-1)


def random_logits(rows, V, seed, ties=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, V, generator=g) * 3
    if ties:
        x = (x * 2).round() / 2                                # ~40 distinct values: large tie groups at every cut
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("V", [1, 1823, 5000])
def test_noise_is_rollouts_bit_for_bit(impl, V):
    seq = torch.tensor([0, 1, 77, 2**33 + 5, 2**62], device=DEVICE)    # ids past 2^32 wrap as in the torch hash
    for seed, t in ((0, 0), (2**40 + 3, 1000)):
        ours = sampling.gumbel_noise(seed, seq, t, V, impl=impl)
        assert torch.equal(ours.cpu(), rollout.gumbel_noise(seed, seq.cpu(), t, V))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("name", list(FILTERS))
def test_reference_equals_todays_sampler(name, temperature, ties):
    """256 rows of V=1823: the same token as today's sampler on every row; and at T >= 1 the filter changes some
    tokens (at T = 0.3 these logits are so peaked that every draw already lies in the kept set)."""
    x = random_logits(256, 1823, seed=list(FILTERS).index(name) * 100 + int(10 * temperature) + ties, ties=ties)
    seq = torch.arange(1000, 1256, device=DEVICE)
    f = FILTERS[name]
    ours = kernels.sample_tokens(x, seq, 9, seed=5, temperature=temperature, impl="torch", **f)
    assert torch.equal(ours, todays_tokens(x, seq, 9, seed=5, temperature=temperature, **f))
    if name != "none" and temperature >= 1:
        unfiltered = kernels.sample_tokens(x, seq, 9, seed=5, temperature=temperature, impl="torch")
        assert not torch.equal(ours, unfiltered)


@pytest.mark.parametrize("name", ["none", "k_then_p", "all"])
def test_reference_equals_todays_sampler_qwen3_vocab(name):
    x = random_logits(3, 151_936, seed=3, ties=name == "all")
    seq = torch.arange(3, device=DEVICE)
    ours = kernels.sample_tokens(x, seq, 2, seed=11, temperature=0.8, impl="torch", **FILTERS[name])
    assert torch.equal(ours, todays_tokens(x, seq, 2, seed=11, temperature=0.8, **FILTERS[name]))


def _check_kernel(x, seq, **kw):
    tri = kernels.sample_tokens(x, seq, 4, seed=21, impl="triton", **kw)
    ref = kernels.sample_tokens(x, seq, 4, seed=21, impl="torch", **kw)
    assert tri.dtype == torch.int64 and torch.equal(tri, ref), (tri, ref)
    return tri


@pytest.mark.skipif(not TRITON_HERE, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", list(FILTERS))
def test_triton_equals_reference(name):
    rows = 64 if DEVICE == "cuda" else 3
    for temperature, ties in ((0.3, False), (1.7, True)):
        x = random_logits(rows, 1823, seed=len(name), ties=ties)
        _check_kernel(x, torch.arange(rows, device=DEVICE) * 7 + 2**32, temperature=temperature, **FILTERS[name])


@pytest.mark.skipif(not TRITON_HERE, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_awkward_inputs():
    """bf16 logits, a strided (non-contiguous) batch, V=1, a −0/+0 tie at the top-k cut, a Qwen3-sized row."""
    seq = torch.arange(4, device=DEVICE)
    _check_kernel(random_logits(4, 1823, seed=1, dtype=torch.bfloat16), seq, temperature=0.7, **FILTERS["all"])
    wide = random_logits(4, 2 * 1823, seed=2)
    _check_kernel(wide[:, ::2], seq, temperature=1.0, **FILTERS["k_then_p"])
    assert _check_kernel(torch.randn(4, 1, device=DEVICE), seq, temperature=1.0, **FILTERS["all"]).eq(0).all()
    # −0 and +0 are one value to the filters: top-k 1 keeps both zeros (and only them), whichever sign
    zeros = torch.tensor([[-0.0, 0.0, -1.0, -3.0]], device=DEVICE).expand(16, 4).contiguous()
    tok = _check_kernel(zeros, torch.arange(16, device=DEVICE), temperature=1.0, top_k=1)
    assert set(tok.tolist()) == {0, 1}
    _check_kernel(random_logits(1, 151_936, seed=4), seq[:1], temperature=1.0, **FILTERS["k_then_p"])


@pytest.mark.skipif(not TRITON_HERE, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_batch_invariant():
    """A sequence gets its token from its own id, whatever else is in the batch."""
    x = random_logits(3, 1823, seed=8)
    seq = torch.tensor([40, 41, 42], device=DEVICE)
    batch = kernels.sample_tokens(x, seq, 6, seed=1, top_p=0.9, impl="triton")
    alone = kernels.sample_tokens(x[1:2], seq[1:2], 6, seed=1, top_p=0.9, impl="triton")
    assert batch[1] == alone[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_position_and_seed_as_device_tensors_draw_the_int_tokens(impl):
    """The static engine passes t and seed as 0-dim device tensors (its CUDA graph replays one launch for every
    position): same tokens as Python ints, on the torch path and through the keyed Triton kernel, including a seed
    and a t·0x85EBCA77 that leave the int32 range (the device-side mod 2^32 must match the host's)."""
    rows = 8 if DEVICE == "cuda" else 3
    x = random_logits(rows, 1823, seed=5)
    seq = torch.arange(rows, device=DEVICE) + 2**32 - 2
    for seed, t in ((0, 0), (2**31 + 5, 3), (-7, 1000)):
        want = kernels.sample_tokens(x, seq, t, seed=seed, impl="torch", **FILTERS["all"])
        assert torch.equal(want, todays_tokens(x, seq, t, seed=seed, temperature=1.0, **FILTERS["all"]))
        got = kernels.sample_tokens(x, seq, torch.tensor(t, device=DEVICE), seed=torch.tensor(seed, device=DEVICE),
                                    impl=impl, **FILTERS["all"])
        assert torch.equal(got, want), (seed, t)
    if impl == "triton":
        keys = sampling._device_keys(torch.tensor(2**31 + 5), torch.tensor(3))
        assert keys.dtype == torch.int32
        assert keys.tolist() == [sampling._int32(2**31 + 5), sampling._int32(3 * 0x85EBCA77)]


CHI_IMPLS = ["torch"] + (["triton"] if TRITON_HERE and DEVICE == "cuda" else [])  # 40k interpreted rows: too slow


@pytest.mark.parametrize("impl", CHI_IMPLS)
def test_samples_follow_the_filtered_softmax(impl):
    """40,000 sequence ids on one row. Hand-computed kept set: top-k 6 → {0..5} of mass .95, renormalised
    .316 .211 .158 .126 .105 .084; top-p .8: mass before each 0, .316, .526, .684, .811 → {0,1,2,3}; min-p .45:
    p ≥ .45 · .3 = .135 → {0,1,2}, sampled ∝ .30 : .20 : .15. Chi-square, 2 degrees of freedom, fixed seed."""
    p = torch.tensor([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.03, 0.02], dtype=torch.float64)
    n = 40_000
    x = p.log().float().to(DEVICE).expand(n, 8).contiguous()
    tok = kernels.sample_tokens(x, torch.arange(n, device=DEVICE), 3, seed=7, top_k=6, top_p=0.8, min_p=0.45,
                                impl=impl)
    counts = torch.bincount(tok.cpu(), minlength=8).double()
    assert counts[3:].sum() == 0
    expected = n * p[:3] / p[:3].sum()
    chi2 = (((counts[:3] - expected) ** 2) / expected).sum().item()
    assert chi2 < 13.82  # 99.9 % quantile of chi-square with 2 degrees of freedom


def test_temperature_two_samples_the_square_root_law():
    """No filter, T = 2: P(i) = p_i^(1/2) / Σ p^(1/2). Chi-square with 4 degrees of freedom."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.07, 0.03], dtype=torch.float64)
    n = 40_000
    x = p.log().float().expand(n, 5).contiguous()
    tok = kernels.sample_tokens(x, torch.arange(n), 0, seed=2, temperature=2.0, impl="torch")
    counts = torch.bincount(tok, minlength=5).double()
    expected = n * p.sqrt() / p.sqrt().sum()
    assert (((counts - expected) ** 2) / expected).sum().item() < 18.47


def test_greedy_and_user_errors():
    x = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]])
    seq = torch.arange(2)
    assert kernels.sample_tokens(x, seq, 0, seed=0, temperature=0).tolist() == [1, 0]  # argmax, first on ties
    assert kernels.sample_tokens(x[:0], seq[:0], 0, seed=0).shape == (0,)
    with pytest.raises(ValueError, match="top_p"):
        kernels.sample_tokens(x, seq, 0, seed=0, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        kernels.sample_tokens(x, seq, 0, seed=0, top_k=-1)
    with pytest.raises(ValueError, match="temperature"):
        kernels.sample_tokens(x, seq, 0, seed=0, temperature=-1.0)
    with pytest.raises(ValueError, match=r"\(rows, V\)"):
        kernels.sample_tokens(x, seq[:1], 0, seed=0)
    if not kernels.INTERPRET:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.sample_tokens(x, seq, 0, seed=0, impl="triton")


@pytest.mark.skipif(not kernels.HAS_TRITON or TRITON_HERE, reason="triton missing, or its cases already ran here")
def test_triton_cases_in_interpreter():
    run_interpreted(__file__)


def test_bench_sampler_runs_on_cpu(monkeypatch, capsys):
    """bench/bench_kernels.py --sampler at a tiny shape: a table, then a JSON last line with every method agreeing."""
    import json
    rows = json.loads(run_bench(["--sampler", "--n", "3", "--v", "500", "--reps", "1"], monkeypatch, capsys)[-1])["sampler"]["3"]
    assert len(rows) >= 2 and all(row["same_tokens"] and row["ms"] > 0 for row in rows)
