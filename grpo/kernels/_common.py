"""What both log-prob kernels share: the optional triton import, the dispatch rule, the online log-sum-exp.

    python -m pytest tests/test_kernels_logprobs.py tests/test_kernels_linear.py

Numerics. A row is summarised by three fp32 numbers kept relative to its running max m:
    s = Σ exp(x − m)            → lse = m + log s
    t = Σ exp(x − m)·(x − m)    → entropy = log s − t / s
Keeping t relative to m (instead of Σ p·x) avoids cancelling two ~1e4 numbers when logits are extreme, and
log-probs are formed as (x_t − m) − log s for the same reason: the forward saves (m, log s), not lse = m + log s,
whose fp32 rounding at |m| ≈ 1e4 (5e-4) would exceed the fp32 tolerance on its own.
When the max moves from m to m', the old terms scale by α = exp(m − m'):
    s' = α·s + Σ exp(x − m'),   t' = α·(t + (m − m')·s) + Σ exp(x − m')·(x − m').
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships only in the dev/gpu extras; the torch paths need none of it
    triton = tl = None

HAS_TRITON = triton is not None
# triton reads TRITON_INTERPRET when @triton.jit decorates a function, i.e. when this package is first imported;
# setting it later changes nothing, so tests that want the interpreter start a fresh process with it set.
INTERPRET = HAS_TRITON and bool(triton.knobs.runtime.interpret)
TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Which backend runs a kernel — not which log-prob head path (grpo/logprobs.py IMPLS: fused | selective | reference).
IMPLS = ("auto", "triton", "torch")

# Every output buffer comes from here so tests can swap in a NaN-filled allocator ("poison") and catch rows or
# columns a kernel forgot to write.
empty = torch.empty


def pick_impl(impl: str, x: torch.Tensor) -> str:
    """'auto' → triton for CUDA tensors (or any tensor under TRITON_INTERPRET=1) of a dtype the kernels take."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: pick one of {IMPLS}")
    triton_ok = HAS_TRITON and (x.is_cuda or INTERPRET) and x.dtype in TRITON_DTYPES
    if impl == "auto":
        return "triton" if triton_ok else "torch"
    if impl == "triton" and not triton_ok:
        raise RuntimeError(f"impl='triton' needs the triton package (pip install -e '.[dev]'), a dtype in "
                           f"{TRITON_DTYPES} (got {x.dtype}) and a CUDA tensor, or TRITON_INTERPRET=1 set before "
                           f"`import grpo.kernels` for CPU tensors")
    return impl


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 (so gradcheck sees fp64 all the way)."""
    return torch.promote_types(dtype, torch.float32)


def lse_init(n: int, dtype: torch.dtype, device) -> tuple:
    """(m, s, t) of an empty row: max −inf, sums 0."""
    return (torch.full((n,), float("-inf"), dtype=dtype, device=device),
            torch.zeros(n, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device))


def lse_update(m, s, t, x, with_entropy: bool):
    """Torch twin of `online_lse_update`: fold a chunk x (n, v) of already-scaled logits into (m, s, t) (n,)."""
    m_new = torch.maximum(m, x.amax(-1))                                   # (n,)
    m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)               # all −inf so far: keep sums at 0, not NaN
    alpha = torch.exp(m - m_safe)                                          # (n,)
    d = x - m_safe[:, None]                                                # (n, v)
    e = torch.exp(d)                                                       # (n, v)
    s_new = s * alpha + e.sum(-1)
    if with_entropy:
        shift = torch.where(s > 0, m - m_safe, 0.0) * s                    # (m − m')·s, 0 for an empty row
        t = alpha * (t + shift) + (e * torch.where(e > 0, d, 0.0)).sum(-1)  # 0·(−inf) of masked entries → 0
    return m_new, s_new, t


def lse_finish(m, s, t, x_t, with_entropy: bool):
    """Returns (logp, m, log s, entropy | None) from the running sums and the target's scaled logit x_t."""
    logs = torch.log(s)
    logp = (x_t - m) - logs
    entropy = (logs - t / s) if with_entropy else None
    return logp, m, logs, entropy


if HAS_TRITON:
    @triton.jit
    def online_lse_update(m, s, t, x, WITH_ENTROPY: tl.constexpr):
        """Fold a tile x (BLOCK_N, BLOCK_V) fp32 (masked entries −inf) into the per-row (m, s, t) (BLOCK_N,)."""
        m_new = tl.maximum(m, tl.max(x, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        d = x - m_safe[:, None]
        e = tl.exp(d)
        s_new = s * alpha + tl.sum(e, axis=1)
        if WITH_ENTROPY:
            shift = tl.where(s > 0, m - m_safe, 0.0) * s
            t = alpha * (t + shift) + tl.sum(e * tl.where(e > 0, d, 0.0), axis=1)
        return m_new, s_new, t
