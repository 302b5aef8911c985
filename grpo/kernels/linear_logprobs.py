"""LM head fused with the log-prob: log softmax(hidden @ weightᵀ / T)[target] without the (N, V) logits.

    python -m pytest tests/test_kernels_linear.py            # torch path here, Triton path in an interpreter subprocess
    python bench/bench_kernels.py                            # timing, TFLOP/s and peak memory on a GPU

Forward (Triton): program (i, j) owns BLOCK_N rows and the j-th slice of the vocabulary; each (BLOCK_N, BLOCK_V)
logits tile is built on chip by tl.dot over H, folded into an online log-sum-exp (see _common) and the target
logit is picked when its column passes. The per-slice partial sums (SPLIT, N) are merged in torch. Splitting V
keeps every SM busy at small N; neighbouring programs share vocab slices, so weight tiles are reused from L2.
Saved for backward: hidden, weight (references, no copies) and (m, log s): 8N bytes.

Backward: for a chunk of rows, a Triton kernel recomputes each logits tile on chip and writes
dz = g/T·(onehot − softmax) (chunk, V) in the weight dtype, then cuBLAS does dhidden = dz @ W and, only when
weight.requires_grad, dW += dzᵀ @ hidden. The chunk is sized to _DZ_CHUNK_BYTES, so memory stays bounded
whatever N is, and dz is the only (chunk, V) buffer — no fp32 logits, no probabilities. A fully on-chip dhidden
needs a (BLOCK_N, H) accumulator per program (fp32, 2.6 MB at H = 5120, BLOCK_N = 128) that no SM holds.

FLOPs: forward 2NHV; backward 2NHV recompute + 2NHV dhidden (+ 2NHV dW when wanted).
Memory traffic of the reference for bf16 (materialised logits): write 2NV, read 2NV + write 4NV (fp32 copy),
log_softmax read+write 8NV, gather; backward again ≈ 16NV — at N = 16k, V = 151,936 that is ~40 GB of buffers.
"""
import torch

from . import _common
from ._common import HAS_TRITON, compute_dtype, lse_finish, lse_init, lse_update, pick_impl
from .selective_logprobs import _reference as _selective_reference

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import online_lse_update

# torch path: a (rows, vocab) chunk of fp32 logits is at most 4M elements = 16 MB.
_CHUNK_ROWS, _CHUNK_VOCAB = 512, 8192
# Triton backward: the dz buffer of one row chunk (rows × V in the weight dtype) stays under this many bytes.
_DZ_CHUNK_BYTES = 256 << 20  # 832 rows at V = 151,936 bf16: still a large cuBLAS matmul


def _config(dtype: torch.dtype, capability: int) -> dict:
    """Block sizes shipped per input dtype and GPU (capability 90 = sm_90); tests/test_kernels_compile.py checks
    each compiles without register spills. Chosen so: Hopper's warpgroup MMA wants 64·k-row tiles and has 228 KB
    of shared memory for a 3-stage 128×64 + 64×128 pipeline; mma.sync GPUs (sm_120) spill at 128 rows × 64 deep;
    fp32 runs on FMA units (IEEE precision) and spills with 4 warps."""
    if dtype == torch.float32:
        cfg = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=32, num_warps=8, num_stages=3)
    elif capability // 10 == 9:
        cfg = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
    else:
        cfg = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
    if _common.INTERPRET:  # numpy runs tl.dot ~10 ms per 128-row tile; tests use N ≤ 37, so 16 rows cover them
        cfg["BLOCK_N"] = 16
    return cfg


