"""Rollout: G sampled completions per prompt with the model's KV cache.

    python -m pytest tests/test_rollout.py

A hand-written decode loop instead of `model.generate`, for one property: **batch-invariant sampling**. The random
number that picks token t of sequence s is a hash of (seed, s, t, vocab id), not a draw from a shared RNG stream, so a
sequence gets the same tokens whether it is sampled alone, in a batch of 48, on rank 0 of 2 or after a resume. That is
what makes `--resume` bit-exact and 2-process training equal 1-process training. Sampling is Gumbel-max with that
noise (`argmax(log p + Gumbel)` is an exact sample of softmax), so no `torch.multinomial` and no host sync per token.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from grpo import dist, kernels

_MASK32 = 0xFFFFFFFF


@dataclass
class Rollouts:
    """One rollout batch; rows are prompt-major: row b*G + g is sample g of prompt b."""
    prompt_ids: torch.Tensor       # (B*G, P) left-padded
    prompt_mask: torch.Tensor      # (B*G, P) 1 = real token
    completion_ids: torch.Tensor   # (B*G, T) right-padded with pad id after EOS
    completion_mask: torch.Tensor  # (B*G, T) 1 up to and including EOS
    texts: list                    # B*G decoded completions (special tokens removed)
    truncated: torch.Tensor        # (B*G,) bool — hit max_new_tokens before EOS
    num_generations: int
    sampler_logp: torch.Tensor | None = None  # (B*G, T) float32 log p of each token under the sampling engine's own
    #                                           distribution (a served engine fills it; local engines leave None)

    @property
    def input_ids(self) -> torch.Tensor:  # (B*G, P+T)
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B*G, P+T)
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


def concat_groups(groups: list, pad_id: int) -> Rollouts:
    """One Rollouts from groups of several rollout batches: [(rollouts, b), ...] takes rows b*G..b*G+G-1 of each.
    Prompts are re-left-padded and completions re-right-padded to the longest (DAPO dynamic sampling)."""
    G = groups[0][0].num_generations
    P = max(r.prompt_ids.shape[1] for r, _ in groups)
    T = max(r.completion_ids.shape[1] for r, _ in groups)
    rows = lambda r, b, name: getattr(r, name)[b * G:(b + 1) * G]  # noqa: E731
    left = lambda x, n, v: torch.nn.functional.pad(x, (n - x.shape[1], 0), value=v)  # noqa: E731
    right = lambda x, n, v: torch.nn.functional.pad(x, (0, n - x.shape[1]), value=v)  # noqa: E731
    return Rollouts(
        prompt_ids=torch.cat([left(rows(r, b, "prompt_ids"), P, pad_id) for r, b in groups]),
        prompt_mask=torch.cat([left(rows(r, b, "prompt_mask"), P, 0) for r, b in groups]),
        completion_ids=torch.cat([right(rows(r, b, "completion_ids"), T, pad_id) for r, b in groups]),
        completion_mask=torch.cat([right(rows(r, b, "completion_mask"), T, 0) for r, b in groups]),
        texts=[t for r, b in groups for t in r.texts[b * G:(b + 1) * G]],
        truncated=torch.cat([rows(r, b, "truncated") for r, b in groups]), num_generations=G,
        sampler_logp=None if any(r.sampler_logp is None for r, _ in groups) else
        torch.cat([right(rows(r, b, "sampler_logp"), T, 0.0) for r, b in groups]))


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (lowbias32 by Chris Wellons) on int64 tensors; products stay below 2**63."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seed: int, seq_ids: torch.Tensor, t: int, vocab: int) -> torch.Tensor:
    """Gumbel(0,1) noise (rows, V) that depends only on (seed, sequence id, position t, vocab id)."""
    v = torch.arange(vocab, device=seq_ids.device, dtype=torch.int64)                      # (V,)
    key = _hash32(_hash32(seq_ids.to(torch.int64) * 0x9E3779B1 + seed) + t * 0x85EBCA77)  # (rows,)
    bits = _hash32(key[:, None] * 0x27D4EB2F + v[None, :])                                 # (rows, V)
    u = (bits.to(torch.float64) + 0.5) / 2**32                                             # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u)).to(torch.float32)


def filter_logits(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """logits (rows, V) → filtered log-probs at `temperature`, renormalised over the kept tokens; removed are -inf.

    HF's warpers in HF's order (transformers `_get_logits_processor`): temperature, top-k, top-p, min-p, each
    applied to what the previous one kept, with min_tokens_to_keep=1:
      top-k  keep x >= the k-th largest (ties with it are kept, as `scores < topk[..., -1]` removes only below)
      top-p  on the distribution renormalised after top-k: keep a token if the mass of tokens above it < top_p
      min-p  keep p >= min_p · p_max (Nguyen et al. 2024); the ratio ignores renormalisation, so order is moot
    One departure: a group of tokens tied at the top-p cut is kept whole; HF keeps whichever members its sort
    happens to list first (torch.sort promises no order among ties). Every filter is then a threshold on the
    log-prob, which is what lets kernels.sample_tokens find the kept set without sorting.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)                  # (rows, V)
    if 0 < top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]                                # (rows, 1)
        logp = torch.log_softmax(logp.masked_fill(logp < kth, float("-inf")), dim=-1)  # renormalise, as HF does
    if top_p < 1.0:
        sorted_logp = logp.sort(dim=-1, descending=True).values                     # (rows, V)
        p = sorted_logp.double().exp()                                               # fp64: the cut is a sum of V
        mass_before = p.cumsum(-1) - p                                               # mass of the tokens above
        n_keep = (mass_before < top_p).sum(-1, keepdim=True).clamp(min=1)            # (rows, 1); top_p=0 keeps 1
        cut = sorted_logp.gather(-1, n_keep - 1)                                     # smallest kept log-prob
        logp = torch.log_softmax(logp.masked_fill(logp < cut, float("-inf")), dim=-1)
    if min_p > 0.0:
        # p >= min_p · p_max  ⇔  log p >= log p_max + log min_p
        logp = logp.masked_fill(logp < logp.max(-1, keepdim=True).values + math.log(min_p), float("-inf"))
        logp = torch.log_softmax(logp, dim=-1)
    return logp


