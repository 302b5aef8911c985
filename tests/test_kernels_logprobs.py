"""kernels.selective_logprobs against an fp64 log_softmax, forward and backward.

    python -m pytest tests/test_kernels_logprobs.py

The torch path runs in this process. The Triton path runs in this process on a CUDA machine; on a CPU,
test_triton_cases_in_interpreter reruns this file's `triton` cases in a subprocess with TRITON_INTERPRET=1 (one
subprocess for the three kernel test files, run_interpreted) — triton reads that variable when the kernels are
decorated (at `import grpo.kernels`), so it cannot be switched on inside a pytest process that has already imported
them.

Tolerances: log-probs feed the PPO ratio exp(logp − old_logp), so each token must satisfy
|exp(logp − logp_fp64) − 1| ≤ 2e-3 for bf16 inputs and ≤ 1e-5 for fp32 (plus fp32's own rounding of the
output value, 2^-22·|logp|, which matters only at logits ≈ 1e4). Every output buffer is NaN-poisoned first.
"""
import functools
import importlib
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

import pytest
import torch

from grpo import kernels
from grpo.kernels import _common

if kernels.HAS_TRITON:
    import triton
    import triton.language as tl
logprobs = importlib.import_module("grpo.kernels.selective_logprobs")  # the module; `kernels.selective_logprobs` is the function

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_HERE = kernels.HAS_TRITON and (DEVICE == "cuda" or kernels.INTERPRET)
IMPLS = ["torch"] + (["triton"] if TRITON_HERE else [])
RATIO_TOL = {torch.bfloat16: 2e-3, torch.float32: 1e-5}
GRAD_RTOL = {torch.bfloat16: 2 ** -7, torch.float32: 1e-5}  # bf16: one ulp of the dlogits dtype (truncation ok)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Outputs start as NaN, and the torch path uses tiny chunks so chunk boundaries are crossed."""
    def nan_empty(*shape, dtype=None, device=None):
        return torch.empty(*shape, dtype=dtype, device=device).fill_(float("nan"))
    monkeypatch.setattr(_common, "empty", nan_empty)
    monkeypatch.setattr(logprobs, "_CHUNK_ELEMS", 5000)


def check_logp(logp, ref, dtype):
    assert logp.dtype == torch.float32 and not logp.isnan().any()
    err = (logp.double() - ref).abs()
    bound = RATIO_TOL[dtype] + 2 ** -22 * ref.abs()
    assert (torch.expm1(err) <= bound).all(), f"max |exp(Δ) − 1| = {torch.expm1(err).max():.3g}"


def check_grad(grad, ref, dtype):
    assert grad.dtype == dtype and not grad.isnan().any()
    torch.testing.assert_close(grad.double(), ref, rtol=GRAD_RTOL[dtype], atol=1e-7 * ref.abs().max().item())


def fp64_reference(logits, targets, temperature, g):
    x = logits.detach().double().requires_grad_()
    logp, entropy = logprobs._reference(x, targets, temperature, with_entropy=True)
    logp.backward(g.double())
    return logp.detach(), entropy, x.grad


SHAPES = [(1, 1823), (37, 1823), (5, 4097), (2, 151_936)]  # N = 1, V not a block multiple, V crossing a block


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("N,V", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_fp64(impl, dtype, N, V, temperature):
    gen = torch.Generator().manual_seed(N * V)
    logits = (4 * torch.randn(N, V, generator=gen)).to(dtype).to(DEVICE).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    g = torch.randn(N, generator=gen).to(DEVICE)                     # one grad_output shared with the reference
    ref_logp, ref_ent, ref_grad = fp64_reference(logits, targets, temperature, g)

    logp, entropy = kernels.selective_logprobs(logits, targets, temperature, with_entropy=True, impl=impl)
    logp.backward(g)
    check_logp(logp, ref_logp, dtype)
    torch.testing.assert_close(entropy.double(), ref_ent, rtol=1e-5, atol=1e-5)
    assert not entropy.requires_grad
    check_grad(logits.grad, ref_grad, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])  # powers of two: x/T is exact, so fp64 and fp32 see one input
