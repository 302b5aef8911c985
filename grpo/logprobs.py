"""Per-token log-probs of completion tokens under a policy, through grpo/kernels/.

    python -m pytest tests/test_logprobs.py

Only completion positions reach the LM head: the decoder runs on the whole sequence, then hidden states at the
positions that predict completion tokens are gathered ((N, H), N = valid completion tokens) and handed to
`kernels.linear_logprobs`, which never builds the (N, V) logits. `impl` (`--logprob_impl`, the memory planner's
`logprob_impl`) picks the head path — one vocabulary, IMPLS:
  fused     — kernels.linear_logprobs(hidden, W)            memory O(N·H)
  selective — lm_head(hidden) then kernels.selective_logprobs   (N, V) logits, no (N, V) log-softmax
  reference — lm_head, fp32 log_softmax, gather            (N, V) logits + (N, V) fp32 — what TRL does
The kernels' own `impl="auto" | "triton" | "torch"` is a different axis: which backend runs a kernel (Triton on
CUDA, the chunked torch path elsewhere), chosen per call by grpo/kernels; fused and selective use "auto".

Shared prompts. GRPO scores G completions of each prompt, so every prompt row appears G times. The prompt's
activations do not depend on its completion (causal attention), so by default the decoder runs the prompt once per
*distinct* prompt row, keeps its keys/values in a DynamicCache, copies that cache to the G rows (index_select: its
backward sums the G gradients into the one prefix) and runs only the T completion positions on top. At the demo's
shape (P = 139, T = 64, G = 8) that is 8·139 + 64·64 instead of 64·203 token positions through every linear layer:
2.5× fewer. Same math, other summation order (fp32 rounding only). The plain path runs when no row repeats, under
gradient checkpointing (HF drops the cache in training then) and with `share_prompt=False`.
"""
from __future__ import annotations

import inspect

import torch

from grpo import kernels

IMPLS = ("fused", "selective", "reference")


def _distinct_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, T: int):
    """(first (U,) row index of each distinct prompt, inverse (S,) distinct index of each row) or None if none repeat.
    A prompt row is its ids and its mask: the same text padded differently is a different prefix."""
    rows = torch.cat([input_ids[:, :-T], attention_mask[:, :-T]], 1)              # (S, 2P)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)                   # (S,) in [0, U)
    U = int(inverse.max()) + 1                                                    # sync: the prefix batch size
    if U == rows.shape[0]:
        return None
    first = torch.full((U,), rows.shape[0], dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.shape[0], device=rows.device), "amin")  # (U,)
    return first, inverse


def _checkpointing(model) -> bool:
    """Activation checkpointing on? (transformers ≥ 5.x renamed is_gradient_checkpointing; ask the new name first.)"""
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if on is None else on)


