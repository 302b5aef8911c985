"""The static-cache decode engine: a hand-written Qwen3 forward over a preallocated KV cache, one fixed-shape step per token.

    python -m pytest tests/test_decode.py            # token-exact against the eager reference (grpo/rollout.py)
    python bench/throughput.py --shape tiny --rollout static

Why. Decoding one token of a dense model has to read every weight once, plus the KV cache of every sequence; at batch
48 that is all the arithmetic there is, so a token costs (weight bytes + KV bytes) / memory bandwidth — for Qwen3-14B
in bf16, 29.5 GB / 4.8 TB/s ≈ 6 ms on an H200. The eager loop (one HF forward per token) loses to that three ways:
~3,600 small PyTorch ops per token (6,400 with LoRA) whose launch cost exceeds the kernels on a GPU; a dynamic cache
that `torch.cat`s each layer's whole cache every token (O(T²) copies); a host sync per token. This module:

- **Preallocated cache written in place.** K and V live in one (L, S, T_max, H_kv, D) buffer each (flash-attn's
  `k_cache` layout). The prompt's K/V are written *compacted*: row r's real tokens sit at slots 0..len_r-1 whatever
  its left padding, so one tensor `lens` (S,) is at once the next write slot, the RoPE position and the attention
  length of every row. A step writes one slot per row (`index_put_`), nothing is copied.
- **Fixed shapes per step.** Positions, lengths, the token index t and the sampler's seed are tensors, not Python
  ints; attention reads the cache up to a *bucket* edge (multiple of `attn_bucket`) with a mask, so every step of a
  bucket has the same shapes and reads the same buffers. That is what lets `torch.cuda.CUDAGraph` capture one step
  per bucket and replay it (`cuda_graphs`, default on CUDA) — one launch per token instead of thousands.
- **No host sync in the token loop** except `bool(done.all())` every `sync_every` tokens; the completion is trimmed
  afterwards to exactly the length the eager loop stops at (one sync at the end), so the outputs are identical.
- **LoRA without extra matmuls and without touching the base.** `lora="merge"` (default) computes W + s·B·A into a
  separate buffer per adapted linear at every `generate` (the base tensors are only read, so the reference policy —
  the same weights with the adapter off — cannot drift); the step then does one matmul per linear, as without LoRA.
  The cost is memory: a copy of every adapted weight (≈ the whole model, 28 GB for 14B in bf16), kept between
  calls so captured graphs stay valid. `lora="adapter"` adds the two small adapter matmuls instead, exactly peft's
  `base(x) + B(A(x))·s` (no extra memory, more launches; graphs hide the launches).
- **Sampling is the loop's own**: `kernels.sample_tokens`, keyed Gumbel-max over HF's top-k/top-p/min-p set with the
  noise of (seed, sequence, t, id) — one Triton pass per row on CUDA, no (S, V) temporaries — as in the eager
  engine, so a sequence draws the same tokens alone or in any batch (batch invariance). t and seed are device
  tensors, read by the kernel from memory, so the captured step needs no new launch arguments per token.

Bandwidth per token (batch S, context n): weights W bytes once + K/V reads 2·L·H_kv·D·n·S·bytes — reading up to the
bucket edge adds at most `attn_bucket` slots per row. GQA is done by viewing the H_q query heads of a step as H_kv
groups of H_q/H_kv queries, so K/V are read once per KV head, never repeated.

Exactness: the layer math is HF's op for op (RMSNorm in fp32, RoPE table, q/k-norm, SwiGLU), but attention runs
over a different key length than HF's growing cache, so logits agree to ~1e-6 in fp32, not bit for bit; tokens
equal the eager engine's in every test (tests/test_decode.py) because a flip needs a near-exact tie of
log p + Gumbel. Both engines are deterministic, so resume and 2 ranks = 1 rank hold within either engine.
Attention is PyTorch SDPA (flash-attn's `flash_attn_with_kvcache` would fit the cache layout; not wired: no GPU to
test it on yet).

Autocast (full fine-tuning: fp32 master weights, bf16 compute): the step runs under the caller's autocast like the
eager forward, op for op, except that the projections' bf16 casts are made once per rollout into buffers of our own
(`cast_projections`; autocast would re-cast every fp32 weight inside every F.linear, every token). The KV cache is
allocated in the compute dtype (`compute_dtype`) and K/V are cast on write — the dtype SDPA casts them to anyway, so
the tokens equal the eager engine's under the same autocast (tests/test_decode.py) and the cache is half the fp32
size. The run is wrapped in autocast with its weight-cast cache off: a captured graph must not keep pointers to cast
copies that the caller's autocast frees on exit.

Memory: the engine keeps its last decoder (the KV cache, 2·L·S·T_max·H_kv·D·bytes), the merged-LoRA copies and the
bf16 casts of fp32 projections between calls, so the next rollout of the same shape reuses buffers and captured
graphs; `release()` frees them.

The prefill (the prompt forward) is the same hand-written layer stack over all P positions (compute-bound, eager).
Only weights and config attributes that are stable across transformers 4.56-5.x are read: the HF modules' weight
tensors (no copy), `variance_epsilon`, `act_fn`, `rotary_emb.inv_freq` / `attention_scaling`.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from grpo import kernels
from grpo.rollout import LocalEngine, has_sharded_layers, sample_tokens


@dataclass
class Linear:
    """One projection as the step uses it: y = x Wᵀ + b (+ Σ s·(x Aᵀ) Bᵀ for unmerged LoRA adapters)."""
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    loras: tuple = ()  # ((A (r, in), B (out, r), scale), ...)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        for a, b, s in self.loras:  # peft's order: result + lora_B(lora_A(x)) * scaling
            y = y + F.linear(F.linear(x, a), b) * s
        return y


@dataclass
class Norm:
    weight: torch.Tensor
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Qwen3RMSNorm, op for op (fp32 statistics, cast back, then the weight)."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


@dataclass
class Layer:
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    ln1: Norm
    ln2: Norm
    q_norm: Norm
    k_norm: Norm
    act: object


@dataclass
class Weights:
    """Views of a Qwen3ForCausalLM's own tensors (plus merged-LoRA buffers), read at every `generate`."""
    embed: torch.Tensor
    layers: list
    norm: Norm
    lm_head: Linear
    inv_freq: torch.Tensor
    rope_scale: float
    n_q: int
    n_kv: int
    head_dim: int
    merged: dict = field(default_factory=dict)

    def pointers(self) -> tuple:
        """Identity of every tensor the step reads: a captured graph is valid while these are unchanged."""
        ts = [self.embed, self.norm.weight, self.lm_head.weight, self.inv_freq]
        for ly in self.layers:
            for lin in (ly.q, ly.k, ly.v, ly.o, ly.gate, ly.up, ly.down):
                ts += [lin.weight] + [t for a, b, _ in lin.loras for t in (a, b)]
            ts += [ly.ln1.weight, ly.ln2.weight, ly.q_norm.weight, ly.k_norm.weight]
        return tuple(t.data_ptr() for t in ts)