# ----------------------------------------------------------------------------------------------- Triton kernels
if HAS_TRITON:
    @triton.jit
    def _logits_tile(h_ptr, w_ptr, stride_h, stride_w, rows, cols, N, V, H, inv_temp,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """(BLOCK_N, BLOCK_V) fp32 tile of hidden[rows] @ weight[cols]ᵀ / T, columns ≥ V set to −inf."""
        row_ok = rows < N
        col_ok = cols < V
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h                         # (BLOCK_N, 1)
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w                         # (1, BLOCK_V)
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            h = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)   # (BLOCK_N, BLOCK_H)
            w = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)   # (BLOCK_H, BLOCK_V)
            if UPCAST:  # interpreter only: exact, since bf16×bf16 products are exact in fp32 on tensor cores too
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(h, w, acc, input_precision=PRECISION)
        return tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))

    @triton.jit
    def _linear_logprobs_fwd_kernel(h_ptr, w_ptr, targets_ptr, m_ptr, s_ptr, t_ptr, xt_ptr,
                                     N, V, H, stride_h, stride_w, inv_temp, tiles_per_split,
                                     WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                                     BLOCK_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        pid_n = tl.program_id(0)  # fastest-varying: programs running together share a vocab slice (L2 reuse)
        split = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        row_ok = rows < N
        tgt = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        t = tl.zeros((BLOCK_N,), tl.float32)
        x_t = tl.zeros((BLOCK_N,), tl.float32)
        for i in range(tiles_per_split):
            cols = (split * tiles_per_split + i) * BLOCK_V + tl.arange(0, BLOCK_V)        # (BLOCK_V,)
            x = _logits_tile(h_ptr, w_ptr, stride_h, stride_w, rows, cols, N, V, H, inv_temp,
                             BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)                       # (BLOCK_N, BLOCK_V)
            x_t += tl.sum(tl.where(cols[None, :] == tgt[:, None], x, 0.0), axis=1)
            m, s, t = online_lse_update(m, s, t, x, WITH_ENTROPY)
        out = split * N + rows                                                           # partials are (SPLIT, N)
        tl.store(m_ptr + out, m, mask=row_ok)
        tl.store(s_ptr + out, s, mask=row_ok)
        tl.store(xt_ptr + out, x_t, mask=row_ok)
        if WITH_ENTROPY:
            tl.store(t_ptr + out, t, mask=row_ok)

    @triton.jit
    def _linear_logprobs_bwd_kernel(h_ptr, w_ptr, targets_ptr, grad_ptr, m_ptr, logs_ptr, dz_ptr,
                                     N, V, H, stride_h, stride_w, stride_dz, inv_temp,
                                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                                     PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # dz = g/T · (onehot − softmax(x)), x recomputed on chip; softmax = exp((x − m) − log s), saved by forward
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < N
        x = _logits_tile(h_ptr, w_ptr, stride_h, stride_w, rows, cols, N, V, H, inv_temp,
                         BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)                            # (BLOCK_N, BLOCK_V)
        g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) * inv_temp
        m = tl.load(m_ptr + rows, mask=row_ok, other=0.0)
        logs = tl.load(logs_ptr + rows, mask=row_ok, other=0.0)
        tgt = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
        p = tl.exp((x - m[:, None]) - logs[:, None])
        onehot = (cols[None, :] == tgt[:, None]).to(tl.float32)
        dz = g[:, None] * (onehot - p)
        ok = row_ok[:, None] & (cols < V)[None, :]
        tl.store(dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + cols[None, :],
                 dz.to(dz_ptr.dtype.element_ty), mask=ok)


def _dot_args(dtype) -> dict:
    # fp32 inputs must not silently drop to tf32 (10-bit mantissa): the fp32 tolerance is 1e-5.
    # triton 3.9's interpreter runs tl.dot as np.matmul on bf16 *bit patterns* (stored as uint16), so under
    # TRITON_INTERPRET the tiles are upcast to fp32 first; compiled kernels keep bf16 operands.
    return dict(PRECISION="ieee" if dtype == torch.float32 else "tf32",
                UPCAST=_common.INTERPRET and dtype == torch.bfloat16)


def _num_sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _capability(device) -> int:
    if device.type != "cuda":
        return 0
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _triton_fwd(hidden, weight, targets, temperature, with_entropy):
    N, H = hidden.shape
    V = weight.shape[0]
    cfg = _config(hidden.dtype, _capability(hidden.device))
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    n_tiles = triton.cdiv(V, cfg["BLOCK_V"])
    # enough vocab slices for ~2 waves of programs; recomputed so that no slice is empty
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(n_tiles, triton.cdiv(2 * _num_sms(hidden.device), n_blocks))))
    split = triton.cdiv(n_tiles, tiles_per_split)
    parts = _common.empty(4, split, N, dtype=torch.float32, device=hidden.device)       # m, s, t, x_t partials
    _linear_logprobs_fwd_kernel[(n_blocks, split)](
        hidden, weight, targets, parts[0], parts[1], parts[2], parts[3], N, V, H, hidden.stride(0),
        weight.stride(0), 1.0 / temperature, tiles_per_split, WITH_ENTROPY=with_entropy,
        **_dot_args(hidden.dtype), **cfg, enable_fp_fusion=True)
    pm, ps, pt, pxt = parts
    m = pm.amax(0)                                                                     # (N,)
    alpha = torch.exp(pm - m)                                                          # (SPLIT, N), no slice is empty
    s = (alpha * ps).sum(0)
    t = (alpha * (pt + (pm - m) * ps)).sum(0) if with_entropy else None
    out = lse_finish(m, s, t, pxt.sum(0), with_entropy)
    logp = _common.empty(N, dtype=torch.float32, device=hidden.device)
    logp.copy_(out[0])
    return (logp,) + out[1:]


