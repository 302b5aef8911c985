"""Crash leftovers and logs: stale save dirs, metrics.jsonl after a resume, standard JSON, judge counters.

    python -m pytest -q tests/test_checkpoint.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo import checkpoint
from grpo.metrics import RunLogger, plot_rewards, read_metrics
from grpo.train import main

SMALL = ["--prompts_per_step=2", "--num_generations=4", "--max_new_tokens=12", "--lr=5e-3", "--log_rewards="]


def _strict_rows(path: Path) -> list:
    def no_constant(name):
        raise AssertionError(f"{name} is not standard JSON")
    return [json.loads(line, parse_constant=no_constant) for line in path.read_text().splitlines()]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_remove_stale_deletes_only_our_dead_tmp_dirs(tmp_path):
    root = tmp_path / "checkpoints"
    dead, live = root / f"step-000004.tmp-{_dead_pid()}", root / f"step-000004.tmp-{os.getppid()}"
    keep = [live, root / "step-000003", root / "step-000004.tmp-abc", root / "notes.tmp-1", root / "step-4.tmp-1"]
    for d in [dead, *keep]:
        d.mkdir(parents=True)
        (d / "optimizer.pt").write_bytes(b"partial")
    (root / f"step-000005.tmp-{_dead_pid()}").write_text("a file, not a save dir")
    assert checkpoint.remove_stale(tmp_path) == [dead]
    assert not dead.exists() and all(d.exists() for d in keep)
    assert checkpoint.latest(tmp_path) == root / "step-000003"


def test_logger_writes_standard_json_and_plot_survives_a_torn_line(tmp_path):
    log = RunLogger(tmp_path, 3, plot=False)
    log.log(1, {"reward/mean": float("nan"), "reward/std": float("inf"), "loss": -float("inf"), "lr": 0.1})
    log.log(2, {"reward/mean": 1.5, "reward/std": 0.5, "loss": 0.0, "lr": 0.1})
    log.close()
    rows = _strict_rows(tmp_path / "metrics.jsonl")
    assert rows[0] == {"step": 1, "reward/mean": None, "reward/std": None, "loss": None, "lr": 0.1}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/me')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    plot_rewards(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_resume_after_a_kill_logs_each_step_once_and_continues_the_judge_counters(tmp_path):
    """A run killed after logging step 2 but before its step-2 checkpoint (its last line torn, a half-written save
    left behind), resumed with --resume=auto: the stale save dir is removed, metrics.jsonl holds steps 1-2 once each
    with the values of an uninterrupted run, judge/* counters continue from the checkpoint, the plot is drawn."""
    args = SMALL + ["--steps=2", "--save_every=1", "--plot=true"]
    main(args + [f"--out={tmp_path / 'straight'}"])
    run = tmp_path / "split"
    main(args + [f"--out={run}"])
    final = checkpoint.latest(run)
    assert final.name == "step-000002"
    final.rename(run / "checkpoints" / f"step-000002.tmp-{_dead_pid()}")  # the kill came mid-save
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    main(args + [f"--out={run}", "--resume=auto"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    a, b = _strict_rows(tmp_path / "straight" / "metrics.jsonl"), _strict_rows(run / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2]
    keys = ["reward/mean", "prompts_seen", "skipped_steps", "judge/calls", "judge/criteria", "judge/unknown"]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert b[-1]["judge/calls"] == 2 * 2 * 4 - b[-1]["judge/duplicates"] > 0
    assert (run / "reward_curve.png").stat().st_size > 0


@pytest.mark.parametrize("keep_last", [1, 3])
def test_keep_last_prunes_to_k(tmp_path, keep_last):
    from grpo.model import build_tiny, load_model
    import torch
    model, _ = load_model(build_tiny(), device=torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    for step in range(1, 5):
        checkpoint.save(tmp_path, step, model, opt, sched, {"cursor": step}, keep_last=keep_last)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"step-{k:06d}" for k in range(5 - keep_last, 5)]