def _kept(bufs: dict, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """bufs[name] if it has this shape and dtype, else a new empty one stored there: the same tensor call after call,
    so a captured graph that reads it stays valid."""
    buf = bufs.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = bufs[name] = torch.empty(shape, dtype=dtype, device=device)
    return buf


def _unwrap_linear(module, name: str, lora: str, merged: dict) -> Linear:
    """A plain nn.Linear, or a peft LoRA layer: its base weight plus the active, unmerged adapters."""
    if not hasattr(module, "base_layer"):
        return Linear(module.weight, module.bias)
    base = module.base_layer
    loras = []
    if not getattr(module, "disable_adapters", False):
        done = set(getattr(module, "merged_adapters", ()))
        for a in module.active_adapters:
            if a not in module.lora_A or a in done:
                continue
            if getattr(module, "use_dora", {}).get(a):
                raise ValueError("the static engine does not support DoRA adapters; use --rollout eager")
            loras.append((module.lora_A[a].weight, module.lora_B[a].weight, float(module.scaling[a])))
    if not loras or lora == "adapter":
        return Linear(base.weight, base.bias, tuple(loras))
    # W + Σ s·B·A into a buffer of our own, reused across calls (pointers stay put for captured graphs)
    buf = _kept(merged, name, base.weight.shape, base.weight.dtype, base.weight.device).copy_(base.weight)
    for a, b, s in loras:
        buf.addmm_(b, a, alpha=s)  # (out, r) @ (r, in)
    return Linear(buf, base.bias)


def read_weights(model, *, lora: str = "merge", merged: dict | None = None) -> Weights:
    """The decode view of a (peft-wrapped) Qwen3ForCausalLM. merged: the buffers of the previous call, to reuse."""
    if lora not in ("merge", "adapter"):
        raise ValueError(f"lora must be 'merge' or 'adapter', not {lora!r}")
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg, inner = causal.config, causal.model
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        raise ValueError("the static engine supports full attention only (no sliding window); use --rollout eager")
    rope = inner.rotary_emb
    if getattr(rope, "rope_type", "default") in ("dynamic", "longrope"):
        raise ValueError(f"the static engine needs a fixed RoPE table, not {rope.rope_type!r}; use --rollout eager")
    merged = {} if merged is None else merged
    lin = lambda m, n: _unwrap_linear(m, n, lora, merged)  # noqa: E731
    norm = lambda m: Norm(m.weight, float(m.variance_epsilon))  # noqa: E731
    layers = []
    for i, ly in enumerate(inner.layers):
        at, mlp = ly.self_attn, ly.mlp
        layers.append(Layer(q=lin(at.q_proj, f"{i}.q"), k=lin(at.k_proj, f"{i}.k"), v=lin(at.v_proj, f"{i}.v"),
                            o=lin(at.o_proj, f"{i}.o"), gate=lin(mlp.gate_proj, f"{i}.gate"),
                            up=lin(mlp.up_proj, f"{i}.up"), down=lin(mlp.down_proj, f"{i}.down"),
                            ln1=norm(ly.input_layernorm), ln2=norm(ly.post_attention_layernorm),
                            q_norm=norm(at.q_norm), k_norm=norm(at.k_norm), act=mlp.act_fn))
    embed = inner.embed_tokens
    if hasattr(embed, "base_layer"):
        raise ValueError("the static engine does not support LoRA on the embeddings; use --rollout eager")
    head_dim = layers[0].q_norm.weight.shape[0]
    return Weights(embed=embed.weight, layers=layers, norm=norm(inner.norm), lm_head=lin(causal.lm_head, "lm_head"),
                   inv_freq=rope.inv_freq, rope_scale=float(rope.attention_scaling),
                   n_q=cfg.num_attention_heads, n_kv=cfg.num_key_value_heads, head_dim=head_dim, merged=merged)


PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def cast_projections(w: Weights, dtype: torch.dtype, bufs: dict) -> Weights:
    """w with every projection (weight, bias, LoRA factors; lm_head too) as a `dtype` copy in a buffer kept in `bufs`,
    the same tensors call after call (captured graphs stay valid). For fp32 master weights under bf16 autocast: the
    step then reads 2 bytes per weight per token instead of autocast's 4 read + 2 written + 2 read inside every
    F.linear. The values are autocast's own cast (round to nearest), so the matmuls are unchanged; norms and the
    embedding are not autocast ops, they stay fp32 as under autocast."""
    def cast(name, t):
        if t is None or t.dtype == dtype:
            return t
        return _kept(bufs, name, t.shape, dtype, t.device).copy_(t)

    def lin(x: Linear, name: str) -> Linear:
        return Linear(cast(f"{name}.w", x.weight), cast(f"{name}.b", x.bias),
                      tuple((cast(f"{name}.a{i}", a), cast(f"{name}.b{i}", b), s) for i, (a, b, s) in enumerate(x.loras)))
    layers = [dataclasses.replace(ly, **{p: lin(getattr(ly, p), f"{i}.{p}") for p in PROJECTIONS})
              for i, ly in enumerate(w.layers)]
    return dataclasses.replace(w, layers=layers, lm_head=lin(w.lm_head, "lm_head"))


def _rope(w: Weights, pos: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """pos (...) int → cos, sin (..., D) as Qwen3RotaryEmbedding computes them (fp32, then the model dtype)."""
    freqs = pos[..., None].float() * w.inv_freq.float()                        # (..., D/2)
    emb = torch.cat((freqs, freqs), dim=-1)                                    # (..., D)
    return (emb.cos() * w.rope_scale).to(dtype), (emb.sin() * w.rope_scale).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class KVCache:
    """K and V of every layer for S rows of up to T_max tokens, preallocated: (L, S, T_max, H_kv, D) each."""

    def __init__(self, w: Weights, rows: int, t_max: int, dtype: torch.dtype | None = None):
        shape = (len(w.layers), rows, t_max, w.n_kv, w.head_dim)
        self.k = torch.zeros(shape, dtype=dtype or w.embed.dtype, device=w.embed.device)
        self.v = torch.zeros_like(self.k)
        self.t_max = t_max

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@torch.no_grad()
def compute_dtype(w: Weights) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on for the weights' device (fp32 masters under bf16
    autocast in full fine-tuning), else the weights' own. The KV cache is kept in it."""
    dev = w.embed.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.embed.dtype


def prefill(w: Weights, cache: KVCache, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ids, mask (S, P) left-padded → last-position logits (S, V); writes the prompt's K/V compacted into the cache."""
    S, P = ids.shape
    mask = mask.bool()
    lens = mask.sum(-1)                                                        # (S,)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)                            # (S, P) as the eager loop numbers them
    h = F.embedding(ids, w.embed)                                              # (S, P, H)
    cos, sin = (c[:, :, None] for c in _rope(w, pos, h.dtype))                 # (S, P, 1, D)
    ar = torch.arange(P, device=ids.device)
    # causal ∧ real key; a pad query also sees itself, so no softmax row is all -inf (its output is never used)
    allowed = (ar[None, :, None] >= ar[None, None, :]) & mask[:, None, :] | torch.eye(P, dtype=torch.bool,
                                                                                    device=ids.device)
    allowed = allowed[:, None]                                                 # (S, 1, P, P)
    src = (ar[None] + (P - lens)[:, None]).clamp(max=P - 1)                    # (S, P) slot j ← prompt index of token j
    rep = w.n_q // w.n_kv
    for i, ly in enumerate(w.layers):
        x = ly.ln1(h)
        q = _rotate(ly.q_norm(ly.q(x).view(S, P, w.n_q, w.head_dim)), cos, sin)     # (S, P, Hq, D)
        k = _rotate(ly.k_norm(ly.k(x).view(S, P, w.n_kv, w.head_dim)), cos, sin)    # (S, P, Hkv, D)
        v = ly.v(x).view(S, P, w.n_kv, w.head_dim)
        gather = src[:, :, None, None].expand(S, P, w.n_kv, w.head_dim)
        cache.k[i, :, :P] = k.gather(1, gather)                               # compacted: row r's tokens at 0..len_r-1
        cache.v[i, :, :P] = v.gather(1, gather)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(rep, 1),
                                           v.transpose(1, 2).repeat_interleave(rep, 1), attn_mask=allowed,
                                           scale=w.head_dim ** -0.5)          # (S, Hq, P, D)
        h = h + ly.o(o.transpose(1, 2).reshape(S, P, -1))
        x = ly.ln2(h)
        h = h + ly.down(ly.act(ly.gate(x)) * ly.up(x))
    return w.lm_head(w.norm(h[:, -1]))                                         # (S, V)


def decode_step(w: Weights, cache: KVCache, tok: torch.Tensor, lens: torch.Tensor, kv_len: int) -> torch.Tensor:
    """tok (S,) at slot/position lens (S,) → logits (S, V). Writes K/V at slot lens in place; attends to slots ≤ lens
    among the first kv_len (a bucket edge ≥ max(lens)+1, fixed for a run of steps). No host sync, no allocation that
    depends on the values of tok or lens: the function a CUDA graph captures."""
    S = tok.shape[0]
    rows = torch.arange(S, device=tok.device)
    h = F.embedding(tok, w.embed)                                              # (S, H)
    cos, sin = (c[:, None] for c in _rope(w, lens, h.dtype))                   # (S, 1, D)
    slots = torch.arange(kv_len, device=tok.device)
    allowed = (slots[None] <= lens[:, None])[:, None, None]                    # (S, 1, 1, kv_len)
    rep = w.n_q // w.n_kv
    for i, ly in enumerate(w.layers):
        x = ly.ln1(h)
        q = _rotate(ly.q_norm(ly.q(x).view(S, w.n_q, w.head_dim)), cos, sin)          # (S, Hq, D)
        k = _rotate(ly.k_norm(ly.k(x).view(S, w.n_kv, w.head_dim)), cos, sin)         # (S, Hkv, D)
        v = ly.v(x).view(S, w.n_kv, w.head_dim)
        # in place: slot lens[r] of row r. Under autocast k is fp32 (q/k-norm multiply by fp32 weights) and v bf16;
        # the cache holds the compute dtype, the dtype SDPA casts both to anyway, so the cast here loses nothing
        cache.k[i].index_put_((rows, lens), k.to(cache.k.dtype))
        cache.v[i].index_put_((rows, lens), v.to(cache.v.dtype))
        kk = cache.k[i, :, :kv_len].transpose(1, 2)                            # (S, Hkv, kv_len, D) a view, no copy
        vv = cache.v[i, :, :kv_len].transpose(1, 2)
        # GQA without repeating K/V: the rep query heads sharing KV head g are rep "queries" of that head
        o = F.scaled_dot_product_attention(q.view(S, w.n_kv, rep, w.head_dim), kk, vv, attn_mask=allowed,
                                           scale=w.head_dim ** -0.5)          # (S, Hkv, rep, D)
        h = h + ly.o(o.reshape(S, w.n_q * w.head_dim))
        x = ly.ln2(h)
        h = h + ly.down(ly.act(ly.gate(x)) * ly.up(x))
    return w.lm_head(w.norm(h))                                                # (S, V)


@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float


class Decoder:
    """State of one decode run of S rows: the cache and the buffers a token step reads and writes. `token_step()`
    takes no arguments and returns nothing — all of its inputs and outputs are these buffers — so it can be captured
    as a CUDA graph and replayed; `run()` drives it."""

    def __init__(self, w: Weights, rows: int, prompt_len: int, max_new_tokens: int, *, eos: torch.Tensor, pad: int,
                 sampling: Sampling, attn_bucket: int = 256, cache_dtype: torch.dtype | None = None):
        dev = w.embed.device
        self.w, self.sampling, self.pad, self.bucket = w, sampling, pad, max(1, attn_bucket)
        self.eos = eos.to(dev)
        need = prompt_len + max_new_tokens - 1                                  # last step writes slot P+T-2 at most
        self.cache = KVCache(w, rows, -(-need // self.bucket) * self.bucket, cache_dtype)
        self.max_new_tokens = max_new_tokens
        long = dict(dtype=torch.long, device=dev)
        self.tok = torch.zeros(rows, **long)                                   # (S,) the token fed to the next step
        self.lens = torch.zeros(rows, **long)                                  # (S,) slot = position = cache length
        self.t = torch.zeros((), **long)                                       # index of the token being sampled
        self.seed = torch.zeros((), **long)
        self.seq_ids = torch.zeros(rows, **long)                               # (S,) global sequence ids (noise key)
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)            # (S,)
        self.finish = torch.full((rows,), max_new_tokens, **long)              # (S,) t of each row's EOS
        self.out = torch.full((rows, max_new_tokens), pad, **long)             # (S, T) sampled tokens
        self.kv_len = self.cache.t_max

    def _sample(self, logits: torch.Tensor) -> None:
        """logits (S, V) → token t of every row into the buffers (the eager loop's rule, with t a tensor)."""
        sp = self.sampling
        # t and seed go in as device tensors: the sampler reads them on device (Triton on CUDA, no (S, V)
        # temporaries; torch on CPU), so a captured step replays for every position with no host sync
        tok = kernels.sample_tokens(logits, self.seq_ids, self.t, seed=self.seed, temperature=sp.temperature,
                                    top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p)      # (S,)
        tok = torch.where(self.done, torch.full_like(tok, self.pad), tok)
        hit = torch.isin(tok, self.eos) & ~self.done
        self.finish.copy_(torch.where(hit, self.t, self.finish))
        self.done |= hit
        self.out.index_copy_(1, self.t.view(1), tok[:, None])
        self.tok.copy_(tok)
        self.t += 1

    def token_step(self) -> None:
        """Feed self.tok at self.lens, sample the next token. Reads/writes only preallocated buffers."""
        logits = decode_step(self.w, self.cache, self.tok, self.lens, self.kv_len)
        self.lens += 1
        self._sample(logits)

    def start(self, ids: torch.Tensor, mask: torch.Tensor, *, seed: int, seq_offset: int) -> None:
        """Prefill and sample token 0."""
        self.seed.fill_(seed)
        self.seq_ids.copy_(torch.arange(seq_offset, seq_offset + ids.shape[0], device=ids.device))
        self.done.zero_()
        self.t.zero_()
        self.out.fill_(self.pad)
        self.finish.fill_(self.max_new_tokens)
        logits = prefill(self.w, self.cache, ids, mask)
        self.lens.copy_(mask.sum(-1))
        self._sample(logits)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor, *, seed: int, seq_offset: int, sync_every: int = 16,
            step=None) -> torch.Tensor:
        """ids, mask (S, P) → completion ids (S, T), exactly the eager loop's (pad after EOS, stops when all rows end).
        step(kv_len): runs one token step for that attention bucket (default: self.token_step uncaptured)."""
        P, T = ids.shape[1], self.max_new_tokens
        self.start(ids, mask, seed=seed, seq_offset=seq_offset)
        n = 1
        for t in range(1, T):
            if sync_every and t % sync_every == 0 and bool(self.done.all()):  # sync: one per sync_every tokens
                break
            # step t writes slot ≤ P+t-1: attend up to the bucket edge above it (same shapes for a whole bucket)
            self.kv_len = min(-(-(P + t) // self.bucket) * self.bucket, self.cache.t_max)
            (step or (lambda _: self.token_step()))(self.kv_len)
            n = t + 1
        # the eager loop stops after the token where every row has ended: trim to that length (one sync)
        last = int(self.finish.max()) + 1 if bool(self.done.all()) else n  # sync: once per run
        return self.out[:, :min(n, last)].clone()


def cuda_capture(dec: "Decoder", pool):
    """Warm the step up on a side stream (as torch.cuda.graph requires), then capture one token_step."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        dec.token_step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        dec.token_step()
    return g, g.pool()


class CudaGraphs:
    """One captured `token_step` per attention bucket, replayed; recaptured when the decoder or weights change.
    capture(dec, pool) → (graph with .replay(), pool): cuda_capture, or a stand-in for testing the bookkeeping on CPU."""

    def __init__(self, capture=cuda_capture):
        self.graphs, self.key, self.pool, self.capture = {}, None, None, capture
        self.failed = False  # a capture raised once: this engine steps uncaptured from then on (same tokens)

    def prepare(self, dec: Decoder) -> None:
        """Once per run: keep the graphs if they were captured on this decoder and these very weight tensors."""
        key = (id(dec), dec.w.pointers())
        if key != self.key:
            self.graphs, self.key = {}, key

    def step(self, dec: Decoder, kv_len: int) -> None:
        g = self.graphs.get(kv_len)
        if g is None and not self.failed:
            state = [dec.tok, dec.lens, dec.t, dec.done, dec.finish, dec.out]
            saved = [x.clone() for x in state]  # the warm-up runs the step: undo it (the cache slots it wrote are
            try:                                # rewritten by the real step before anything reads them)
                g, self.pool = self.capture(dec, self.pool)
            except Exception as e:  # an op this torch/GPU cannot capture: slower, never a lost run
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); the static engine decodes "
                              "uncaptured from now on (same tokens, one launch per op)")
                self.failed = True
            for x, y in zip(state, saved):
                x.copy_(y)
            if g is not None:
                self.graphs[kv_len] = g
        if g is None:
            dec.token_step()
        else:
            g.replay()


class StaticEngine(LocalEngine):
    """`--rollout static`: the engine of this module behind grpo.rollout's Engine interface."""
    name = "static"

    def __init__(self, *, sync_every: int = 16, lora: str = "merge", cuda_graphs: bool | None = None,
                 attn_bucket: int = 256, compile: bool = False, capture=cuda_capture):
        if sync_every < 0 or attn_bucket < 1:
            raise ValueError("sync_every must be >= 0 and attn_bucket >= 1")
        self.sync_every, self.lora, self.attn_bucket = sync_every, lora, attn_bucket
        self.cuda_graphs, self.compile = cuda_graphs, compile
        self._merged: dict = {}
        self._cast: dict = {}  # bf16 copies of fp32 master projections (cast_projections)
        self._decoders: dict = {}
        self._graphs = CudaGraphs(capture)
        self._warned_sharded = False

    def release(self) -> None:
        """Free the kept KV cache, merged-LoRA copies and graphs (e.g. before a memory-tight training phase); the next
        generate allocates (and captures) again."""
        failed = self._graphs.failed
        self._decoders, self._merged, self._cast, self._graphs = {}, {}, {}, CudaGraphs(self._graphs.capture)
        self._graphs.failed = failed

    def sample_tokens(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, eos: torch.Tensor,
                      pad: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      min_p: float = 0.0, seed: int = 0, seq_offset: int = 0) -> torch.Tensor:
        """Same contract as grpo.rollout.sample_tokens: (S, P) left-padded prompts → completion ids (S, T)."""
        if has_sharded_layers(model):  # FSDP2 layers too big to gather whole: only HF forwards gather each in turn
            if not self._warned_sharded:
                warnings.warn("FSDP2 layers stay sharded for the rollout (the whole model does not fit a rank, "
                              "grpo.memory): decoding with the eager engine, one all-gather per layer per token")
                self._warned_sharded = True
            return sample_tokens(model, prompt_ids, prompt_mask, eos=eos, pad=pad, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
                                 seq_offset=seq_offset)
        w = read_weights(model, lora=self.lora, merged=self._merged)
        cdtype, dev = compute_dtype(w), w.embed.device.type
        if cdtype != w.embed.dtype:  # fp32 masters under bf16 autocast: cast once per rollout, not once per token
            w = cast_projections(w, cdtype, self._cast)
        sampling = Sampling(temperature, top_p, top_k, min_p)
        S, P = prompt_ids.shape
        # decoders (and their graphs) are kept per shape: the same rollout shape next step reuses the buffers
        key = (S, -(-(P + max_new_tokens - 1) // self.attn_bucket), max_new_tokens, pad, tuple(eos.tolist()),
               tuple(vars(sampling).values()), w.embed.dtype, cdtype, str(w.embed.device))
        dec = self._decoders.get(key)
        if dec is None:
            self._decoders = {}  # one live decoder: bound memory, a new shape frees the old cache first
            dec = Decoder(w, S, P, max_new_tokens, eos=eos, pad=pad, sampling=sampling, attn_bucket=self.attn_bucket,
                          cache_dtype=cdtype)
            self._decoders[key] = dec
        dec.w = w
        step = None
        graphs = self.cuda_graphs if self.cuda_graphs is not None else w.embed.device.type == "cuda"
        if graphs:
            self._graphs.prepare(dec)
            step = lambda kv_len: self._graphs.step(dec, kv_len)  # noqa: E731
        elif self.compile:
            compiled = torch.compile(dec.token_step, mode="reduce-overhead", fullgraph=True)
            step = lambda _: compiled()  # noqa: E731
        if not torch.is_autocast_enabled(dev):
            return dec.run(prompt_ids, prompt_mask, seed=seed, seq_offset=seq_offset, sync_every=self.sync_every,
                           step=step)
        # autocast's weight-cast cache would hand a captured graph bf16 copies that are freed when the caller's
        # autocast exits: off. The projections are cast already (above); what autocast still casts is small
        with torch.autocast(dev, dtype=cdtype, cache_enabled=False):
            return dec.run(prompt_ids, prompt_mask, seed=seed, seq_offset=seq_offset, sync_every=self.sync_every,
                           step=step)