def test_extreme_logits_with_tied_maxima(impl, dtype, temperature):
    # Row r: k_r entries at +1e4, the rest at −1e4 (bf16: ±9984). Hand-computed: a maximal target has
    # logp = −log k, any other −2e4/T − log k; entropy = log k; dlogits = g/T·(onehot − 1/k on the maxima).
    V, ks = 1823, [1, 2, 7, 1823]
    logits = torch.full((4, V), -1e4)
    for r, k in enumerate(ks):
        logits[r, torch.randperm(V, generator=torch.Generator().manual_seed(r))[:k]] = 1e4
    targets = torch.tensor([int(logits[0].argmax()), int(logits[1].argmin()), int(logits[2].argmax()), 5])
    logits = logits.to(dtype).to(DEVICE).requires_grad_()
    targets = targets.to(DEVICE)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], device=DEVICE)
    logp, entropy = kernels.selective_logprobs(logits, targets, temperature, with_entropy=True, impl=impl)
    logp.backward(g)

    log_k = torch.tensor([math.log(k) for k in ks], dtype=torch.float64)
    gap = 2 * torch.tensor(1e4, dtype=dtype).item() / temperature
    hand = -log_k - torch.tensor([0.0, gap, 0.0, 0.0], dtype=torch.float64)
    check_logp(logp.cpu(), hand, dtype)
    torch.testing.assert_close(entropy.double().cpu(), log_k, rtol=0, atol=1e-5)
    _, _, ref_grad = fp64_reference(logits, targets, temperature, g)
    check_grad(logits.grad, ref_grad, dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_backward_reuses_logits_buffer(impl):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 300, generator=gen).to(DEVICE).requires_grad_()
    targets = torch.randint(0, 300, (6,), generator=gen).to(DEVICE)
    g = torch.randn(6, generator=gen).to(DEVICE)
    logits = base * 3                                                  # intermediate nothing else reads afterwards
    kernels.selective_logprobs(logits, targets, 0.9, impl=impl, inplace_backward=True).backward(g)
    _, _, ref_grad = fp64_reference(base * 3, targets, 0.9, g)
    torch.testing.assert_close(base.grad.double(), 3 * ref_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits.detach().double(), ref_grad, rtol=1e-5, atol=1e-7)  # buffer now holds dlogits


def test_torch_path_gradcheck_fp64(monkeypatch):
    monkeypatch.setattr(logprobs, "_CHUNK_ELEMS", 26)                  # 2-row chunks
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 13, dtype=torch.float64, generator=gen).requires_grad_()
    targets = torch.randint(0, 13, (5,), generator=gen)
    assert torch.autograd.gradcheck(lambda x: kernels.selective_logprobs(x, targets, 0.7, impl="torch"), (logits,))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch(impl):
    logits = torch.randn(0, 50, device=DEVICE, requires_grad=True)
    logp = kernels.selective_logprobs(logits, torch.zeros(0, dtype=torch.long, device=DEVICE), impl=impl)
    logp.sum().backward()
    assert logp.shape == (0,) and logits.grad.shape == (0, 50)


def test_dispatch_and_argument_errors():
    x = torch.randn(3, 10)
    t = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="impl"):
        kernels.selective_logprobs(x, t, impl="cuda")
    with pytest.raises(ValueError, match="temperature"):
        kernels.selective_logprobs(x, t, 0.0)
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        kernels.selective_logprobs(x, t[:2])
    assert _common.pick_impl("auto", x.double()) == "torch"           # the kernels take bf16/fp16/fp32 only
    if not kernels.INTERPRET:
        assert _common.pick_impl("auto", x) == "torch"
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.selective_logprobs(x, t, impl="triton")


@pytest.mark.skipif(not kernels.HAS_TRITON or TRITON_HERE, reason="triton missing, or its cases already ran here")
def test_triton_cases_in_interpreter():
    run_interpreted(__file__)


def run_bench(argv: list[str], monkeypatch, capsys) -> list[str]:
    """bench/bench_kernels.py with these flags in this process (no second interpreter start): its stdout lines."""
    import runpy
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_kernels.py"
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out.strip().splitlines()


INTERPRETED = ("test_kernels_logprobs.py", "test_kernels_linear.py", "test_kernels_sampling.py")


