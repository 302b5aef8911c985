"""Selective log-softmax: log p(target) from materialised logits without an (N, V) log-softmax.

    python -m pytest tests/test_kernels_logprobs.py          # torch path here, Triton path in an interpreter subprocess
    python bench/bench_kernels.py                            # timing and GB/s on a GPU

Memory traffic per call (V·N logits of b bytes each):
  _reference   read NVb, write 4NV (fp32 copy), read+write 4NV (log_softmax), read 4NV (gather)  ≈ 13 NV bytes for bf16
  forward      read NVb once, write 12N (logp, m, log s)                                          ≈  2 NV bytes for bf16
  backward     read NVb once, write NVb (dlogits; into the logits buffer with inplace_backward)    ≈  4 NV bytes for bf16
"""
import torch

from . import _common
from ._common import HAS_TRITON, compute_dtype, lse_finish, lse_init, lse_update, pick_impl

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import online_lse_update

# Rows × vocab elements per chunk of the torch path: 4M fp32 = 16 MB of temporaries, whatever N is.
_CHUNK_ELEMS = 1 << 22
# Triton: one row per program streams its V logits in BLOCK_V slices; memory-bound, so the block only has to be
# wide enough for 16-byte vector loads with few loop trips. 4096 fp32 over 8 warps = 16 values per thread.
_BLOCK_N, _BLOCK_V, _NUM_WARPS = 1, 4096, 8


# ----------------------------------------------------------------------------------------------- Triton kernels
if HAS_TRITON:
    @triton.jit
    def _selective_logprobs_fwd_kernel(logits_ptr, stride_row, targets_ptr, logp_ptr, m_ptr, logs_ptr, ent_ptr,
                                       N, V, inv_temp,
                                       WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)                    # (BLOCK_N,)
        row_ok = rows < N
        row_ptr = logits_ptr + rows.to(tl.int64) * stride_row                       # (BLOCK_N,) int64: N·V > 2^31
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        t = tl.zeros((BLOCK_N,), tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)                                        # (BLOCK_V,)
            ok = row_ok[:, None] & (cols < V)[None, :]
            x = tl.load(row_ptr[:, None] + cols[None, :], mask=ok, other=float("-inf"))
            x = x.to(tl.float32) * inv_temp                                          # (BLOCK_N, BLOCK_V)
            m, s, t = online_lse_update(m, s, t, x, WITH_ENTROPY)
        tgt = tl.load(targets_ptr + rows, mask=row_ok, other=0)
        x_t = tl.load(row_ptr + tgt, mask=row_ok, other=0.0).to(tl.float32) * inv_temp  # one scalar load per row
        logs = tl.log(s)
        tl.store(logp_ptr + rows, (x_t - m) - logs, mask=row_ok)
        tl.store(m_ptr + rows, m, mask=row_ok)
        tl.store(logs_ptr + rows, logs, mask=row_ok)
        if WITH_ENTROPY:
            tl.store(ent_ptr + rows, logs - t / s, mask=row_ok)

    @triton.jit
    def _selective_logprobs_bwd_kernel(logits_ptr, stride_row, dlogits_ptr, stride_drow, targets_ptr, grad_ptr,
                                       m_ptr, logs_ptr, N, V, inv_temp,
                                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
        # dlogits = g/T · (onehot − softmax(x/T)); dlogits_ptr may equal logits_ptr: each element is read, then
        # written, by the same program.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        row_ptr = logits_ptr + rows.to(tl.int64) * stride_row
        drow_ptr = dlogits_ptr + rows.to(tl.int64) * stride_drow
        g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) * inv_temp   # (BLOCK_N,)
        m = tl.load(m_ptr + rows, mask=row_ok, other=0.0)
        logs = tl.load(logs_ptr + rows, mask=row_ok, other=0.0)
        tgt = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            ok = row_ok[:, None] & (cols < V)[None, :]
            x = tl.load(row_ptr[:, None] + cols[None, :], mask=ok, other=0.0).to(tl.float32) * inv_temp
            p = tl.exp((x - m[:, None]) - logs[:, None])                             # (BLOCK_N, BLOCK_V)
            onehot = (cols[None, :] == tgt[:, None]).to(tl.float32)
            d = g[:, None] * (onehot - p)
            tl.store(drow_ptr[:, None] + cols[None, :], d.to(dlogits_ptr.dtype.element_ty), mask=ok)


def _triton_fwd(logits, targets, temperature, with_entropy):
    N, V = logits.shape
    out = [_common.empty(N, dtype=torch.float32, device=logits.device) for _ in range(4 if with_entropy else 3)]
    logp, m, logs = out[:3]
    ent = out[3] if with_entropy else logp  # dummy pointer, never written when WITH_ENTROPY is False
    grid = (triton.cdiv(N, _BLOCK_N),)
    _selective_logprobs_fwd_kernel[grid](logits, logits.stride(0), targets, logp, m, logs, ent, N, V,
                                         1.0 / temperature, WITH_ENTROPY=with_entropy, BLOCK_N=_BLOCK_N,
                                         BLOCK_V=_BLOCK_V, num_warps=_NUM_WARPS, enable_fp_fusion=True)
    return logp, m, logs, (ent if with_entropy else None)