def completion_masks(completion_ids: torch.Tensor, eos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """completion_ids (S, T) → (mask (S, T) long: 1 up to and including the first EOS, truncated (S,) bool: no EOS)."""
    is_eos = torch.isin(completion_ids, eos)                                             # (S, T)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0                          # strictly after the first EOS
    return (~after_eos).long(), ~is_eos.any(-1)


def cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); speak whichever this version speaks."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def stop_token_ids(model, tokenizer) -> torch.Tensor:
    """The tokenizer's EOS plus the generation config's (Qwen3 stops at <|im_end|> and <|endoftext|>)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return torch.tensor(sorted(i for i in ids if i is not None), device=next(model.parameters()).device)


class Engine(Protocol):
    """What the loop calls to roll out; pick one with make_engine(--rollout). All return the same Rollouts."""
    name: str

    def generate(self, model, tokenizer, prompts: list, *, num_generations: int, max_new_tokens: int,
                 temperature: float, top_p: float, top_k: int, min_p: float, seed: int, seq_offset: int,
                 max_prompt_len: int | None, rollout_batch: int) -> Rollouts: ...

    def after_update(self, model, step: int) -> None: ...  # weight-sync hook; a no-op for in-process engines

    def check(self) -> None: ...  # reachable and ready, before any model loads; a no-op for in-process engines


class LocalEngine:
    """An in-process engine: tokenise, chunk by rollout_batch, decode each chunk with `sample_tokens`, assemble."""
    name = "local"

    @property
    def stats(self) -> dict:
        return {}  # per-run counters the loop logs (a served engine counts its requests); none in process

    def check(self) -> None:
        pass  # nothing to reach: the model is in this process

    def sample_tokens(self, model, prompt_ids, prompt_mask, **kw) -> torch.Tensor:  # (S, P) → (S, T)
        raise NotImplementedError

    def after_update(self, model, step: int) -> None:
        pass  # the engine reads the model's own tensors at every generate: nothing to sync

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: list, *, num_generations: int = 1, max_new_tokens: int = 256,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0,
                 seq_offset: int = 0, max_prompt_len: int | None = None, rollout_batch: int = 0) -> Rollouts:
        """Sample `num_generations` completions for each prompt (a list of chat messages).

        seed, seq_offset: sequence row r is sampled with noise keyed by (seed, seq_offset + r); pass the global index
        of the first row so the same sequence gets the same tokens on any rank or batch layout. temperature 0 = greedy.
        rollout_batch: decode at most this many sequences at once (0 = all), bounding the KV cache; same samples.
        """
        device = next(model.parameters()).device
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        prompt_ids = enc["input_ids"].repeat_interleave(num_generations, 0).to(device)     # (B*G, P)
        prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, 0).to(device)
        if max_prompt_len and prompt_ids.shape[1] > max_prompt_len:  # keep the end: the question is the last turn
            prompt_ids, prompt_mask = prompt_ids[:, -max_prompt_len:], prompt_mask[:, -max_prompt_len:]
        eos, pad = stop_token_ids(model, tokenizer), tokenizer.pad_token_id
        rows, step = prompt_ids.shape[0], rollout_batch or prompt_ids.shape[0]
        parts = [self.sample_tokens(model, prompt_ids[i:i + step], prompt_mask[i:i + step], eos=eos, pad=pad,
                                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                    min_p=min_p, seed=seed, seq_offset=seq_offset + i) for i in range(0, rows, step)]
        T = max(p.shape[1] for p in parts)
        completion_ids = torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1]), value=pad) for p in parts])
        completion_mask, truncated = completion_masks(completion_ids, eos)                 # (B*G, T), (B*G,)
        decoded = tokenizer.batch_decode(completion_ids.masked_fill(completion_mask == 0, pad).tolist(),
                                         skip_special_tokens=True)
        return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, decoded, truncated, num_generations)


class EagerEngine(LocalEngine):
    """`--rollout eager`: one HF forward per token over HF's dynamic cache — slow, simple, the reference."""
    name = "eager"

    def __init__(self):
        pass

    def sample_tokens(self, model, prompt_ids, prompt_mask, **kw) -> torch.Tensor:
        return sample_tokens(model, prompt_ids, prompt_mask, **kw)