def _cache_kw(decoder) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); speak whichever this version's decoder speaks."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _hidden_shared_prompt(decoder, config, input_ids, attention_mask, position_ids, T: int, first, inverse):
    """(S, T, H) hidden states that predict the T completion tokens, the prompt run once per distinct row."""
    from transformers import DynamicCache
    P = input_ids.shape[1] - T
    cache = DynamicCache(config=config)
    kw = _cache_kw(decoder)
    prefix = decoder(input_ids=input_ids[first, :P], attention_mask=attention_mask[first, :P],
                     position_ids=position_ids[first, :P], use_cache=True, **{kw: cache}).last_hidden_state  # (U, P, H)
    cache.reorder_cache(inverse)                                  # (U, …) → (S, …) keys/values; backward sums copies
    rest = decoder(input_ids=input_ids[:, P:-1], attention_mask=attention_mask[:, :-1],
                   position_ids=position_ids[:, P:-1], use_cache=True, **{kw: cache}).last_hidden_state  # (S, T-1, H)
    # the last prompt position predicts completion token 0; completion positions 0..T-2 predict tokens 1..T-1
    return torch.cat([prefix[inverse, -1:], rest], 1)                            # (S, T, H)


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                        *, temperature: float = 1.0, impl: str = "fused", with_entropy: bool = False,
                        share_prompt: bool = True):
    """log p(completion token) for every completion position.

    input_ids, attention_mask: (S, P+T) prompt (left-padded) + completion; completion_mask: (S, T).
    Returns logp (S, T) float32, 0 where completion_mask is 0; with_entropy also returns the mean entropy (0-dim,
    detached) of the sampling distribution over valid tokens. share_prompt: run each distinct prompt row once (see the
    module docstring); False forces one forward over every (S, P+T) row.
    """
    if impl not in IMPLS:
        raise ValueError(f"logprob impl {impl!r} not in {IMPLS}")
    S, T = completion_mask.shape
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                 # (S, P+T) same as during rollout
    decoder = model.get_decoder()
    shared = None
    if share_prompt and T >= 2 and input_ids.shape[1] > T and not _checkpointing(model):
        shared = _distinct_prompts(input_ids, attention_mask, T)
    if shared is not None:
        hidden = _hidden_shared_prompt(decoder, model.config, input_ids, attention_mask, position_ids, T, *shared)
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False).last_hidden_state  # (S, P+T, H)
        hidden = hidden[:, -T - 1:-1]                                             # (S, T, H) predicts tokens P..P+T-1
    valid = completion_mask.bool()                                                # (S, T)
    h = hidden[valid]                                                             # (N, H)
    targets = input_ids[:, -T:][valid]                                            # (N,)
    head = model.get_output_embeddings()
    entropy = None
    if impl == "fused":
        out = kernels.linear_logprobs(h, head.weight, targets, temperature, with_entropy=with_entropy)
    elif impl == "selective":
        out = kernels.selective_logprobs(head(h), targets, temperature, with_entropy=with_entropy)
    else:
        logp_all = torch.log_softmax(head(h).float() / temperature, dim=-1)      # (N, V) fp32: what TRL builds
        out = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        if with_entropy:
            with torch.no_grad():  # from the same (N, V) tensor: no second head matmul
                out = (out, -(logp_all.exp() * logp_all).sum(-1))
    if with_entropy:
        out, entropy = out
        entropy = entropy.detach().mean() if entropy.numel() else torch.zeros((), device=h.device)
    logp = torch.zeros(S, T, dtype=out.dtype, device=h.device)                   # float32 (fp64 for an fp64 model)
    logp = logp.masked_scatter(valid, out)                                        # (S, T)
    return (logp, entropy) if with_entropy else logp


class PolicyLogprobs(torch.nn.Module):
    """The policy as one module whose forward is the completion log-probs (decoder + fused head). Wrapping *this*
    in DDP or FSDP2 (grpo/dist.py parallelize) puts their hooks around exactly what the loss differentiates; the HF
    model's own forward would build the (tokens × vocab) logits we avoid."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, completion_mask, *, temperature=1.0, impl="fused", with_entropy=False):
        return completion_logprobs(self.model, input_ids, attention_mask, completion_mask, temperature=temperature,
                                   impl=impl, with_entropy=with_entropy)


def check_kernels(head_weight: torch.Tensor, *, temperature: float = 1.0, n: int = 64, tol: float = 2e-3) -> dict:
    """Start-up self-check: the Triton path against the chunked torch path on n random rows at the model's own head
    shape and dtype, forward and backward (a few ms). Raises with the way out (`--logprob_impl reference`) instead of
    training on wrong log-probs if a kernel misbehaves on this GPU / driver / triton. Returns the measured errors."""
    g = torch.Generator(device=head_weight.device).manual_seed(0)
    V, H = head_weight.shape
    hidden = (torch.randn(n, H, generator=g, device=head_weight.device) * H ** -0.5).to(head_weight.dtype)
    targets = torch.randint(0, V, (n,), generator=g, device=head_weight.device)
    out = {}
    for impl in ("triton", "torch"):
        h = hidden.clone().requires_grad_(True)
        logp = kernels.linear_logprobs(h, head_weight.detach(), targets, temperature, impl=impl)
        logp.backward(torch.linspace(-1, 1, n, device=h.device))
        out[impl] = (logp.detach(), h.grad.float())
    ratio_err = (out["triton"][0] - out["torch"][0]).exp().sub(1).abs().max().item()   # what a PPO ratio sees
    grad_err = ((out["triton"][1] - out["torch"][1]).norm() / out["torch"][1].norm().clamp_min(1e-30)).item()
    if not (ratio_err <= tol and grad_err <= 2e-2):  # `not <=` also catches NaN
        raise RuntimeError(f"Triton log-prob kernel disagrees with the torch path on this device: |exp(Δlogp) − 1| = "
                           f"{ratio_err:.2e}, relative grad error {grad_err:.2e}. Train with --logprob_impl reference "
                           f"and report it (python bench/bench_kernels.py prints the details).")
    return {"kernel_check/ratio_err": ratio_err, "kernel_check/grad_err": grad_err}