_BACKGROUND: dict = {}  # the one interpreter run: its Popen, JUnit XML path and output file


def _loop_kernel(x_ptr, n):
    for i in range(n):  # a loop bound taken from a scalar argument, as the kernels' loops are
        tl.store(x_ptr + i, i)


@functools.cache
def interpreter_problem() -> str | None:
    """Why this triton's interpreter cannot run our kernels here, or None. Known case: triton 3.6's interpreter takes
    int() of a 1-element array for a loop bound, which numpy >= 2.4 refuses (later tritons squeeze first). The
    kernels still compile for sm_90 / sm_120 (tests/test_kernels_compile.py) and run on a GPU."""
    if not kernels.HAS_TRITON:
        return "triton is not installed"
    from triton.runtime.interpreter import InterpretedFunction
    x = torch.zeros(3, dtype=torch.int32)
    try:
        InterpretedFunction(_loop_kernel)[(1,)](x, 3)
    except Exception as e:  # noqa: BLE001 — whatever it is, the interpreter cannot run a loop
        import numpy
        return (f"triton {triton.__version__}'s interpreter fails on a scalar loop bound under numpy "
                f"{numpy.__version__} ({type(e).__name__}: {e})")
    return None if x.tolist() == [0, 1, 2] else f"triton's interpreter wrote {x.tolist()} for [0, 1, 2]"


def start_interpreted() -> None:
    """Start one TRITON_INTERPRET=1 pytest process for the `triton` cases of every kernel test file (one interpreter
    start instead of three). conftest.py calls this as soon as the tests are selected, so on a 2-core box it runs
    beside the rest of the suite (whose tests use one thread each) instead of after it; a second call does nothing."""
    if _BACKGROUND or not kernels.HAS_TRITON or TRITON_HERE or interpreter_problem():
        return
    here = pathlib.Path(__file__).resolve().parent
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="triton-interpreted-"))
    log = open(tmp / "output.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--junitxml={tmp / 'junit.xml'}", *(str(here / f) for f in INTERPRETED),
                             "-k", "triton and not interpreter"],
                            env=dict(os.environ, TRITON_INTERPRET="1"), stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    _BACKGROUND.update(proc=proc, tmp=tmp, log=log)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the pytest that started it dies (a CI timeout, kill -TERM), which
    pytest_sessionfinish never sees; otherwise it would run on, reparented to init."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_interpreted() -> None:
    """End the background run if no test waited for it (an interrupted session), and remove its files."""
    if _BACKGROUND:
        if _BACKGROUND["proc"].poll() is None:
            _BACKGROUND["proc"].kill()
            _BACKGROUND["proc"].wait()
        _BACKGROUND["log"].close()
        shutil.rmtree(_BACKGROUND["tmp"], ignore_errors=True)


@functools.cache
def _interpreted_outcomes() -> dict[str, dict[str, str]]:
    """{file name: {test id: outcome}} of the interpreter run, read from its JUnit XML (started here if conftest did
    not)."""
    start_interpreted()
    proc, tmp, log = _BACKGROUND["proc"], _BACKGROUND["tmp"], _BACKGROUND["log"]
    rc = proc.wait()
    log.seek(0)
    assert rc in (0, 1), log.read()[-8000:]  # 1: some case failed, reported per file below
    out: dict[str, dict[str, str]] = {f: {} for f in INTERPRETED}
    for case in ElementTree.parse(tmp / "junit.xml").iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = next((c.get("message", "") + "\n" + (c.text or "")[-3000:] for c in case
                       if c.tag in ("failure", "error")), "")
        out[case.get("classname").rsplit(".", 1)[-1] + ".py"][case.get("name")] = outcome + detail
    return out


def run_interpreted(path):
    """The `triton` cases of the test file at `path`, run under TRITON_INTERPRET=1: all passed, none skipped."""
    if interpreter_problem():
        pytest.skip(interpreter_problem())
    outcomes = _interpreted_outcomes()[pathlib.Path(path).name]
    assert outcomes, "no triton case ran"
    bad = {name: o for name, o in outcomes.items() if o != "passed"}
    assert not bad, "\n".join(f"{name}: {o}" for name, o in bad.items())
