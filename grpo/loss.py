"""Clipped-surrogate policy losses for GRPO, one small function per normaliser, looked up in `LOSSES`.

    python -m pytest tests/test_loss.py

All four variants share `_per_token_loss` (PPO clip + β·KL_k3 at each completion token) and differ only in how
the (B*G, T) per-token loss becomes a scalar. That reduction is the whole difference between them: it decides
how much one token of a long answer weighs against one of a short answer, and whether k gradient-accumulation
micro-batches add up to the gradient of one big batch.

Accumulating micro-batches (what the loop must do so that the step equals one big batch):
  - grpo, dr_grpo (fixed `max_len`): micro-batches with the same number of sequences; average their losses.
  - dapo: pass `num_tokens` = valid tokens of the whole optimizer step (all micro-batches, all ranks) and SUM
    the micro-batch losses; under DDP, whose all-reduce averages, multiply by the world size.
  - bnpo: normalises by its own micro-batch's token count, so it matches the big batch only when every
    micro-batch holds the same number of tokens (TRL's behaviour before its PR #6024; dapo is the exact fix).

`combine(name, share, world)` says how the loop weighs one micro-batch's loss, from the normaliser each entry
declares in `GLOBAL_NORMALISER`, so the loop never branches on a loss's name.

Signature of every entry: fn(logp, old_logp, ref_logp, advantages, mask, *, eps_low, eps_high, beta,
max_len=None, num_tokens=None, token_weights=None) -> (loss, metrics). logp, old_logp, ref_logp, mask,
token_weights: (B*G, T); advantages: (B*G,). metrics are 0-dim detached tensors so the loop syncs once for all.

Off-policy correction for a served engine (--rollout server): its log-probs differ from ours (other kernels,
bf16), so its samples come from a slightly different policy. `truncated_is_weights` gives the per-token truncated
importance weight min(π_old/π_sampler, cap) (TIS; TRL's vllm_importance_sampling_correction, mode token_truncate),
passed as `token_weights`: it multiplies the clipped surrogate only, not the KL term, as in TRL. `logp_gap` is the
diagnostic to log every step.
"""
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

# exp(20) ≈ 4.9e8: far outside any clip range, still finite in fp32/bf16 and times any advantage
LOG_RATIO_CLAMP = 20.0


def _per_token_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor,
                    eps_low: float, eps_high: float, beta: float,
                    token_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """(B*G, T) per-token −w·min(ratio·A, clip(ratio, 1−ε_low, 1+ε_high)·A) + β·KL_k3, 0 at masked positions;
    w = token_weights (detached; 1 when None).

    old_logp and ref_logp at masked positions may be anything (±inf, NaN): the log-ratios are selected with
    torch.where *before* exp, so neither the forward nor the backward ever touches them. Multiplying by the
    mask after exp would not do: 0·inf = NaN, and the gradient of exp(inf) poisons the backward.
    """
    valid = mask.bool()  # (B*G, T)
    n = valid.sum()
    adv = advantages[:, None].to(logp.dtype)  # (B*G, 1)

    # ratio = π/π_old; clamp the log-ratio before exp so a stale old_logp cannot overflow
    log_ratio = torch.where(valid, logp - old_logp, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B*G, T)
    ratio = log_ratio.exp()  # (B*G, T)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)  # (B*G, T)
    loss = -torch.minimum(ratio * adv, clipped * adv)  # (B*G, T)
    if token_weights is not None:
        # selected before the product for the same reason as above: a NaN weight at a pad would poison the backward
        loss = loss * torch.where(valid, token_weights.detach().to(loss.dtype), 0.0)  # (B*G, T)

    metrics: dict[str, Tensor] = {}
    if beta > 0:  # at beta == 0 there is no reference forward at all, so ref_logp may be None
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (the adapter-off forward); pass it or set beta=0")
        # KL_k3 = exp(r) − r − 1, r = ref − logp (Schulman 2020): ≥ 0, unbiased for KL(π‖π_ref) under π samples
        r = torch.where(valid, ref_logp - logp, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B*G, T)
        kl = r.exp() - r - 1  # (B*G, T), exactly 0 at masked positions (r = 0)
        loss = loss + beta * kl
        metrics["actor/kl"] = kl.detach().sum() / n.clamp(min=1)
    loss = torch.where(valid, loss, 0.0)  # (B*G, T)

    with torch.no_grad():
        # the clipped branch is the active one (zero gradient) when the ratio left the trust region in the
        # direction the advantage pushes it: down for A < 0, up for A > 0
        low = valid & (ratio < 1 - eps_low) & (adv < 0)  # (B*G, T)
        high = valid & (ratio > 1 + eps_high) & (adv > 0)  # (B*G, T)
        denom = n.clamp(min=1).to(logp.dtype)
        metrics["loss/clip_frac_low"] = low.sum() / denom
        metrics["loss/clip_frac_high"] = high.sum() / denom
        metrics["loss/ratio_mean"] = torch.where(valid, ratio, 0.0).sum() / denom
        metrics["loss/tokens"] = n.to(logp.dtype)
    return loss, metrics


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, eps_low, eps_high, beta, max_len=None,
              num_tokens=None, token_weights=None):
    """GRPO (Shao et al. 2024, DeepSeekMath): mean over each sequence's valid tokens, then mean over the B*G
    sequences. Normaliser 1/(B*G·|o_i|) per token, as in the paper's 1/G Σ_i 1/|o_i| Σ_t. Why: each answer
    counts once, whatever its length; the cost is a length bias (a token of a short answer weighs more).
    A sequence with no valid tokens adds 0 but still counts in B*G, so equal-sized micro-batches average exactly.
    """
    tok, metrics = _per_token_loss(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta, token_weights)
    per_seq = tok.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B*G,)
    return per_seq.mean(), metrics


