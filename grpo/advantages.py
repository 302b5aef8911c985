"""Group-relative advantages: each sample's reward measured against the other samples of its prompt.

    python -m pytest tests/test_advantages.py

rewards (B, G): B prompts, G sampled completions each. NaN (a reward function returned None, e.g. every
criterion unjudgeable) marks a sample with no reward: it gets advantage 0 and is left out of every mean and
std, so one unjudgeable answer neither moves its siblings' advantages nor gets pushed up or down itself.

Standard deviations are sample stds (Bessel, n − 1), as `torch.std` in TRL and DeepSeekMath's reference code.
No eps is added anywhere: a group whose finite rewards are all equal carries no learning signal, and we give it
advantage exactly 0 instead of ±(rounding residue)/eps, which for a constant group can be arbitrarily large.
"All equal" has a tolerance: a group whose spread (max − min) is at most SPREAD_RTOL = 1e-5 of the reward scale
(the largest |reward| in the batch, at least 1) is zero-variance. Rewards that differ only by float rounding (1e-6
on a 0–20 Hybrid score; float32 resolves ~2e-6 there) would otherwise be divided by their own tiny std and get
full-size ±1 advantages; the smallest real difference of a rubric reward (one criterion) is orders of magnitude larger.
"""
import torch
from torch import Tensor


SPREAD_RTOL = 1e-5


def zero_std_groups(rewards: Tensor) -> Tensor:
    """(B,) bool: groups whose finite rewards are all equal (spread ≤ SPREAD_RTOL · max(1, max |reward|) of the
    batch), or that have fewer than two of them.

    These groups have zero advantage for every sample; the loop logs their fraction (`frac_reward_zero_std`)
    and DAPO's dynamic sampling drops them. Compared on max − min, not as std < eps, because
    `r - mean(r)` of a constant group is not exactly 0 in floating point (0.1 + 0.1 + 0.1 != 0.3).
    """
    valid = torch.isfinite(rewards)  # (B, G)
    hi = torch.where(valid, rewards, -torch.inf).amax(dim=1)  # (B,)
    lo = torch.where(valid, rewards, torch.inf).amin(dim=1)  # (B,)
    scale = torch.where(valid, rewards.abs(), 0.0).amax().clamp(min=1.0)  # () the batch's reward scale
    few = valid.sum(dim=1) < 2  # (B,) no or one finite reward
    return few | (hi - lo <= SPREAD_RTOL * scale)


def _group_std(r: Tensor, valid: Tensor, centred: Tensor) -> Tensor:
    """(B, 1) sample std of each group's finite rewards (the GRPO paper's normalisation)."""
    n = valid.sum(dim=1, keepdim=True)  # (B, 1)
    return (centred.square().sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()


def _batch_std(r: Tensor, valid: Tensor, centred: Tensor) -> Tensor:
    """(1, 1) sample std of all finite rewards in the batch, around the batch mean.

    Group mean with batch std is "Lite PPO" (Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM
    Reasoning") and TRL's `scale_rewards="batch"`: a group with a tiny spread is no longer blown up to unit
    scale. "Batch" is the tensor passed in: all-gather the rewards first if it should span ranks.
    """
    n = valid.sum()
    mean = torch.where(valid, r, 0.0).sum() / n.clamp(min=1)
    dev = torch.where(valid, r - mean, 0.0)  # (B, G)
    return (dev.square().sum() / (n - 1).clamp(min=1)).sqrt().reshape(1, 1)


def _no_std(r: Tensor, valid: Tensor, centred: Tensor) -> Tensor:
    """Mean-centring only, as Dr.GRPO (Liu et al. 2025, arXiv 2503.20783): dividing by the group std
    up-weights prompts that are nearly always right or nearly always wrong."""
    return torch.ones_like(r[:1, :1])


_STD = {"group": _group_std, "batch": _batch_std, "none": _no_std}


def group_advantages(rewards: Tensor, scale: str = "group") -> Tensor:
    """(B, G) advantages: reward minus its group's mean, divided by the std that `scale` names.

    scale: "group" (÷ group std, GRPO), "batch" (÷ std over the whole batch, Lite PPO), "none" (Dr.GRPO).
    NaN rewards give 0 and are excluded from the statistics; zero-variance groups give exactly 0.
    """
    if scale not in _STD:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of: {', '.join(_STD)}")
    # fp64: (B, G) is tiny, and it keeps the mean/std of large, close rewards exact enough not to matter
    r = rewards.double()  # (B, G)
    valid = torch.isfinite(r)  # (B, G)
    n = valid.sum(dim=1, keepdim=True)  # (B, 1)
    mean = torch.where(valid, r, 0.0).sum(dim=1, keepdim=True) / n.clamp(min=1)  # (B, 1)
    flat = zero_std_groups(r)[:, None]  # (B, 1)
    centred = torch.where(valid & ~flat, r - mean, 0.0)  # (B, G); flat groups exactly 0, not rounding residue
    std = _STD[scale](r, valid, centred)  # (B, 1) or (1, 1)
    adv = centred / torch.where(std > 0, std, 1.0)  # std == 0 only when every centred entry is already 0
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)
