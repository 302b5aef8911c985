"""Nothing silent (issue 14): a step with no signal is skipped, a dead judge stops the run, user errors are one line.

    python -m pytest -q tests/test_reliability.py

Each test here failed on the code before the fix: AdamW stepped on zero gradients (momentum moved the weights), a run
against an unreachable judge exited 0, the judge's timeout was fixed at 60 s, bad flags crashed late or not at all,
and a long prompt was sent to the judge whole.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import checkpoint
from grpo.step import apply_update
from grpo.train import cli, main
from rewards import REWARDS

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--prompts_per_step=2", "--num_generations=4", "--max_new_tokens=12", "--plot=false", "--lr=1e-3",
         "--log_rewards="]


def _rows(run: Path) -> list:
    def strict(name):  # NaN / Infinity are not JSON
        raise AssertionError(f"non-standard JSON constant {name} in metrics.jsonl")
    return [json.loads(line, parse_constant=strict) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _state(ckpt: Path) -> tuple:
    """(weights, optimizer state dict, scheduler state dict, state.json) of one checkpoint directory."""
    from safetensors.torch import load_file
    sub = "adapter/adapter_model.safetensors" if (ckpt / "adapter").exists() else "model/model.safetensors"
    return (load_file(ckpt / sub), torch.load(ckpt / "optimizer.pt"), torch.load(ckpt / "scheduler.pt"),
            json.loads((ckpt / "state.json").read_text()))


def _assert_same_training_state(a: Path, b: Path) -> None:
    (wa, oa, sa, _), (wb, ob, sb, _) = _state(a), _state(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"weights moved {a.name}→{b.name}"
    assert oa["state"].keys() == ob["state"].keys()
    for k in oa["state"]:
        for name, t in oa["state"][k].items():  # exp_avg, exp_avg_sq and the step counter
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(ob["state"][k][name])), (k, name)
    assert sa["last_epoch"] == sb["last_epoch"] and sa["_last_lr"] == sb["_last_lr"]


def test_apply_update_skips_a_zero_gradient_exactly():
    """After one real step AdamW has momentum; a zero gradient would still move the weights (m/√v ≠ 0) and advance
    the schedule. apply_update must leave parameters, optimizer state and scheduler exactly as they were."""
    from grpo.config import parse_args
    cfg = parse_args([])
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0 / (u + 1))
    p.grad = torch.tensor([0.5, -1.0, 0.25])
    assert apply_update([p], opt, sched, cfg.grad_clip)[1]
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}, sched.last_epoch, sched.get_last_lr())
    for bad in (torch.zeros(3), torch.tensor([1.0, float("inf"), 0.0]), torch.tensor([float("nan")] * 3)):
        p.grad = bad
        norm, applied = apply_update([p], opt, sched, cfg.grad_clip)
        assert not applied and p.grad is None
        assert torch.equal(p.detach(), before[0])
        assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
        assert (sched.last_epoch, sched.get_last_lr()) == before[2:]


def test_step_without_signal_is_skipped_and_counted(tmp_path, monkeypatch):
    """Step 1 has varied rewards (a real update, so AdamW has momentum); steps 2-5 have none: every reward NaN, +inf,
    None (judge could not tell), or all equal. Each of those steps leaves weights, every optimizer state tensor and
    the scheduler bit-for-bit as after step 1, is counted (`skipped_steps`, `skipped/no_signal`) and logged, while the
    data cursor still advances. ±inf is unknown, never a value, and metrics.jsonl stays standard JSON."""
    B, G = 2, 4
    script = {2: float("nan"), 3: float("inf"), 4: None, 5: 7.0}
    calls = {"n": 0}

    def scripted(rubric, met):  # called B*G times per step, in order
        step = calls["n"] // (B * G) + 1
        calls["n"] += 1
        return float(calls["n"] % 3) if step == 1 else script[step]
    monkeypatch.setitem(REWARDS, "hybrid", scripted)
    main(SMALL + ["--steps=5", "--save_every=1", "--keep_last=5", "--weight_decay=0.01", "--max_unknown_steps=0",
                  "--max_new_tokens=4", f"--out={tmp_path}"])  # the rewards are scripted: 4 tokens say as much as 12
    ckpts = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == [f"step-{k:06d}" for k in range(1, 6)]
    w0 = _state(ckpts[0])[0]
    assert any(w0[k].abs().sum() > 0 for k in w0)
    for prev, cur in zip(ckpts, ckpts[1:]):
        _assert_same_training_state(prev, cur)
    states = [_state(c)[3] for c in ckpts]
    assert [s["cursor"] for s in states] == [B * k for k in range(1, 6)]  # the data stream moves on
    assert [s["skipped"] for s in states] == [0, 1, 2, 3, 4]
    rows = _rows(tmp_path)
    assert rows[0]["skipped_steps"] == 0 and "skipped/reason" not in rows[0] and rows[0]["grad_norm"] > 0
    for r, want_unknown in zip(rows[1:], [1.0, 1.0, 1.0, 0.0]):
        assert r["skipped/reason"] == "no_signal" and r["loss"] is None
        assert r["reward/unknown_frac"] == want_unknown
    assert [r["skipped/no_signal"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["reward/mean"] for r in rows[1:]] == [None, None, None, 7.0]  # inf is not a mean of "Infinity"


def _judge_args(server, out: Path) -> list:
    return SMALL + ["--judge=openai", "--judge_model=loopback", f"--judge_base_url={server.url}", f"--out={out}"]


def test_dead_judge_stops_the_run_with_its_url_and_last_error(tmp_path, capsys):
    """Every request answers HTTP 500 (the client retries, then gives up): each step's rewards are all unknown.
    With --max_unknown_steps=2 the run stops at step 2 with rc 2 and one line naming the judge URL and the last
    error; the step-1 checkpoint is complete and loadable; each step's console line counts the failures."""
    from tests.loopback import LoopbackJudgeServer
    with LoopbackJudgeServer(faults=lambda key, attempt: "500") as server:
        rc = cli(_judge_args(server, tmp_path) + ["--steps=6", "--save_every=1", "--max_unknown_steps=2"])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "2 consecutive steps" in errors[0] and server.url in errors[0]
    assert "InternalServerError" in errors[0]
    steps = [line for line in captured.out.splitlines() if line.startswith("step 0000")]  # tqdm.write: stdout
    assert len(steps) == 2 and all("judge unknown 1.00 errors" in s and "errors 0" not in s for s in steps)
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
    assert checkpoint.latest(tmp_path).name == "step-000001"
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))