def _triton_bwd(hidden, weight, targets, m, logs, grad, temperature, need_dw):
    N, H = hidden.shape
    V = weight.shape[0]
    cfg = _config(hidden.dtype, _capability(hidden.device))
    rows = max(cfg["BLOCK_N"], _DZ_CHUNK_BYTES // (V * weight.element_size()) // cfg["BLOCK_N"] * cfg["BLOCK_N"])
    dz = _common.empty(min(rows, N), V, dtype=weight.dtype, device=hidden.device)      # (rows, V) reused per chunk
    dh = _common.empty(N, H, dtype=hidden.dtype, device=hidden.device)
    # fp32 accumulator across row chunks: bf16 would round once per chunk. Only when the head is trained.
    dw = torch.zeros(V, H, dtype=torch.float32, device=hidden.device) if need_dw else None
    for r0 in range(0, N, rows):
        n = min(rows, N - r0)
        h = hidden[r0:r0 + n]
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(V, cfg["BLOCK_V"]))
        _linear_logprobs_bwd_kernel[grid](h, weight, targets[r0:r0 + n], grad[r0:r0 + n], m[r0:r0 + n],
                                          logs[r0:r0 + n], dz, n, V, H, h.stride(0), weight.stride(0),
                                          dz.stride(0), 1.0 / temperature,
                                          **_dot_args(hidden.dtype), **cfg, enable_fp_fusion=True)
        torch.matmul(dz[:n], weight, out=dh[r0:r0 + n])                                # (n, H)
        if need_dw:
            dw += dz[:n].t() @ h                                                       # (V, H), rounded once per chunk
    return dh, (dw.to(weight.dtype) if need_dw else None)


# ------------------------------------------------------------------------------------------- chunked torch path
def _torch_fwd(hidden, weight, targets, temperature, with_entropy):
    N, V = hidden.shape[0], weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    if V <= _CHUNK_VOCAB:
        return _torch_fwd_one_chunk(hidden, weight, targets, temperature, with_entropy)
    m, s, t = lse_init(N, cdt, hidden.device)
    x_t = torch.zeros(N, dtype=cdt, device=hidden.device)
    for v0 in range(0, V, _CHUNK_VOCAB):                   # vocab outer: each weight chunk is converted once
        w = weight[v0:v0 + _CHUNK_VOCAB].to(cdt)                                          # (Vc, H)
        for r0 in range(0, N, _CHUNK_ROWS):
            sl = slice(r0, r0 + _CHUNK_ROWS)
            x = hidden[sl].to(cdt) @ w.t() / temperature                                  # (rows, Vc)
            m[sl], s[sl], t[sl] = lse_update(m[sl], s[sl], t[sl], x, with_entropy)
            local = targets[sl] - v0                                                      # (rows,) column in chunk
            hit = (local >= 0) & (local < w.shape[0])
            x_t[sl] += torch.where(hit, x.gather(1, local.clamp(0, w.shape[0] - 1)[:, None]).squeeze(1), 0.0)
    out = lse_finish(m, s, t, x_t, with_entropy)
    logp = _common.empty(N, dtype=cdt, device=hidden.device)
    logp.copy_(out[0])
    return (logp,) + out[1:]


def _torch_fwd_one_chunk(hidden, weight, targets, temperature, with_entropy):
    """The whole vocabulary in one chunk (V ≤ _CHUNK_VOCAB: small models, the CPU demo): the same (m, s, t) sums as
    lse_update with no running max to rescale, in place on the logits chunk — read (rows, V) four times (max, −m,
    exp, sum) instead of about ten, and no −inf guards, since a finite matmul has no masked entries."""
    N = hidden.shape[0]
    cdt = compute_dtype(hidden.dtype)
    w = weight.to(cdt)                                                                    # (V, H)
    m, s = (torch.empty(N, dtype=cdt, device=hidden.device) for _ in range(2))
    t = torch.empty(N, dtype=cdt, device=hidden.device) if with_entropy else None
    x_t = torch.empty(N, dtype=cdt, device=hidden.device)
    for r0 in range(0, N, _CHUNK_ROWS):
        sl = slice(r0, r0 + _CHUNK_ROWS)
        x = hidden[sl].to(cdt) @ w.t()                                                    # (rows, V)
        if temperature != 1.0:
            x.div_(temperature)
        x_t[sl] = x.gather(1, targets[sl, None]).squeeze(1)
        m[sl] = x.amax(-1)
        d = x.sub_(m[sl, None])                                                           # (rows, V) x − m, in place
        e = torch.exp(d)                                                                  # (rows, V)
        s[sl] = e.sum(-1)
        if with_entropy:
            t[sl] = torch.linalg.vecdot(e, d)                                             # Σ e·(x − m)
    out = lse_finish(m, s, t, x_t, with_entropy)
    logp = _common.empty(N, dtype=cdt, device=hidden.device)
    logp.copy_(out[0])
    return (logp,) + out[1:]


