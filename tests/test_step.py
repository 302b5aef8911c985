"""grpo/step.py on hand-built rollouts: keep_varied_groups (DAPO dynamic sampling: which groups are kept, in what
order, every round's time and tokens counted) and grpo_step (the phases it clocks, the metrics it reduces, a step
without signal that trains nothing)."""
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


# ---- grpo_step: the one step the trainer and bench/throughput.py both run ----
def _learner(beta: float):
    from grpo.config import TrainConfig
    from grpo.dist import parallelize
    from grpo.model import Reference, random_model
    from grpo.step import Learner
    torch.manual_seed(0)
    model = random_model("tiny", dtype=torch.float32, device=torch.device("cpu"), vocab_size=64)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    cfg = TrainConfig(prompts_per_step=2, num_generations=2, max_new_tokens=3, beta=beta, num_iterations=2,
                      micro_batch=3, reward="r", log_rewards="log")
    return model, opt, cfg, Learner(parallelize(model, "none"), Reference(model, keep_copy=beta > 0), opt, params)


def _draw(rewards: list):
    def draw(clock):
        with clock("rollout"):
            roll, scores, extra = _batch(1, rewards)
        with clock("judge"):
            pass
        return roll, scores, {"rollout_tokens": extra["rollout_tokens"], "format_ok": 0.25}
    return draw


def test_grpo_step_runs_every_phase_in_the_clock_and_reduces_the_metrics():
    from grpo.step import Clock, TRAIN_PHASES, grpo_step
    model, opt, cfg, learner = _learner(beta=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    clock = Clock()
    done = grpo_step(_draw([[0.0, 1.0], [2.0, 2.0]]), learner, cfg, clock, pad_id=0)
    assert set(clock.time) == {"rollout", "judge", *TRAIN_PHASES} and all(v > 0 for v in clock.time.values())
    assert not done.no_signal and done.bad_updates == 0 and done.reason is None
    assert done.num_tokens == 12 and done.rewards.tolist() == [[0.0, 1.0], [2.0, 2.0]]
    m = done.metrics
    assert m["reward/mean"] == 1.25 and m["reward/zero_std_frac"] == 0.5 and m["reward/log/mean"] == 12.5
    assert m["rollout/format_ok"] == 0.25 and m["rollout/completion_len"] == 3 and m["loss/tokens"] == 12
    assert m["actor/kl"] >= 0 and m["loss/total"] is not None and len(opt.state) > 0  # μ = 2 updates applied
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_grpo_step_without_signal_trains_nothing_and_runs_no_train_phase():
    from grpo.step import Clock, grpo_step
    model, opt, cfg, learner = _learner(beta=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    clock = Clock()
    done = grpo_step(_draw([[1.0, 1.0], [2.0, 2.0]]), learner, cfg, clock, pad_id=0)
    assert done.no_signal and done.reason == "no_signal" and set(clock.time) == {"rollout", "judge"}
    assert done.metrics["loss/total"] is None and done.metrics["actor/kl"] is None and not opt.state
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