def bnpo_loss(logp, old_logp, ref_logp, advantages, mask, *, eps_low, eps_high, beta, max_len=None,
              num_tokens=None, token_weights=None):
    """BNPO (TRL's loss_type="bnpo"): Σ over valid tokens ÷ valid tokens of this micro-batch. Why: every token
    weighs the same within the micro-batch (no length bias); but the weight depends on the micro-batch's own
    token count, so accumulated micro-batches do not equal one big batch — use dapo for that.
    """
    tok, metrics = _per_token_loss(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta, token_weights)
    return tok.sum() / mask.sum().clamp(min=1), metrics


def dr_grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, eps_low, eps_high, beta, max_len=None,
                 num_tokens=None, token_weights=None):
    """Dr.GRPO (Liu et al. 2025, arXiv 2503.20783): Σ over valid tokens ÷ (B*G · max_len), max_len = T_max the
    constant generation budget (default: this batch's T). Why: a constant normaliser weighs every token the
    same regardless of its answer's length or its batch's token count; with a fixed max_len, equal-sized
    micro-batches average to exactly the big batch.
    """
    T = mask.shape[1]
    max_len = T if max_len is None else max_len
    if max_len < T:
        raise ValueError(f"max_len={max_len} is shorter than the completions (T={T}); pass the generation budget")
    tok, metrics = _per_token_loss(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta, token_weights)
    return tok.sum() / (tok.shape[0] * max_len), metrics


def dapo_loss(logp, old_logp, ref_logp, advantages, mask, *, eps_low, eps_high, beta, max_len=None,
              num_tokens=None, token_weights=None):
    """DAPO token-level loss (Yu et al. 2025, arXiv 2503.14476): Σ over valid tokens ÷ num_tokens, the valid
    tokens of the WHOLE optimizer step across micro-batches and ranks (default: this call's mask.sum()).
    Why: every token of the step weighs 1/num_tokens, so summing the micro-batch losses gives exactly the
    gradient of one big batch, however the tokens are spread over micro-batches and ranks.
    """
    tok, metrics = _per_token_loss(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta, token_weights)
    num_tokens = mask.sum() if num_tokens is None else num_tokens
    denom = torch.as_tensor(num_tokens, dtype=tok.dtype, device=tok.device).clamp(min=1)
    return tok.sum() / denom, metrics


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """(B*G, T) min(exp(old_logp − sampler_logp), cap), 0 at masked positions: the truncated importance weight of
    each sampled token, trainer policy over sampling engine (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"). Truncating from above only bounds the variance a few tokens the engine
    found unlikely could add; the bias it leaves is toward the engine's distribution, which is what was sampled."""
    if cap <= 0:
        raise ValueError(f"importance-sampling cap must be > 0, got {cap}: pass e.g. --rollout_is_cap=3")
    valid = mask.bool()  # (B*G, T)
    log_w = torch.where(valid, old_logp.detach() - sampler_logp, 0.0).clamp(max=math.log(cap))  # (B*G, T)
    return torch.where(valid, log_w.exp(), 0.0)


def logp_gap(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """rollout/logp_gap_mean, rollout/logp_gap_max: |trainer − engine| log-prob of the sampled tokens over valid
    tokens (0-dim, detached). ~1e-6 for the same fp32 model; bf16 engines sit around 1e-2 mean; a growing max
    says the engine samples with other weights than the trainer's (stale adapter, wrong model)."""
    valid = mask.bool()  # (B*G, T)
    gap = torch.where(valid, (old_logp.detach() - sampler_logp).abs(), 0.0)  # (B*G, T)
    return {"rollout/logp_gap_mean": gap.sum() / valid.sum().clamp(min=1), "rollout/logp_gap_max": gap.max()}


LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "grpo": grpo_loss,
    "bnpo": bnpo_loss,
    "dr_grpo": dr_grpo_loss,
    "dapo": dapo_loss,
}

# True: the loss is already ÷ the valid tokens of the whole step (every micro-batch, every rank), so micro-batch and
# rank losses ADD up to the step's. False: each micro-batch is normalised on its own, so the step is their mean.
GLOBAL_NORMALISER: dict[str, bool] = {"grpo": False, "bnpo": False, "dr_grpo": False, "dapo": True}


class Combine(NamedTuple):
    grad: float    # × the micro-batch loss before backward
    report: float  # × the micro-batch loss before adding it to the step's reported loss (on this rank)
    ranks: str     # "sum" | "mean": how the reported loss combines over ranks


def combine(name: str, share: float, world: int) -> Combine:
    """How one micro-batch's loss enters the step, `share` = its sequences / the rank's sequences this step.
    Global normaliser: losses add up, and × world undoes DDP/FSDP's mean over ranks into the sum it needs.
    Otherwise: weight by the micro-batch's share (equal-sized micro-batches then average exactly), mean over ranks."""
    if GLOBAL_NORMALISER[name]:
        return Combine(grad=float(world), report=1.0, ranks="sum")
    return Combine(grad=share, report=share, ranks="mean")
