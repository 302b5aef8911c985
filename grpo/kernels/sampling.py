"""Keyed Gumbel-max sampling with temperature / top-k / top-p / min-p in one kernel per row, no (rows, V) buffers.

    python -m pytest tests/test_kernels_sampling.py          # torch path here, Triton path in an interpreter subprocess
    python bench/bench_kernels.py --sampler                  # kernel vs the torch sampler of grpo/rollout.py

The token for row r at position t is argmax over the kept set of z + g, with z = logits / temperature (fp32, correctly
rounded) and g the Gumbel noise keyed by (seed, seq_ids[r], t, vocab id) — bit for bit the noise of
grpo.rollout.gumbel_noise, so a sequence gets the same tokens whatever the batch (see grpo/rollout.py). Gumbel-max
needs no normalisation: argmax(z + g) = argmax(log softmax(z) + g), so neither path builds log-probs.

The kept set is HF's warpers in HF's order (grpo.rollout.filter_logits says which and why), and every filter is
a threshold on z, so a row is filtered by finding one cut value, not by sorting:
  top-k   keep z >= z_(k), the k-th largest value (ties with it kept)
  top-p   keep z >= the smallest z_i whose "mass above", Σ_{z_j > z_i, j kept by top-k} p_j, is < top_p, with p the
          softmax renormalised over the top-k set (a group tied at the cut is kept whole)
  min-p   keep z − max z >= log min_p (computed in fp32 on both paths, so both make the same call)
The kernel finds the top-k and top-p cuts by a multi-way search on the value: fp32 values map to int32 keys that
sort like the floats (`_order_key`), and each pass over the row counts (top-k) or sums exp (top-p) above
NUM_PIVOTS candidate keys at once, shrinking the key interval 17-fold per pass: ≤ 8 passes per cut for 32-bit keys.

Memory traffic per call (rows × V logits of b bytes each):
  torch sampler (grpo/rollout.py)  log_softmax, topk, sort + cumsum in fp32/fp64, (rows, V) int64 hash chain
                                   ≈ 50+ rowsV bytes written and read again
  _reference (this file)           same ops, chunked so temporaries stay ≤ _CHUNK_ELEMS elements
  kernel                           read rowsV·b × (1 + 8 top-k + 1 + 8 top-p + 1) at most, write 8 rows.
                                   A row of 151,936 bf16 is 300 KB, so a batch of rows sits in L2 (50 MB on H200) and
                                   the repeated reads mostly hit it; the Gumbel hash runs only on tiles that hold a
                                   kept token (with top-k 50, a handful of the 149 tiles).
"""
import math

import torch

from . import _common
from ._common import HAS_TRITON, pick_impl

if HAS_TRITON:
    import triton
    import triton.language as tl

_MASK32 = 0xFFFFFFFF
# torch path: rows × vocab elements per chunk, bounding every temporary (the int64 hash, the sort) at 32 MB.
_CHUNK_ELEMS = 1 << 22
# Triton: one program per row streams the row in BLOCK_V slices. A search pass works on (BLOCK_V, NUM_PIVOTS) tiles
# of compares, 64 values per thread at 8 warps; NUM_PIVOTS 16 cuts the key interval 17-fold per pass.
_BLOCK_V, _NUM_PIVOTS, _NUM_WARPS = 1024, 16, 8


