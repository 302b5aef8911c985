"""The training loop end to end on CPU: the demo learns, resume is bit-exact, 2 processes equal 1, checkpoints are atomic."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo import checkpoint
from grpo.config import parse_args
from grpo.demo import sample_answer
from grpo.metrics import summary_line
from grpo.model import load_model
from grpo.step import apply_update
from grpo.train import main

ROOT = Path(__file__).resolve().parents[1]
# 12 tokens cannot hold the output format: under the tiny preset's --malformed=wrong every completion would score as
# the empty answer and no step would train, so these loop tests grade the best-effort answer
SMALL = ["--prompts_per_step=2", "--num_generations=4", "--max_new_tokens=12", "--plot=false", "--lr=1e-3",
         "--malformed=graded"]


def _metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt: Path) -> dict:
    sub = "adapter/adapter_model.safetensors" if (ckpt / "adapter").exists() else "model/model.safetensors"
    return load_file(ckpt / sub)


DEMO_SHORT = ["--steps=40", "--save_every=40"]  # the tiny preset (SFT warm start, then GRPO), 40 of its 80 GRPO steps


@pytest.mark.slow
def test_demo_learns_format_and_reward(tmp_path, capsys):
    """The embedded demo, shortened: after the SFT warm start GRPO raises the reward AND format_ok (a malformed
    completion is graded as the empty answer: the tiny preset's --malformed=wrong), completions end by EOS, the PNG
    is written, and the closing summary line is the one computed from metrics.jsonl."""
    main([f"--out={tmp_path}", "--plot=true", *DEMO_SHORT])
    rows = _metrics(tmp_path)
    k = 10

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)
    first, last = rows[:k], rows[-k:]
    reward, fmt = [(mean(key, first), mean(key, last)) for key in ("reward/mean", "rollout/format_ok")]
    # measured (seed 0, 2-core CPU): reward 1.09 → 1.68, format_ok 0.63 → 0.82, truncated 0.13 → 0.06
    assert reward[1] > 1.2 * reward[0], reward
    assert fmt[1] > fmt[0] + 0.08, fmt
    assert 0 < mean("rollout/truncated_frac", last) < 0.5  # most end by EOS: the parser and the format are exercised
    assert (tmp_path / "reward_curve.png").stat().st_size > 0
    assert summary_line(rows, reward="hybrid") in capsys.readouterr().out
    for key in ("step", "reward/mean", "reward/std", "frac_reward_zero_std", "loss", "reward/hybrid/mean",
                "reward/healthbench/mean", "entropy", "completion_len", "time/rollout", "peak_mem_gb", "format_ok"):
        assert key in rows[0], key


def test_demo_prints_before_and_after_answers(tmp_path, capsys):
    """A tiny demo run (2 SFT steps, 2 GRPO steps) prints the base model's answer and the trained policy's answer to
    the same question with the same seed — each equal to an independent sample from those weights — and the
    summary line of its metrics.jsonl. The warm start is cached: a second run reuses it and trains the same."""
    tiny = [f"--out={tmp_path / 'a'}", "--sft_steps=2", "--steps=2", "--prompts_per_step=2", "--num_generations=2",
            "--max_new_tokens=8", "--plot=false", "--save_every=2"]
    main(tiny)
    out = capsys.readouterr().out
    cfg = parse_args(tiny)
    base, tok = load_model("tiny", device=torch.device("cpu"))
    from transformers import AutoModelForCausalLM  # full fine-tuning: the checkpoint holds the whole model
    trained = AutoModelForCausalLM.from_pretrained(checkpoint.latest(tmp_path / "a") / "model")
    before, after = sample_answer(cfg, base, tok), sample_answer(cfg, trained, tok)
    assert f"— before training (base model) —\n{before}\n" in out
    assert f"— after SFT + GRPO —\n{after}\n" in out
    assert before.endswith(("[cut at 8 tokens]", "[ended by EOS]"))
    assert "<SOLUTION>" not in before  # the base model has never seen the format
    assert summary_line(_metrics(tmp_path / "a")) in out
    assert out.index("— before training") < out.index("— after SFT + GRPO") < out.index("first 2 → last 2 of 2 steps")
    assert (tmp_path / "a" / "sft" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"] == str(tmp_path / "a" / "sft" / "model")
    main(tiny[1:] + [f"--out={tmp_path / 'b'}"])
    assert "reusing" in capsys.readouterr().out
    assert [r["reward/mean"] for r in _metrics(tmp_path / "a")] == [r["reward/mean"] for r in _metrics(tmp_path / "b")]


@pytest.mark.parametrize("mode", ["graded", "wrong"])
def test_malformed_completions_are_graded_as_the_empty_answer(tmp_path, monkeypatch, mode):
    """--malformed: the base model (no warm start) never writes the format, so under `wrong` the judge is sent the
    empty answer for every completion, under `graded` each completion's best-effort answer, parse(text).solution."""
    import grpo.train
    sent, texts = [], []
    real_grade, real_parse = grpo.train.grade_sync, grpo.train.parse
    monkeypatch.setattr(grpo.train, "grade_sync", lambda judge, items: sent.extend(a for _, a, _ in items)
                        or real_grade(judge, items))
    monkeypatch.setattr(grpo.train, "parse", lambda text: texts.append(text) or real_parse(text))
    main(SMALL + ["--steps=1", "--sft_steps=0", f"--malformed={mode}", f"--out={tmp_path}"])
    assert _metrics(tmp_path)[0]["rollout/format_ok"] == 0.0 and len(sent) == len(texts) == 8
    if mode == "wrong":
        assert sent == [""] * 8
    else:
        assert sent == [real_parse(t).solution for t in texts] and all(sent)


def test_malformed_flag_is_checked_and_documented():
    from grpo.config import help_text
    with pytest.raises(ValueError, match=r"^--malformed=strict must be graded \| wrong$"):
        parse_args(["--malformed=strict"])
    assert "--malformed" in help_text() and parse_args([]).malformed == "wrong"  # the demo preset
    assert parse_args(["--preset=qwen3-14b-rtx6000", "--data=x.jsonl", "--judge=keyword"]).malformed == "graded"


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    """A 6-step run killed right after its step-3 checkpoint, then resumed, equals 6 straight steps: same weights,
    optimizer state and metrics, bit for bit."""
    common = SMALL + ["--beta=0.05", "--full_finetune=false", "--lr=5e-3", "--save_every=3", "--steps=6"]
    main(common + [f"--out={tmp_path / 'straight'}"])
    real_save = checkpoint.save

    def save_then_die(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if step == 3:
            raise KeyboardInterrupt("simulated kill after the step-3 checkpoint")
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(common + [f"--out={tmp_path / 'split'}"])
    monkeypatch.setattr(checkpoint, "save", real_save)
    main(common + [f"--out={tmp_path / 'split'}", "--resume=auto"])
    a, b = checkpoint.latest(tmp_path / "straight"), checkpoint.latest(tmp_path / "split")
    assert a.name == b.name == "step-000006"
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = torch.load(a / "optimizer.pt"), torch.load(b / "optimizer.pt")
    for sa, sb in zip(oa["state"].values(), ob["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ra = [r["reward/mean"] for r in _metrics(tmp_path / "straight")]
    rb = [r["reward/mean"] for r in _metrics(tmp_path / "split")]
    assert ra == rb and len(ra) == 6
    assert any(wa[k].abs().sum() > 0 for k in wa if "lora_B" in k)  # training did move the adapter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, args: list, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(ROOT / "grpo" / "train.py"), *args, f"--out={out}"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode, flags", [
    ("ddp", ["--full_finetune=false", "--loss=dapo", "--beta=0.02"]),               # LoRA, adapter-off reference
    # FSDP2-sharded full fine-tuning from the tiny preset's SFT warm start; beta=0: --fsdp keeps no reference copy
    ("fsdp", ["--full_finetune=true", "--fsdp", "--loss=grpo", "--micro_batch=3", "--beta=0"]),
])
def test_two_processes_equal_one_and_resume(tmp_path, mode, flags):
    """torchrun with 2 gloo processes and the same global batch ends at the same parameters as 1 process; and the
    2-process run resumed from its step-2 checkpoint ends bit-for-bit where it ended without the interruption."""
    args = SMALL + ["--prompts_per_step=4", "--steps=3", "--save_every=2", "--lr=5e-3", *flags]
    _torchrun(1, [a for a in args if a != "--fsdp"], tmp_path / "1")  # one process: the plain model is the reference
    _torchrun(2, args, tmp_path / "2")
    w1, w2 = _weights(checkpoint.latest(tmp_path / "1")), _weights(checkpoint.latest(tmp_path / "2"))
    # Summing gradients over 2 ranks changes the fp32 reduction order; Adam divides by √v, so on a near-zero gradient
    # a last-bit difference moves that weight by up to ~lr per step. Bound: 1 % of lr (5e-3) absolute, 0.1 % relative.
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=5e-5)
    r1, r2 = _metrics(tmp_path / "1"), _metrics(tmp_path / "2")
    assert [r["reward/mean"] for r in r1] == pytest.approx([r["reward/mean"] for r in r2], abs=1e-9)

    final = checkpoint.latest(tmp_path / "2")
    final.rename(final.with_name("done"))  # as if the run had died after its step-2 checkpoint
    _torchrun(2, args + ["--resume=auto"], tmp_path / "2")
    resumed = _weights(checkpoint.latest(tmp_path / "2"))
    assert all(torch.equal(resumed[k], w2[k]) for k in w2)


def test_options_run_together(tmp_path):
    """LoRA + β>0 (adapter-off reference) + μ=2 (old log-probs) + dynamic sampling + micro-batches + dr_grpo."""
    main(SMALL + ["--steps=2", "--full_finetune=false", "--beta=0.1", "--num_iterations=2", "--dynamic_sampling",
                  "--micro_batch=3", "--loss=dr_grpo", f"--out={tmp_path}", "--adv_scale=batch"])
    rows = _metrics(tmp_path)
    assert len(rows) == 2
    # dynamic sampling: never more zero-variance groups after resampling than before, and extra prompts were drawn
    # for every step that started with one (2 prompts per step, up to 3 extra rounds of 2)
    assert all(r["dynamic/zero_std_after"] <= r["frac_reward_zero_std"] for r in rows)
    extra_rounds = rows[-1]["prompts_seen"] // 2 - len(rows)
    assert (extra_rounds > 0) == any(r["frac_reward_zero_std"] > 0 for r in rows)
    for r in rows:
        assert r["kl"] >= 0 and all(v == v for k, v in r.items() if k not in ("reward/std",) and isinstance(v, float)
                                    and not k.startswith("reward/")), r
    assert json.loads((tmp_path / "config.json").read_text())["loss"] == "dr_grpo"


def test_nonfinite_gradient_is_skipped_not_applied():
    from grpo.config import parse_args
    cfg = parse_args([])
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    norm, applied = apply_update([p], opt, sched, cfg.grad_clip)
    assert not applied and torch.equal(p.data, torch.ones(3)) and p.grad is None
    p.grad = torch.tensor([1.0, 1.0, 0.0])
    norm, applied = apply_update([p], opt, sched, cfg.grad_clip)
    assert applied and norm == pytest.approx(2 ** 0.5) and not torch.equal(p.data, torch.ones(3))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from grpo.model import build_tiny, load_model
    model, _ = load_model(build_tiny(), device=torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    first = checkpoint.save(tmp_path, 1, model, opt, sched, {"cursor": 4})
    real_save = torch.save

    def dying_save(obj, path, *a, **k):
        if str(path).endswith("scheduler.pt"):
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, model, opt, sched, {"cursor": 8})
    assert checkpoint.latest(tmp_path) == first
    assert checkpoint.load(first, model, opt, sched)["cursor"] == 4


def test_adapter_loads_with_peft(tmp_path):
    """The saved adapter is a PEFT adapter: PeftModel.from_pretrained gives the same model as our resume path."""
    from peft import PeftModel
    from grpo.model import add_lora, build_tiny, load_model
    main(SMALL + ["--steps=4", "--full_finetune=false", "--lr=5e-3", "--beta=0.05", f"--out={tmp_path}"])
    ckpt = checkpoint.latest(tmp_path)
    w = _weights(ckpt)
    assert any("lora_A" in k for k in w) and any(w[k].abs().sum() > 0 for k in w if "lora_B" in k)  # it trained
    x = torch.randint(0, 100, (1, 9))
    base, _ = load_model(build_tiny(), device=torch.device("cpu"))
    before = base(x).logits
    via_peft = PeftModel.from_pretrained(base, ckpt / "adapter")(x).logits
    ours = add_lora(load_model(build_tiny(), device=torch.device("cpu"))[0], r=16, alpha=32)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad])
    checkpoint.load(ckpt, ours, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    torch.testing.assert_close(via_peft, ours(x).logits, rtol=0, atol=0)
    assert not torch.allclose(before, via_peft)


def test_warns_before_a_run_that_does_not_fit(tmp_path, capsys):
    """--memory_budget_gb runs bench/memory.py's planner first and warns, with its numbers, when the plan exceeds it."""
    main(SMALL + ["--steps=1", "--memory_budget_gb=0.0001", f"--out={tmp_path}"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "WARNING: planned peak exceeds the budget" in text and "GB" in text


def test_gradient_checkpointing_changes_memory_not_math(tmp_path):
    args = SMALL + ["--steps=3", "--full_finetune=false", "--beta=0.05", "--lr=5e-3", "--save_every=3"]
    main(args + [f"--out={tmp_path / 'plain'}"])
    main(args + ["--grad_checkpointing", f"--out={tmp_path / 'ckpt'}"])
    a, b = _weights(checkpoint.latest(tmp_path / "plain")), _weights(checkpoint.latest(tmp_path / "ckpt"))
    # checkpointing runs every row in full, the default runs each prompt once (grpo/logprobs.py): the same math in
    # another fp32 summation order, which Adam amplifies as in the 2-process test above; hence its bound
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=5e-5)
    assert [r["reward/mean"] for r in _metrics(tmp_path / "plain")] == [r["reward/mean"] for r in _metrics(tmp_path / "ckpt")]


def test_openai_judge_over_http_matches_the_keyword_judge_and_caches(tmp_path):
    """Training against an OpenAI-compatible server (loopback, grading by the keyword rule) gives exactly the rewards
    of the offline keyword judge; a rerun pays nothing: every verdict comes from the sqlite cache."""
    from tests.loopback import LoopbackJudgeServer
    args = SMALL + ["--steps=2", "--save_every=2"]
    main(args + ["--judge=keyword", f"--out={tmp_path / 'offline'}"])
    with LoopbackJudgeServer() as server:
        http = args + ["--judge=openai", "--judge_model=loopback", f"--judge_base_url={server.url}",
                       f"--out={tmp_path / 'http'}"]
        main(http)
        requests = sum(server.attempts.values())
        main(http)  # same seed, same completions: all cached
        assert sum(server.attempts.values()) == requests > 0
        main(args + ["--judge=openai", "--judge_model=loopback", f"--judge_base_url={server.url}",
                     "--reward=rar_implicit", "--log_rewards=", f"--out={tmp_path / 'implicit'}"])
    implicit = _metrics(tmp_path / "implicit")  # one 1–10 rating per sample → (rating − 1) / 9
    assert all(0 <= r["reward/mean"] <= 1 and "reward/rar_implicit/mean" in r for r in implicit)
    offline, online = _metrics(tmp_path / "offline"), _metrics(tmp_path / "http")
    assert [r["reward/mean"] for r in online] == [r["reward/mean"] for r in offline]
    assert online[-1]["judge/cache_hits"] > 0 and online[-1]["judge/unknown"] == 0
    assert "api_key" not in (tmp_path / "http" / "config.json").read_text()


def test_local_judge_is_the_policy_with_its_adapter_off(tmp_path):
    main(SMALL + ["--steps=1", "--judge=local", "--full_finetune=false", f"--out={tmp_path}"])
    row = _metrics(tmp_path)[0]
    assert row["judge/criteria"] > 0 and row["judge/unknown"] == 0  # one yes/no forward per criterion, all known
    assert 0 <= row["reward/mean"] <= 20


# ------------------------------------------------------------------------------ issue 9: paths only a GPU run reaches
def test_init_adapter_reference_is_the_sft_policy(tmp_path, capsys):
    """GRPO from an SFT adapter with β > 0: the policy starts at the SFT model and the KL reference *is* the SFT model,
    so the first update's KL is exactly 0 (with the pre-SFT base as reference it is not). The adapter keeps its own
    rank, and the run says that --lora_r does not apply."""
    from grpo.model import add_lora, build_tiny, load_model
    model = add_lora(load_model(build_tiny(), device=torch.device("cpu"), dtype=torch.float32)[0], r=8, alpha=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # a warm start that changed the model
    model.save_pretrained(tmp_path / "sft")
    main(SMALL + ["--steps=2", "--full_finetune=false", "--beta=0.1", "--lora_r=4", "--save_every=1",
                  "--prompts_per_step=4", "--num_generations=8", "--max_new_tokens=40",  # groups with reward spread
                  f"--init_adapter={tmp_path / 'sft'}", f"--out={tmp_path / 'grpo'}"])
    rows = _metrics(tmp_path / "grpo")
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0  # step 2: the policy has moved away from the SFT reference
    assert re.search(r"--init_adapter: training its LoRA \(r=8, alpha=16\); --lora_r=4\b.* do not apply",
                     capsys.readouterr().out)
    adapter_cfg = json.loads((checkpoint.latest(tmp_path / "grpo") / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8


def _ragged_completions(monkeypatch):
    """The tiny model never samples EOS in 16 tokens, so every completion is full length and token and sequence
    weighting agree: end completion i after 1 + 5i mod T tokens (as if EOS), the same cut in every run."""
    import dataclasses

    import grpo.train as train
    real_make_engine = train.make_engine

    def make_engine(*a, **k):
        engine = real_make_engine(*a, **k)
        real_generate = engine.generate

        def generate(*a, **k):
            out = real_generate(*a, **k)
            N, T = out.completion_mask.shape                                          # (B*G, T)
            ends = 1 + (torch.arange(N) * 5) % T                                      # (B*G,) 1..T tokens kept
            keep = (torch.arange(T)[None, :] < ends[:, None]).to(out.completion_mask.dtype)
            return dataclasses.replace(out, completion_mask=out.completion_mask * keep)
        engine.generate = generate
        return engine
    monkeypatch.setattr(train, "make_engine", make_engine)


def test_per_token_metrics_do_not_depend_on_micro_batching(tmp_path, monkeypatch):
    """entropy (and kl, clip fractions) are token means over the whole step, loss/tokens its token count: the same
    for one micro-batch of 8 sequences as for 8 micro-batches of 1 (sequence weighting gives each short completion
    the weight of a long one). β > 0 and μ = 2: the second pass sees a moved policy, so kl and the clip fractions are
    non-zero and their weighting shows."""
    args = SMALL + ["--steps=1", "--num_generations=4", "--max_new_tokens=16", "--lr=1e-3", "--beta=0.1",
                    "--num_iterations=2"]
    _ragged_completions(monkeypatch)
    main(args + ["--micro_batch=0", f"--out={tmp_path / 'one'}"])
    main(args + ["--micro_batch=1", f"--out={tmp_path / 'many'}"])
    one, many = _metrics(tmp_path / "one")[0], _metrics(tmp_path / "many")[0]
    assert one["completion_len"] < 16                                # ragged: token and sequence weights differ
    assert one["completion_len"] == many["completion_len"]       # same rollouts (noise keyed by sequence)
    assert one["loss/tokens"] == many["loss/tokens"] == pytest.approx(one["completion_len"] * 2 * 4)
    assert many["entropy"] == pytest.approx(one["entropy"], rel=1e-5)
    clip = one["loss/clip_frac_low"] + one["loss/clip_frac_high"]
    assert one["kl"] > 0 and clip > 0                            # the weighting below is not compared on zeros
    for k in ("kl", "loss/clip_frac_low", "loss/clip_frac_high", "loss/ratio_mean"):
        assert many[k] == pytest.approx(one[k], rel=1e-3, abs=1e-7), k  # μ's 2nd pass: after rounding-different updates


def test_time_rollout_counts_every_dynamic_sampling_round_and_bf16_keeps_fp32_weights(tmp_path, monkeypatch):
    """A judge that fails every criterion makes every group zero-variance, so dynamic sampling runs all its extra
    rounds: time/rollout covers every round's sampling (timed here independently around generate). The run is
    --dtype bf16 full fine-tuning: the checkpointed weights are the fp32 masters."""
    import grpo.train as train
    durations, tokens, real_make_engine = [], [], train.make_engine

    def timed_make_engine(*a, **k):  # the loop's engine, with its generate timed from outside
        engine = real_make_engine(*a, **k)
        real_generate = engine.generate

        def timed_generate(*a, **k):
            import time
            t0 = time.perf_counter()
            out = real_generate(*a, **k)
            durations.append(time.perf_counter() - t0)
            tokens.append(out.completion_mask.sum().item())
            return out
        engine.generate = timed_generate
        return engine
    monkeypatch.setattr(train, "make_engine", timed_make_engine)
    monkeypatch.setattr(train, "grade_sync", lambda judge, items: [[False] * len(rub.criteria) for _, _, rub in items])
    main(SMALL + ["--steps=1", "--dynamic_sampling", "--max_resample_rounds=2", "--dtype=bf16", "--full_finetune",
                  f"--out={tmp_path}"])
    row = _metrics(tmp_path)[0]
    assert len(durations) == 3 and row["dynamic/zero_std_after"] == 1.0
    assert row["time/rollout"] >= sum(durations)
    assert row["tok_per_s/rollout"] * row["time/rollout"] == pytest.approx(sum(tokens))  # every round's tokens
    weights = _weights(checkpoint.latest(tmp_path))
    assert all(w.dtype == torch.float32 for w in weights.values())
