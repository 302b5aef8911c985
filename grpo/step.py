"""One GRPO step, the same function for the trainer (grpo/train.py) and the profiler (bench/throughput.py).

    python -m pytest tests/test_step.py tests/test_train.py tests/test_throughput.py

    draw(clock)                 → this rank's B_r prompts × G samples, scored          (the caller's: the trainer
                                                                                          samples its data stream, the
                                                                                          bench random prompts)
    keep_varied_groups          → DAPO dynamic sampling, if --dynamic_sampling
    group_advantages            → over every rank's rewards                            (grpo/advantages.py)
    old (μ > 1), reference (β > 0) log-probs, no grad                                  (grpo/logprobs.py)
    μ optimizer updates, gradient accumulation over micro-batches                      (grpo/loss.py, AdamW)

Every phase runs inside `clock(name)`: rollout and judge (inside draw), old_logp, ref_logp, policy_fwd, policy_bwd,
optimizer. The trainer's `Clock` adds up seconds; the bench's also synchronizes CUDA and records peak memory per phase.

`keep_varied_groups`: DAPO dynamic sampling (Yu et al. 2025) — a group whose G rewards are all equal has advantage 0
everywhere and teaches nothing, so it is swapped for a group of fresh prompts that does vary, for at most `rounds`
extra rollouts. Every rank draws the same number of rounds (they agree through one all-reduce per round), so the
collectives of the step stay in lockstep and the data cursor advances alike everywhere.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from grpo import dist
from grpo.advantages import group_advantages, zero_std_groups
from grpo.logprobs import completion_logprobs
from grpo.loss import LOSSES, combine, logp_gap, truncated_is_weights
from grpo.rollout import Rollouts, concat_groups

Scored = tuple  # (Rollouts, {reward name: (B_r, G) rewards, NaN = unknown}, {rollout_tokens, format_ok, ...})

# loss metrics that are means over tokens (the rest: over sequences); rollout/logp_gap_max is the mean of the
# micro-batches' maxima, exact with one micro-batch
TOKEN_MEANS = {"actor/entropy", "actor/kl", "loss/clip_frac_low", "loss/clip_frac_high", "loss/ratio_mean",
               "rollout/logp_gap_mean"}
TRAIN_PHASES = ("old_logp", "ref_logp", "policy_fwd", "policy_bwd", "optimizer")


class Clock:
    """Seconds per phase: `with clock("judge"): ...` adds the time inside to clock.time["judge"]."""

    def __init__(self):
        self.time: dict = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.time[name] += time.perf_counter() - t0


@dataclass
class Learner:
    """What a step trains, and where."""
    policy: torch.nn.Module                  # grpo.dist.parallelize(model, ...): forward = completion log-probs
    reference: object                        # grpo.model.Reference: `with reference.active() as ref_model`
    optimizer: torch.optim.Optimizer
    params: list                             # the trainable parameters (after sharding), for clipping
    scheduler: object = None                 # LR schedule stepped with every applied update, or None
    amp: Callable = contextlib.nullcontext   # a fresh autocast context per call (grpo.model.autocast)
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1


@dataclass
class StepResult:
    rollouts: Rollouts        # what was trained on (after dynamic sampling)
    rewards: torch.Tensor     # (B, G) the trained reward, every rank, NaN = unknown
    metrics: dict             # this step's loss/…, actor/…, rollout/…, reward/… values, reduced over ranks
    extra: dict               # the draws' extras, rollout_tokens summed over rounds
    num_tokens: float         # completion tokens trained on, all ranks
    no_signal: bool           # no advantage ≠ 0 anywhere: nothing was trained
    bad_updates: int          # updates not applied for a non-finite or zero gradient (of μ)
    reason: str | None        # why something was not applied: no_signal | nonfinite | zero_grad


def zero_std_frac(rewards: torch.Tensor, num_prompts: int) -> float:
    """Fraction of all `num_prompts` groups (every rank) whose rewards (B_r, G) are all equal: no GRPO signal."""
    return dist.all_reduce_sum(zero_std_groups(rewards).float().sum()).item() / num_prompts  # sync


def grpo_step(draw: Callable[[Clock], Scored], learner: Learner, cfg, clock: Clock, pad_id: int) -> StepResult:
    """One step: draw, advantages, log-probs, μ updates (module docstring). `cfg` is the trainer's TrainConfig; the
    step reads its reward, dynamic-sampling, advantage, loss, log-prob and micro-batch fields."""
    policy, world, rank, amp = learner.policy, learner.world, learner.rank, learner.amp
    B_r = cfg.prompts_per_step // world
    # ---- rollout + judge; DAPO dynamic sampling swaps zero-variance groups for fresh prompts ----
    roll, scores, extra = draw(clock)
    frac_zero = zero_std_frac(scores[cfg.reward], cfg.prompts_per_step)
    zero_after = {}
    if cfg.dynamic_sampling:
        roll, scores, extra = keep_varied_groups((roll, scores, extra), lambda: draw(clock), cfg.reward,
                                                 cfg.max_resample_rounds, pad_id)
        zero_after = {"dynamic/zero_std_after": zero_std_frac(scores[cfg.reward], cfg.prompts_per_step)}
    rewards = scores[cfg.reward]                                              # (B_r, G), NaN = unknown
    gathered = {k: dist.all_gather_cat(v) for k, v in scores.items()}        # each (B, G), all ranks
    all_rewards = gathered[cfg.reward]                                        # (B, G)
    adv_all = group_advantages(all_rewards, scale=cfg.adv_scale)              # (B, G)
    advantages = adv_all[rank * B_r:(rank + 1) * B_r].reshape(-1).to(learner.device)  # (B_r*G,)
    # no advantage ≠ 0 (every reward unknown, or every group flat): the loss and its gradient are 0, yet AdamW's
    # momentum and weight decay would still move the weights — skip the update, keep the optimizer and schedule
    # exactly as they were. The caller's data cursor has advanced: those prompts are consumed.
    no_signal = not bool(adv_all.ne(0).any())  # sync: decides whether to train; same on every rank (gathered)
    valid_seq = ~torch.isnan(rewards.reshape(-1)).to(learner.device)         # unknown reward ⇒ masked out
    input_ids, attn = roll.input_ids, roll.attention_mask                     # (B_r*G, P+T)
    cmask = roll.completion_mask * valid_seq[:, None]                         # (B_r*G, T)
    S = input_ids.shape[0]
    mb = cfg.micro_batch or S
    chunks = [slice(i, min(i + mb, S)) for i in range(0, S, mb)]
    logprobs = dict(temperature=cfg.temperature, impl=cfg.logprob_impl)

    # ---- old and reference log-probs (no grad) ----
    old_logp = ref_logp = None
    with torch.no_grad():
        if cfg.num_iterations > 1 and not no_signal:  # μ = 1: old = current policy, ratio ≡ 1, no extra forward
            with clock("old_logp"), amp():
                old_logp = torch.cat([policy(input_ids[c], attn[c], cmask[c], **logprobs) for c in chunks])  # (S, T)
        if cfg.beta > 0 and not no_signal:
            with clock("ref_logp"), amp(), learner.reference.active() as ref_model:
                ref_logp = torch.cat([completion_logprobs(ref_model, input_ids[c], attn[c], cmask[c], **logprobs)
                                      for c in chunks])                       # (S, T)

    # ---- μ optimizer updates on this batch, gradient accumulation over micro-batches ----
    num_tokens = dist.all_reduce_sum(cmask.sum().float())  # dapo: tokens of the whole step, all ranks
    loss_fn = LOSSES[cfg.loss]
    sums = {}  # the keys in `summed` add up over ranks below; the rest are means over ranks
    summed = {"loss/tokens", *TOKEN_MEANS, *(("loss/total",) if combine(cfg.loss, 1.0, world).ranks == "sum" else ())}
    grad_norm, bad, reason = float("nan"), 0, "no_signal" if no_signal else None
    for _ in range(0 if no_signal else cfg.num_iterations):
        for i, c in enumerate(chunks):
            with dist.gradient_sync(policy, enabled=i == len(chunks) - 1), amp():  # all-reduce once, after the last
                with clock("policy_fwd"):
                    logp, entropy = policy(input_ids[c], attn[c], cmask[c], with_entropy=True, **logprobs)
                    old = old_logp[c] if old_logp is not None else logp.detach()
                    is_w, gap = None, {}
                    if roll.sampler_logp is not None:  # a served engine sampled: correct for its other kernels
                        gap = logp_gap(old, roll.sampler_logp[c], cmask[c])
                        if cfg.rollout_is_cap > 0:
                            is_w = truncated_is_weights(old, roll.sampler_logp[c], cmask[c], cfg.rollout_is_cap)
                    loss, m = loss_fn(logp, old, None if ref_logp is None else ref_logp[c], advantages[c], cmask[c],
                                      eps_low=cfg.eps_low, eps_high=cfg.eps_high, beta=cfg.beta,
                                      max_len=cfg.max_new_tokens, num_tokens=num_tokens, token_weights=is_w)
                    m.update(gap)
                    w = (c.stop - c.start) / S
                    part = combine(cfg.loss, w, world)  # the loss's own normaliser says how micro-batches add up
                with clock("policy_bwd"):
                    (loss * part.grad).backward()
            sums["loss/total"] = sums.get("loss/total", 0.0) + (loss * part.report).detach()
            # per-token means (entropy, kl, clip fractions) weighted by this micro-batch's share of the step's
            # tokens on all ranks, counts added: the step's values equal one pass over the whole global batch
            w_tok = cmask[c].sum() / num_tokens.clamp(min=1)
            for k, v in {"actor/entropy": entropy, **m}.items():
                weight = w_tok if k in TOKEN_MEANS else 1.0 if k == "loss/tokens" else w
                sums[k] = sums.get(k, 0.0) + v.detach() * weight
            del logp, loss, entropy
        with clock("optimizer"):
            grad_norm, applied = apply_update(learner.params, learner.optimizer, learner.scheduler, cfg.grad_clip)
        bad += not applied
        reason = reason or (None if applied else "nonfinite" if not math.isfinite(grad_norm) else "zero_grad")

    # ---- metrics: reduce over ranks once (one host sync) ----
    stats = {k: v / cfg.num_iterations for k, v in sums.items()}  # averages over the μ updates
    stats.update({"rollout/completion_len": roll.completion_mask.sum(-1).float().mean(),
                  "rollout/truncated_frac": roll.truncated.float().mean()})
    if "format_ok" in extra:
        stats["rollout/format_ok"] = extra["format_ok"]
    reduced = dist.all_reduce_sum(torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in stats.values()]))
    metrics = {k: v if k in summed else v / world for k, v in zip(stats, reduced.tolist())}  # sums, else means
    finite = all_rewards[~torch.isnan(all_rewards)]
    metrics.update({
        "reward/mean": finite.mean().item() if finite.numel() else float("nan"),
        "reward/std": finite.std().item() if finite.numel() > 1 else 0.0,
        "reward/unknown_frac": torch.isnan(all_rewards).float().mean().item(),  # None or non-finite, every rank
        "reward/zero_std_frac": frac_zero,
        **{f"reward/{k}/mean": float(np.nanmean(v.numpy())) if not torch.isnan(v).all() else float("nan")
           for k, v in gathered.items()},
        "actor/grad_norm": grad_norm, **zero_after,
    })
    if no_signal:  # nothing was trained: no loss or KL to report (null, not 0)
        metrics.update({"loss/total": None, **({"actor/kl": None} if cfg.beta > 0 else {})})
    return StepResult(roll, all_rewards, metrics, extra, num_tokens.item(), no_signal, bad, reason)


def apply_update(params, optimizer, scheduler, grad_clip: float) -> tuple[float, bool]:
    """Clip to `grad_clip` (0 = off) and step — unless the loss or a gradient is non-finite, or the gradient is exactly
    0 (AdamW would still move the weights by momentum and decay), in which case nothing steps, the scheduler included
    (the caller counts it). Gradients arrive already averaged over ranks by DDP / FSDP2."""
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()  # sync: decides whether to apply
    applied = math.isfinite(norm) and norm > 0
    if applied:
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


def keep_varied_groups(first: Scored, draw: Callable[[], Scored], reward: str, rounds: int, pad_id: int) -> Scored:
    """`first` with its zero-variance groups (under reward `reward`) replaced by varied groups from up to `rounds`
    further `draw()`s; zero-variance groups fill in, in order, only if the rounds run out (their advantage is 0).
    Every round's sampled tokens (and rollout / judge seconds, where an extra carries them) are added to the
    extras: they were all spent."""
    roll, scores, extra = first
    B_r = scores[reward].shape[0]
    zero = zero_std_groups(scores[reward]).tolist()
    varied = [(roll, scores, b) for b in range(B_r) if not zero[b]]  # (rollouts, scores, group index)
    fillers = [(roll, scores, b) for b in range(B_r) if zero[b]]
    for _ in range(rounds):
        if not dist.all_reduce_sum(torch.tensor(float(len(varied) < B_r))).item():  # sync: no rank is short
            break
        roll2, scores2, extra2 = draw()
        for k in ("time/rollout", "time/judge", "rollout_tokens"):
            if k in extra and k in extra2:
                extra[k] = extra[k] + extra2[k]
        zero = zero_std_groups(scores2[reward]).tolist()
        varied += [(roll2, scores2, b) for b in range(B_r) if not zero[b]]
    pool = (varied + fillers)[:B_r]
    merged: Rollouts = concat_groups([(r, b) for r, _, b in pool], pad_id)
    return merged, {k: torch.stack([s[k][b] for _, s, b in pool]) for k in scores}, extra
