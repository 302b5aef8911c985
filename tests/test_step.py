"""grpo/step.py keep_varied_groups (DAPO dynamic sampling) on hand-built rollouts: which groups are kept, in what
order, and that every round's time and tokens are counted."""
import torch

from grpo.rollout import Rollouts
from grpo.step import keep_varied_groups

G = 2


def _batch(tag: int, rewards: list) -> tuple:
    """Two groups of G samples; completion token ids = tag*10 + group, so a kept group is recognisable."""
    B = len(rewards)
    ids = torch.tensor([[tag * 10 + b] * 3 for b in range(B) for _ in range(G)])  # (B*G, 3)
    roll = Rollouts(prompt_ids=torch.ones(B * G, 2, dtype=torch.long), prompt_mask=torch.ones(B * G, 2, dtype=torch.long),
                    completion_ids=ids, completion_mask=torch.ones_like(ids), texts=[""] * (B * G),
                    truncated=torch.zeros(B * G, dtype=torch.bool), num_generations=G)
    extra = {"time/rollout": 1.0, "time/judge": 0.5, "rollout_tokens": torch.tensor(3 * B * G)}
    return roll, {"r": torch.tensor(rewards), "log": torch.tensor(rewards) * 10}, extra


def test_flat_groups_are_replaced_by_varied_ones_and_every_round_counts():
    draws = iter([_batch(2, [[1.0, 1.0], [0.0, 0.5]]), _batch(3, [[0.0, 1.0], [0.0, 1.0]])])
    roll, scores, extra = keep_varied_groups(_batch(1, [[0.0, 0.0], [0.0, 1.0]]), lambda: next(draws), "r", 5, 0)
    # first batch's group 1 (varied), then the first draw's group 1; the draw of batch 3 is never needed
    assert roll.completion_ids[::G, 0].tolist() == [11, 21]
    assert scores["r"].tolist() == [[0.0, 1.0], [0.0, 0.5]] and scores["log"].tolist() == [[0.0, 10.0], [0.0, 5.0]]
    assert extra["time/rollout"] == 2.0 and extra["time/judge"] == 1.0 and extra["rollout_tokens"].item() == 24
    assert next(draws)[0].completion_ids[0, 0].item() == 30  # still there: one round sufficed


def test_zero_variance_groups_fill_in_when_rounds_run_out():
    flat = lambda: _batch(2, [[1.0, 1.0], [2.0, 2.0]])  # noqa: E731
    roll, scores, extra = keep_varied_groups(_batch(1, [[3.0, 3.0], [0.0, 1.0]]), flat, "r", 2, 0)
    assert roll.completion_ids[::G, 0].tolist() == [11, 10]  # the varied group, then the first batch's flat one
    assert scores["r"].tolist() == [[0.0, 1.0], [3.0, 3.0]] and extra["time/rollout"] == 3.0  # 2 rounds drawn
    roll, _, extra = keep_varied_groups(_batch(1, [[3.0, 3.0], [0.0, 1.0]]), flat, "r", 0, 0)
    assert roll.completion_ids[::G, 0].tolist() == [11, 10] and extra["time/rollout"] == 1.0