def test_judge_timeout_flag_reaches_the_client(tmp_path):
    """The first attempt of every request hangs for 3 s: with --judge_timeout=0.5 the client gives up on it and
    retries (2 attempts per request), instead of waiting for the hung reply (1 attempt, 3 s a step)."""
    from tests.loopback import LoopbackJudgeServer
    with LoopbackJudgeServer(faults=lambda key, attempt: "slow" if attempt == 0 else None, slow_s=3.0) as server:
        main(_judge_args(server, tmp_path) + ["--steps=1", "--judge_timeout=0.5"])
        attempts = dict(server.attempts)
    assert attempts and all(n == 2 for n in attempts.values()), attempts
    assert _rows(tmp_path)[0]["reward/unknown_frac"] == 0


def test_long_prompt_is_clipped_for_the_judge(tmp_path, monkeypatch):
    """A 50 kB question reaches the judge cut to the policy's --max_prompt_len tokens (its end kept), not whole."""
    from grpo import train
    from grpo.model import build_tiny, load_model
    from rewards.judge import grade_sync
    rubric = [{"criterion": "Mentions aspirin for chest pain", "points": 5}]
    long = "word " * 10_000 + "What should I take for chest pain?"
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps({"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": long}],
                                          "rubrics": rubric}) for i in range(2)) + "\n")
    seen = []

    def spy(judge, items):
        seen.extend(items)
        return grade_sync(judge, items)
    monkeypatch.setattr(train, "grade_sync", spy)
    main(SMALL + ["--steps=1", f"--data={data}", "--max_prompt_len=64", f"--out={tmp_path / 'run'}"])
    _, tokenizer = load_model(build_tiny(), device=torch.device("cpu"))
    for question, _, _ in seen:
        text = question[-1]["content"]
        assert text.endswith("What should I take for chest pain?") and text.startswith("…")
        assert len(tokenizer(text[1:], add_special_tokens=False)["input_ids"]) <= 64 + 1  # + a split at the cut


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--save_every=0"], "--save_every must be >= 1"),
    (["--prompts_per_step=0"], "--prompts_per_step must be >= 1"),
    (["--keep_last=0"], "--keep_last must be >= 1"),
    (["--lr=-1"], "--lr must be a finite number > 0"),
    (["--judge=openai", "--judge_model=m"], "needs an API key: set OPENAI_API_KEY"),
])
def test_user_errors_are_one_line_before_any_model_loads(argv, message, monkeypatch, capsys):
    from grpo import train

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the user error was reported")
    monkeypatch.setattr(train, "load_model", no_model)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("content, message", [(b"", "no samples (the file is empty)"),
                                              (b'{"prompt_id": "a", "prompt": "\xff", "rubrics": []}\n', ":1: not UTF-8")])
def test_bad_data_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, content, message):
    from grpo import train
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("model loaded before the data error"))
    (tmp_path / "d.jsonl").write_bytes(content)
    assert cli([f"--data={tmp_path / 'd.jsonl'}", f"--out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(tmp_path / "d.jsonl") in err[0], err


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_command_line_user_error_is_one_line_exit_2_and_debug_shows_the_traceback():
    done = _run([sys.executable, "grpo/train.py", "--steps", "0"])
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "error: --steps must be >= 1, got 0\n")
    with pytest.raises(ValueError, match="--steps must be >= 1"):  # --debug: the exception itself, traceback and all
        cli(["--steps", "0", "--debug"])


def test_user_error_under_torchrun_is_reported_once_with_exit_code_2():
    """torchrun itself always prints its ChildFailedError report and exits 1 when a worker exits non-zero (nothing a
    worker can do avoids that); what we guarantee: our one line comes first and once, the worker's exit code is 2,
    and no traceback of ours follows."""
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                 "grpo/train.py", "--steps", "0"])
    lines = done.stderr.splitlines()
    assert done.returncode != 0
    assert lines[0] == "error: --steps must be >= 1, got 0" and done.stderr.count("error: --steps") == 1
    assert "exitcode  : 2" in done.stderr and "grpo/train.py\", line" not in done.stderr