def _triton_bwd(logits, targets, m, logs, grad, temperature, dlogits):
    N, V = logits.shape
    grid = (triton.cdiv(N, _BLOCK_N),)
    _selective_logprobs_bwd_kernel[grid](logits, logits.stride(0), dlogits, dlogits.stride(0), targets, grad, m, logs,
                                         N, V, 1.0 / temperature, BLOCK_N=_BLOCK_N, BLOCK_V=_BLOCK_V,
                                         num_warps=_NUM_WARPS, enable_fp_fusion=True)


# ------------------------------------------------------------------------------------------- chunked torch path
def _torch_fwd(logits, targets, temperature, with_entropy):
    N, V = logits.shape
    cdt = compute_dtype(logits.dtype)
    out = [_common.empty(N, dtype=cdt, device=logits.device) for _ in range(4 if with_entropy else 3)]
    rows = max(1, _CHUNK_ELEMS // max(V, 1))
    for r0 in range(0, N, rows):
        sl = slice(r0, r0 + rows)
        x = logits[sl].to(cdt) / temperature                                          # (rows, V)
        m, s, t = lse_update(*lse_init(x.shape[0], cdt, x.device), x, with_entropy)
        x_t = x.gather(1, targets[sl, None]).squeeze(1)                               # (rows,)
        for buf, val in zip(out, lse_finish(m, s, t, x_t, with_entropy)):
            buf[sl] = val
    return out[0], out[1], out[2], (out[3] if with_entropy else None)


def _torch_bwd(logits, targets, m, logs, grad, temperature, dlogits):
    N, V = logits.shape
    cdt = compute_dtype(logits.dtype)
    rows = max(1, _CHUNK_ELEMS // max(V, 1))
    for r0 in range(0, N, rows):
        sl = slice(r0, r0 + rows)
        x = logits[sl].to(cdt) / temperature                                          # (rows, V)
        d = -torch.exp((x - m[sl, None]) - logs[sl, None])                            # −softmax
        d.scatter_add_(1, targets[sl, None], torch.ones_like(d[:, :1]))               # + onehot
        dlogits[sl] = d * (grad[sl].to(cdt)[:, None] / temperature)


# ------------------------------------------------------------------------------------------------------ autograd
class _SelectiveLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, with_entropy, impl, inplace_backward):
        fwd = _triton_fwd if impl == "triton" else _torch_fwd
        logp, m, logs, entropy = fwd(logits, targets, temperature, with_entropy)
        ctx.save_for_backward(logits, targets, m, logs)
        ctx.temperature, ctx.impl, ctx.inplace_backward = temperature, impl, inplace_backward
        if entropy is None:
            return logp
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad, *_):
        logits, targets, m, logs = ctx.saved_tensors
        dlogits = logits if ctx.inplace_backward else _common.empty(logits.shape, dtype=logits.dtype,
                                                                     device=logits.device)
        bwd = _triton_bwd if ctx.impl == "triton" else _torch_bwd
        bwd(logits, targets, m, logs, grad.contiguous(), ctx.temperature, dlogits)
        return dlogits, None, None, None, None, None


def selective_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, *,
                       with_entropy: bool = False, impl: str = "auto", inplace_backward: bool = False):
    """log softmax(logits / temperature)[n, targets[n]] for each row n, differentiable in logits.

    logits (N, V) bf16/fp16/fp32 (fp64 runs the torch path), targets (N,) int in [0, V).
    Returns logp (N,) float32 (float64 for fp64 logits); with_entropy also returns the entropy (N,) of
    softmax(logits / temperature), detached (for metrics).
    impl: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else torch), "triton", "torch".
    inplace_backward: write dlogits into the logits buffer (saves N·V memory); only when nothing else needs the
    logits after this backward.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, V) and targets (N,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    impl = pick_impl(impl, logits)
    if logits.shape[0] == 0:  # nothing to launch; the torch path returns empty tensors
        impl = "torch"
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return _SelectiveLogprobs.apply(logits, targets.contiguous(), float(temperature), with_entropy, impl,
                                    inplace_backward)


def _reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, *, with_entropy: bool = False):
    """Plain torch: log_softmax in fp32 (fp64 for fp64 input) then gather. Materialises (N, V) in fp32 twice."""
    logprobs = torch.log_softmax(logits.to(compute_dtype(logits.dtype)) / temperature, dim=-1)   # (N, V)
    logp = logprobs.gather(-1, targets[:, None]).squeeze(-1)                                     # (N,)
    if not with_entropy:
        return logp
    return logp, -(logprobs.exp() * logprobs).sum(-1).detach()