# ----------------------------------------------------------------------------------------------- Triton kernels
if HAS_TRITON:
    @triton.jit
    def _lowbias32(x):
        """lowbias32 (Chris Wellons) on uint32; the products wrap mod 2^32 exactly as the torch twin masks them."""
        x = (x ^ (x >> 16)) * 0x7FEB352D
        x = (x ^ (x >> 15)) * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit
    def _row_key(seq_id, seed32, tmix32):
        """The per-(sequence, position) hash key: hash(hash(seq · 0x9E3779B1 + seed) + t · 0x85EBCA77) mod 2^32."""
        s = seq_id.to(tl.uint32)                                                     # low 32 bits, as `& MASK`
        return _lowbias32(_lowbias32(s * 0x9E3779B1 + seed32.to(tl.uint32, bitcast=True))
                          + tmix32.to(tl.uint32, bitcast=True))

    @triton.jit
    def _gumbel(row_key, cols):
        """Gumbel(0,1) fp32 for vocab ids `cols`: u = (bits + 0.5) / 2^32 in fp64, −log(−log u), rounded to fp32."""
        bits = _lowbias32(row_key * 0x27D4EB2F + cols.to(tl.uint32))
        u = (bits.to(tl.float64) + 0.5) / 4294967296.0
        return (-tl.log(-tl.log(u))).to(tl.float32)

    @triton.jit
    def _scaled(row_ptr, cols, V, temperature):
        """z = logit / temperature in fp32, correctly rounded like torch's division; −0 folded into +0 so that
        the int32 order key (which tells them apart) agrees with float comparisons."""
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        z = tl.div_rn(x, temperature)
        return tl.where(z == 0.0, 0.0, z)

    @triton.jit
    def _order_key(z):
        """fp32 → int32 with the same order: negative floats have their magnitude bits flipped."""
        bits = z.to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _pivots(lo, hi, NUM_PIVOTS: tl.constexpr):
        """NUM_PIVOTS int32 keys spread over the open interval (lo, hi) (int64 scalars, hi − lo ≥ 2)."""
        j = tl.arange(0, NUM_PIVOTS).to(tl.int64) + 1
        return (lo + (hi - lo) * j // (NUM_PIVOTS + 1)).to(tl.int32)                # (NUM_PIVOTS,)

    @triton.jit
    def _sample_kernel(logits_ptr, stride_row, seq_ids_ptr, out_ptr, V, top_k, top_p, log_min_p, temperature,
                       seed32, tmix32, USE_TOP_K: tl.constexpr, USE_TOP_P: tl.constexpr, USE_MIN_P: tl.constexpr,
                       BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr):
        """seed and position as launch arguments (int32 scalars)."""
        _sample_row(logits_ptr, stride_row, seq_ids_ptr, out_ptr, V, top_k, top_p, log_min_p, temperature,
                    seed32, tmix32, USE_TOP_K, USE_TOP_P, USE_MIN_P, BLOCK_V, NUM_PIVOTS)

    @triton.jit
    def _sample_kernel_keyed(logits_ptr, stride_row, seq_ids_ptr, out_ptr, V, top_k, top_p, log_min_p, temperature,
                             keys_ptr, USE_TOP_K: tl.constexpr, USE_TOP_P: tl.constexpr, USE_MIN_P: tl.constexpr,
                             BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr):
        """seed and position read from device memory (int32 [seed32, tmix32]): no host value changes from token to
        token, so a CUDA graph captures the launch once and replays it for every position."""
        _sample_row(logits_ptr, stride_row, seq_ids_ptr, out_ptr, V, top_k, top_p, log_min_p, temperature,
                    tl.load(keys_ptr), tl.load(keys_ptr + 1), USE_TOP_K, USE_TOP_P, USE_MIN_P, BLOCK_V, NUM_PIVOTS)

    @triton.jit
    def _sample_row(logits_ptr, stride_row, seq_ids_ptr, out_ptr, V, top_k, top_p, log_min_p, temperature,
                    seed32, tmix32, USE_TOP_K: tl.constexpr, USE_TOP_P: tl.constexpr, USE_MIN_P: tl.constexpr,
                    BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr):
        row = tl.program_id(0)
        row_ptr = logits_ptr + row.to(tl.int64) * stride_row                         # int64: rows·V > 2^31
        lanes = tl.arange(0, BLOCK_V)                                                # (BLOCK_V,)

        # pass 1: max value m and the key range [kmin, kmax] of the row. Read V.
        m = tl.full((), float("-inf"), tl.float32)
        kmin = tl.full((), 2147483647, tl.int32)
        kmax = tl.full((), -2147483647 - 1, tl.int32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + lanes
            z = _scaled(row_ptr, cols, V, temperature)
            key = _order_key(z)
            m = tl.maximum(m, tl.max(z, axis=0))
            kmin = tl.minimum(kmin, tl.min(tl.where(cols < V, key, 2147483647), axis=0))
            kmax = tl.maximum(kmax, tl.max(tl.where(cols < V, key, -2147483647 - 1), axis=0))

        # top-k cut: the largest key c with count(key >= c) >= k is the k-th largest key. Invariant:
        # count(>= lo) >= k > count(>= hi). Read V per pass, ≤ 8 passes.
        k_cut = kmin
        if USE_TOP_K:
            lo = kmin.to(tl.int64)
            hi = kmax.to(tl.int64) + 1
            while hi - lo > 1:
                piv = _pivots(lo, hi, NUM_PIVOTS)                                    # (NUM_PIVOTS,)
                count = tl.zeros((NUM_PIVOTS,), tl.int32)
                for v0 in range(0, V, BLOCK_V):
                    cols = v0 + lanes
                    key = _order_key(_scaled(row_ptr, cols, V, temperature))
                    above = (key[:, None] >= piv[None, :]) & (cols < V)[:, None]     # (BLOCK_V, NUM_PIVOTS)
                    count += tl.sum(above.to(tl.int32), axis=0)
                enough = count >= top_k
                lo = tl.maximum(lo, tl.max(tl.where(enough, piv, -2147483647 - 1), axis=0).to(tl.int64))
                hi = tl.minimum(hi, tl.min(tl.where(enough, 2147483647, piv), axis=0).to(tl.int64))
            k_cut = lo.to(tl.int32)

        # top-p cut on the softmax renormalised over the top-k set: the smallest key c >= k_cut with
        # Σ_{key > c} e < top_p · Σ_{key >= k_cut} e, e = exp(z − m). That sum only falls as c rises, and it is
        # 0 at c = kmax, so the answer is a key in [k_cut, kmax]. Invariant: test(lo) false, test(hi) true.
        # Read V for the normaliser, then V per pass, ≤ 8 passes.
        p_cut = kmin
        if USE_TOP_P:
            total = tl.zeros((), tl.float32)
            for v0 in range(0, V, BLOCK_V):
                cols = v0 + lanes
                z = _scaled(row_ptr, cols, V, temperature)
                total += tl.sum(tl.where(_order_key(z) >= k_cut, tl.exp(z - m), 0.0), axis=0)
            budget = top_p * total
            lo = k_cut.to(tl.int64) - 1
            hi = kmax.to(tl.int64)
            while hi - lo > 1:
                piv = _pivots(lo, hi, NUM_PIVOTS)
                mass = tl.zeros((NUM_PIVOTS,), tl.float32)
                for v0 in range(0, V, BLOCK_V):
                    cols = v0 + lanes
                    z = _scaled(row_ptr, cols, V, temperature)
                    e = tl.exp(z - m)                                                # (BLOCK_V,) 0 where masked
                    key = _order_key(z)
                    mass += tl.sum(tl.where(key[:, None] > piv[None, :], e[:, None], 0.0), axis=0)
                small = mass < budget
                lo = tl.maximum(lo, tl.max(tl.where(small, -2147483647 - 1, piv), axis=0).to(tl.int64))
                hi = tl.minimum(hi, tl.min(tl.where(small, piv, 2147483647), axis=0).to(tl.int64))
            p_cut = hi.to(tl.int32)

        # last pass: Gumbel-max over the kept tokens, first index on ties (as torch.argmax). Read V, write 1.
        cut = tl.maximum(k_cut, p_cut)
        seq_id = tl.load(seq_ids_ptr + row)
        row_key = _row_key(seq_id, seed32, tmix32)
        best = tl.full((), float("-inf"), tl.float32)
        best_idx = tl.zeros((), tl.int32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + lanes
            z = _scaled(row_ptr, cols, V, temperature)
            keep = (cols < V) & (_order_key(z) >= cut)
            if USE_MIN_P:
                keep = keep & ((z - m) >= log_min_p)
            if tl.max(keep.to(tl.int32), axis=0) > 0:  # hash only the slices that hold a kept token
                score = tl.where(keep, z + _gumbel(row_key, cols), float("-inf"))
                tile_best = tl.max(score, axis=0)
                tile_idx = tl.argmax(score, axis=0) + v0
                if tile_best > best:
                    best, best_idx = tile_best, tile_idx
        tl.store(out_ptr + row, best_idx.to(tl.int64))

    @triton.jit
    def _gumbel_noise_kernel(seq_ids_ptr, out_ptr, V, seed32, tmix32, BLOCK_V: tl.constexpr):
        """The sampler's noise written out (rows, V), so tests can hold it against grpo.rollout.gumbel_noise."""
        row = tl.program_id(0)
        row_key = _row_key(tl.load(seq_ids_ptr + row), seed32, tmix32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            tl.store(out_ptr + row.to(tl.int64) * V + cols, _gumbel(row_key, cols), mask=cols < V)


def _int32(x: int) -> int:
    """x mod 2^32 as a signed int32, so the JIT always types the argument i32 (one specialisation)."""
    x &= _MASK32
    return x - (1 << 32) if x >= 1 << 31 else x


def _log_min_p(min_p: float) -> float:
    """log min_p rounded to fp32: both paths compare the fp32 value z − m against it."""
    return float(torch.tensor(math.log(min_p), dtype=torch.float32)) if min_p > 0 else float("-inf")


def _device_keys(seed: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[seed, t · 0x85EBCA77] mod 2^32 as signed int32 (2,), computed on device: _int32 without a host sync."""
    x = torch.stack([seed.to(torch.int64).reshape(()), t.to(torch.int64).reshape(()) * 0x85EBCA77]) & _MASK32
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def _triton_sample(logits, seq_ids, t, seed, temperature, top_k, top_p, min_p):
    rows, V = logits.shape
    out = _common.empty(rows, dtype=torch.int64, device=logits.device)
    common = dict(USE_TOP_K=0 < top_k < V, USE_TOP_P=top_p < 1.0, USE_MIN_P=min_p > 0.0, BLOCK_V=_BLOCK_V,
                  NUM_PIVOTS=_NUM_PIVOTS, num_warps=_NUM_WARPS)
    head = (logits, logits.stride(0), seq_ids, out, V, top_k, top_p, _log_min_p(min_p), temperature)
    if isinstance(t, torch.Tensor) or isinstance(seed, torch.Tensor):
        keys = _device_keys(torch.as_tensor(seed, device=logits.device), torch.as_tensor(t, device=logits.device))
        _sample_kernel_keyed[(rows,)](*head, keys, **common)
    else:
        _sample_kernel[(rows,)](*head, _int32(seed), _int32(t * 0x85EBCA77), **common)
    return out


# ------------------------------------------------------------------------------------------- torch reference
def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values; products stay below 2^63."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seed: int, seq_ids: torch.Tensor, t: int, vocab: int, *, impl: str = "torch") -> torch.Tensor:
    """Gumbel(0,1) noise (rows, V) fp32 keyed by (seed, sequence id, position t, vocab id); equals
    grpo.rollout.gumbel_noise bit for bit. The torch path hashes _CHUNK_ELEMS elements at a time, so its int64
    temporaries stay bounded; impl="triton" runs the kernel's own noise (for tests)."""
    rows = seq_ids.shape[0]
    if impl == "triton":
        out = _common.empty(rows, vocab, dtype=torch.float32, device=seq_ids.device)
        _gumbel_noise_kernel[(rows,)](seq_ids.contiguous(), out, vocab, _int32(seed), _int32(t * 0x85EBCA77),
                                      BLOCK_V=_BLOCK_V)
        return out
    key = _hash32(_hash32(seq_ids.to(torch.int64) * 0x9E3779B1 + seed) + t * 0x85EBCA77)   # (rows,)
    step = max(1, _CHUNK_ELEMS // max(rows, 1))
    if step >= vocab:  # one chunk: no output buffer written in place (a captured step writes only its own state)
        bits = _hash32(key[:, None] * 0x27D4EB2F + torch.arange(vocab, device=seq_ids.device)[None, :])
        return (-torch.log(-torch.log((bits.to(torch.float64) + 0.5) / 2**32))).to(torch.float32)
    out = _common.empty(rows, vocab, dtype=torch.float32, device=seq_ids.device)
    for v0 in range(0, vocab, step):
        v = torch.arange(v0, min(v0 + step, vocab), device=seq_ids.device, dtype=torch.int64)
        bits = _hash32(key[:, None] * 0x27D4EB2F + v[None, :])                             # (rows, chunk)
        u = (bits.to(torch.float64) + 0.5) / 2**32                                         # in (0, 1)
        out[:, v0:v0 + v.shape[0]] = -torch.log(-torch.log(u))
    return out


def keep_mask(z: torch.Tensor, *, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """z (rows, V) fp32 scaled logits → (rows, V) bool, the tokens HF's top-k → top-p → min-p keep (ties at a
    cut kept whole). Plain torch with a sort: the readable statement of what the kernel's searches compute."""
    V = z.shape[-1]
    m = z.amax(-1, keepdim=True)                                                           # (rows, 1)
    keep = torch.ones_like(z, dtype=torch.bool)
    if 0 < top_k < V:
        keep = keep & (z >= z.topk(top_k, dim=-1).values[:, -1:])
    if top_p < 1.0:
        zs = z.masked_fill(~keep, float("-inf")).sort(dim=-1, descending=True).values     # (rows, V)
        e = (zs.double() - m.double()).exp()                                               # fp64 unnormalised p
        mass_above = e.cumsum(-1) - e
        n_keep = (mass_above < top_p * e.sum(-1, keepdim=True)).sum(-1, keepdim=True).clamp(min=1)
        keep = keep & (z >= zs.gather(-1, n_keep - 1))                                     # whole tie group
    if min_p > 0.0:
        keep = keep & ((z - m) >= _log_min_p(min_p))
    return keep


def _reference(logits, seq_ids, t, *, seed, temperature, top_k, top_p, min_p):
    """Plain torch, chunked over rows: z = logits / T, keep_mask, argmax(z + noise) over the kept tokens."""
    rows, V = logits.shape
    step = max(1, _CHUNK_ELEMS // max(V, 1))

    def chunk(sl):
        z = logits[sl].float() / temperature                                               # (r, V)
        z = torch.where(z == 0, 0.0, z)                                                    # −0 → +0, as the kernel
        keep = keep_mask(z, top_k=top_k, top_p=top_p, min_p=min_p)
        score = (z + gumbel_noise(seed, seq_ids[sl], t, V)).masked_fill(~keep, float("-inf"))
        return score.argmax(-1)                                                            # (r,)

    if step >= rows:  # one chunk: no output buffer written in place (a captured step writes only its own state)
        return chunk(slice(0, rows))
    out = _common.empty(rows, dtype=torch.int64, device=logits.device)
    for r0 in range(0, rows, step):
        out[r0:r0 + step] = chunk(slice(r0, r0 + step))
    return out


def sample_tokens(logits: torch.Tensor, seq_ids: torch.Tensor, t: int, *, seed: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, impl: str = "auto") -> torch.Tensor:
    """One token per row: Gumbel-max on logits / temperature over HF's top-k → top-p → min-p set, with noise keyed
    by (seed, seq_ids[r], t, vocab id). Same tokens as grpo.rollout's filter_logits + gumbel_noise argmax.

    logits (rows, V) bf16/fp16/fp32 (fp64 runs the torch path), seq_ids (rows,) int, t the decode position; t and
    seed are ints or 0-dim int tensors on the logits' device (read on device, no host sync: CUDA-graph capturable).
    temperature 0 is greedy (argmax); top_k 0 / top_p 1 / min_p 0 turn a filter off. Returns (rows,) int64.
    impl: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else torch), "triton", "torch".
    """
    if logits.dim() != 2 or seq_ids.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (rows, V) and seq_ids (rows,), got {tuple(logits.shape)} and "
                         f"{tuple(seq_ids.shape)}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not 0.0 <= top_p <= 1.0 or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"top_p and min_p must lie in [0, 1] (top_p 1 / min_p 0 = off), got {top_p}, {min_p}")
    impl = pick_impl(impl, logits)
    if temperature == 0:
        return logits.argmax(-1)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    # t and seed may be 0-dim device tensors (the static engine's step buffers): then nothing here syncs or reads
    # them on the host, which is what lets a CUDA graph capture the call (fixed shapes, values read on device)
    on_device = isinstance(t, torch.Tensor) or isinstance(seed, torch.Tensor)
    args = (t if on_device else int(t), seed if on_device else int(seed), float(temperature), top_k, float(top_p),
            float(min_p))
    if impl == "triton":
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        return _triton_sample(logits, seq_ids.contiguous(), *args)
    t, seed, temperature, top_k, top_p, min_p = args
    return _reference(logits, seq_ids, t, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