def _torch_bwd(hidden, weight, targets, m, logs, grad, temperature, need_dw):
    N, V = hidden.shape[0], weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    dh = torch.zeros(hidden.shape, dtype=cdt, device=hidden.device)
    dw = _common.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_dw else None
    g = grad.to(cdt) / temperature                                                        # (N,)
    for v0 in range(0, V, _CHUNK_VOCAB):
        w = weight[v0:v0 + _CHUNK_VOCAB].to(cdt)                                          # (Vc, H)
        dw_chunk = torch.zeros_like(w) if need_dw else None
        for r0 in range(0, N, _CHUNK_ROWS):
            sl = slice(r0, r0 + _CHUNK_ROWS)
            h = hidden[sl].to(cdt)                                                        # (rows, H)
            x = h @ w.t()                                                                 # (rows, Vc)
            if temperature != 1.0:
                x.div_(temperature)
            # −softmax = −exp((x − m) − log s), in place on the logits chunk: no other (rows, Vc) buffer
            dz = x.sub_(m[sl, None]).sub_(logs[sl, None]).exp_().neg_()
            local = targets[sl] - v0
            hit = (local >= 0) & (local < w.shape[0])
            dz.scatter_add_(1, local.clamp(0, w.shape[0] - 1)[:, None], hit[:, None].to(cdt))  # + onehot
            dz *= g[sl, None]
            dh[sl] += dz @ w
            if need_dw:
                dw_chunk += dz.t() @ h
        if need_dw:
            dw[v0:v0 + _CHUNK_VOCAB] = dw_chunk
    return dh.to(hidden.dtype), dw


# ------------------------------------------------------------------------------------------------------ autograd
class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, impl):
        fwd = _triton_fwd if impl == "triton" else _torch_fwd
        logp, m, logs, entropy = fwd(hidden, weight, targets, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, m, logs)
        ctx.temperature, ctx.impl = temperature, impl
        if entropy is None:
            return logp
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad, *_):
        hidden, weight, targets, m, logs = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[:2]
        bwd = _triton_bwd if ctx.impl == "triton" else _torch_bwd
        dh, dw = bwd(hidden, weight, targets, m, logs, grad.contiguous(), ctx.temperature, need_dw)
        return (dh if need_dh else None), dw, None, None, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    *, with_entropy: bool = False, impl: str = "auto"):
    """log softmax(hidden @ weightᵀ / temperature)[n, targets[n]] without materialising the (N, V) logits.

    hidden (N, H), weight (V, H) of the same dtype (bf16/fp16/fp32; fp64 runs the torch path), targets (N,) in
    [0, V). Pass completion positions only. Returns logp (N,) float32 (float64 for fp64 inputs), differentiable in
    hidden, and in weight only when weight.requires_grad (a frozen LoRA head gets no V×H gradient buffer);
    with_entropy also returns the detached entropy (N,). impl: "auto" | "triton" | "torch" as in selective_logprobs.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or \
            targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, H), weight (V, H), targets (N,), got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden is {hidden.dtype} but weight is {weight.dtype}: cast one "
                        f"(e.g. hidden.to(weight.dtype))")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    impl = pick_impl(impl, hidden)
    if hidden.shape[0] == 0:  # nothing to launch; the torch path returns empty tensors
        impl = "torch"
    return _LinearLogprobs.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(), float(temperature),
                                 with_entropy, impl)


def _reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, *,
               with_entropy: bool = False):
    """Plain torch: matmul, fp32 (fp64 for fp64 input) log_softmax, gather — builds the full (N, V) logits."""
    logits = hidden @ weight.t()                                                            # (N, V)
    return _selective_reference(logits, targets, temperature, with_entropy=with_entropy)
