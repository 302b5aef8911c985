"""Pieces of one GRPO step that the loop (grpo/train.py) calls by name.

    python -m pytest tests/test_train.py -k dynamic_sampling

`keep_varied_groups`: DAPO dynamic sampling (Yu et al. 2025) — a group whose G rewards are all equal has advantage 0
everywhere and teaches nothing, so it is swapped for a group of fresh prompts that does vary, for at most `rounds`
extra rollouts. Every rank draws the same number of rounds (they agree through one all-reduce per round), so the
collectives of the step stay in lockstep and the data cursor advances alike everywhere.
"""
from __future__ import annotations

from typing import Callable

import torch

from grpo import dist
from grpo.advantages import zero_std_groups
from grpo.rollout import Rollouts, concat_groups

Scored = tuple  # (Rollouts, {reward name: (B_r, G) rewards}, {extra: rollout/judge seconds, rollout_tokens, ...})


def keep_varied_groups(first: Scored, draw: Callable[[], Scored], reward: str, rounds: int, pad_id: int) -> Scored:
    """`first` with its zero-variance groups (under reward `reward`) replaced by varied groups from up to `rounds`
    further `draw()`s; zero-variance groups fill in, in order, only if the rounds run out (their advantage is 0).
    Every round's rollout and judge time and sampled tokens are added to the extras: they were all spent."""
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
            extra[k] = extra[k] + extra2[k]
        zero = zero_std_groups(scores2[reward]).tolist()
        varied += [(roll2, scores2, b) for b in range(B_r) if not zero[b]]
    pool = (varied + fillers)[:B_r]
    merged: Rollouts = concat_groups([(r, b) for r, _, b in pool], pad_id)
    return merged, {k: torch.stack([s[k][b] for _, s, b in pool]) for k in scores}, extra