# Every factory has one signature, factory(cfg, out_dir, **options): it reads from the run's Config what it needs
# (cfg None: explicit options only — benches and tests), and explicit options win. So the loop builds any engine the
# same way, and a new engine is one entry here, not a branch in train.py.
def _eager(cfg=None, out_dir=None, **options) -> Engine:
    return EagerEngine(**options)


def _static(cfg=None, out_dir=None, **options) -> Engine:
    from grpo.decode import StaticEngine  # decode.py imports this module's sampler
    return StaticEngine(**options)


def _server(cfg=None, out_dir=None, **options) -> Engine:
    from pathlib import Path
    from grpo.rollout_server import ServerEngine  # only a served run needs it (and the openai client)
    if cfg is not None:  # adapters are saved in the run directory, where the server reads them
        options = {"base_url": cfg.rollout_base_url, "model": cfg.rollout_model,
                   "adapter_dir": str(Path(out_dir) / "adapters"), **options}
    return ServerEngine(**options)


# --rollout NAME. "local" is the in-process default (the static engine); "eager" is the reference it must equal
ENGINES: dict[str, Callable[..., Engine]] = {"eager": _eager, "static": _static, "local": _static,
                                             "server": _server}


def make_engine(name: str, cfg=None, out_dir=None, **options) -> Engine:
    """The engine called `name` (--rollout NAME), built from the run's config and directory when given
    (`make_engine(cfg.rollout, cfg, out)` in the loop), and from explicit options."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name](cfg, out_dir, **options)


def generate(model, tokenizer, prompts: list, **kw) -> Rollouts:
    """The eager engine's generate (the reference); kept for existing callers. See LocalEngine.generate."""
    return EagerEngine().generate(model, tokenizer, prompts, **kw)


def has_sharded_layers(model) -> bool:
    """True when some weights are FSDP2 shards (DTensors): the rollout of a model whose layers did not fit one rank
    whole (grpo.dist.root_unsharded(whole=False)); each layer's forward is then an all-gather, a collective."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def all_done(done: torch.Tensor, lockstep: bool) -> bool:
    """Every row has ended — on every rank when `lockstep` (sharded layers: a rank that stopped decoding early would
    leave the others waiting in their all-gathers forever)."""
    if not lockstep:
        return bool(done.all())
    return dist.all_reduce_sum((~done).sum().float()).item() == 0  # sync: rows still decoding, all ranks


@torch.no_grad()
def sample_tokens(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, eos: torch.Tensor, pad: int,
                  max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0, seed: int = 0, seq_offset: int = 0) -> torch.Tensor:
    """The decode loop on token ids: prompt_ids/prompt_mask (S, P) left-padded → completion ids (S, T), pad after EOS.
    Stops early when every row has produced a token in `eos` (pass an empty tensor to always decode max_new_tokens)."""
    device, rows = prompt_ids.device, prompt_ids.shape[0]
    seq_ids = torch.arange(seq_offset, seq_offset + rows, device=device)
    was_training = model.training
    model.eval()  # also turns gradient checkpointing off, so the KV cache is used
    mask = prompt_mask
    position = (mask.cumsum(-1) - 1).clamp(min=0)                                       # (S, P) left-pad aware
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    cache_kw = cache_argument(model)
    cache, logits = getattr(out, cache_kw), out.logits[:, -1]                           # (S, V)
    next_pos = position[:, -1:] + 1                                                      # (S, 1)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    lockstep = has_sharded_layers(model)  # FSDP2 layers all-gather in every forward: every rank runs as many
    tokens = []
    for t in range(max_new_tokens):
        tok = kernels.sample_tokens(logits, seq_ids, t, seed=seed, temperature=temperature, top_k=top_k,
                                    top_p=top_p, min_p=min_p)                           # (S,) 0 = greedy
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        tokens.append(tok)
        done = done | torch.isin(tok, eos)
        if t + 1 == max_new_tokens or all_done(done, lockstep):  # sync: one per token, lets a batch stop early
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # finished rows keep decoding pads; ignored
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                    **{cache_kw: cache})
        cache, logits, next_pos = getattr(out, cache_kw), out.logits[:, -1], next_pos + 1
    model.train(was_training)
    return torch.stack(tokens, dim=1)                                                    # (S, T)
