"""bench/throughput.py end to end on CPU with the tiny shape, so the profiler cannot rot.

    python -m pytest tests/test_throughput.py

Runs the script as a user does (a subprocess), parses the JSON last line and checks it against numbers computed here
from the command line: token counts, tokens/s = tokens / time, phase times that add up to the step, MFU from the
FLOP counts, the memory baseline (weights + LoRA + AdamW states, counted by hand) and the planner comparison.
Speed itself is never asserted: that is what the bench is for.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.model import FORMAT_TOKENS, SHAPES, TINY_VOCAB

ROOT = Path(__file__).resolve().parents[1]
B, G, P, T, MB = 2, 2, 16, 8, 2
PHASES = ("prefill", "decode", "judge", "old_logp", "ref_logp", "policy_fwd", "policy_bwd", "optimizer")
TINY, VOCAB = SHAPES["tiny"], TINY_VOCAB + len(FORMAT_TOKENS)  # bench/memory.py's shape_config("tiny")
MEM_PHASES = ("rollout", "judge", "old_logp", "ref_logp", "policy_fwd", "policy_bwd", "optimizer")


def _run(out: Path, *extra: str) -> tuple[str, dict]:
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--shape", "tiny", "--steps", "2", "--warmup", "1",
           "--prompts", str(B), "--G", str(G), "--prompt-len", str(P), "--completion-len", str(T),
           "--micro-batch", str(MB), "--out", str(out), *extra]
    # One OpenMP thread: on a loaded 2-core CI box, spinning OpenMP workers make each tiny matmul ~100x slower.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    """Every phase switched on (judge, β > 0 → ref, μ = 2 → old), fused and reference log-probs back to back."""
    out = tmp_path_factory.mktemp("throughput")
    stdout, last = _run(out, "--judge", "keyword", "--beta", "0.04", "--num-iterations", "2", "--compare",
                        "--peak-tflops", "1")
    return out, stdout, last


def _check_result(r: dict, mu: int):
    S = B * G
    assert r["tokens"] == {"prompt": S * P, "completion": S * T, "sequence": S * (P + T)}
    t = r["time_s"]
    assert len(r["per_step_time_s"]) == r["steps"] == 2
    # the step is its phases plus a small remainder, nothing is counted twice
    assert math.isclose(sum(t[p] for p in PHASES) + t["other"], t["step"], rel_tol=1e-6)
    assert t["other"] < 0.5 * t["step"]
    for step in r["per_step_time_s"]:
        assert all(step[p] > 0 for p in PHASES), step
    tok = r["tok_per_s"]
    assert math.isclose(tok["overall"], S * T / t["step"], rel_tol=1e-6)
    assert math.isclose(tok["prefill"], S * P / t["prefill"], rel_tol=1e-6)
    assert math.isclose(tok["decode"], S * T / t["decode"], rel_tol=1e-6)
    assert math.isclose(tok["policy"], mu * S * (P + T) / (t["policy_fwd"] + t["policy_bwd"]), rel_tol=1e-6)
    # model FLOPs of the policy forward, by hand: μ passes of 2·(block + LoRA params) per token, 2·V·H per completion
    # token (the head sees completion positions only), 4·L·heads·head_dim per causal (query, key) pair
    H, L, Dq, V = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["num_attention_heads"] * TINY["head_dim"], VOCAB
    n = P + T
    hand = mu * (2 * (r["params"] - V * H + r["trainable_params"]) * S * n + 2 * V * H * S * T + 4 * L * Dq * S * n * (n + 1) // 2)
    assert r["flops"]["policy_fwd"] == hand
    assert r["flops"]["policy_bwd"] == r["flops"]["policy_fwd"]  # LoRA: frozen weights, input grads only = 1× fwd
    busy = t["step"] - t["judge"]
    assert math.isclose(r["mfu"], sum(r["flops"].values()) / busy / 1e12, rel_tol=1e-6)  # --peak-tflops 1
    # memory: every phase measured; the judge allocates ~nothing, so its peak is the resident state, counted by hand:
    # fp32 weights + fp32 LoRA params + two fp32 AdamW moments per trainable parameter (+ RoPE inv_freq buffers)
    assert set(r["memory_gb"]) == set(MEM_PHASES)
    resident = 4 * (r["params"] + r["trainable_params"]) + 8 * r["trainable_params"]
    assert resident <= r["memory_gb"]["judge"] * 1e9 < 1.1 * resident
    assert all(r["memory_gb"][p] * 1e9 >= resident for p in ("rollout", "old_logp", "policy_fwd", "policy_bwd"))
    pl = r["planner"]
    assert pl["measured_train_gb"] == max(r["memory_gb"][p] for p in ("old_logp", "ref_logp", "policy_fwd",
                                                                       "policy_bwd", "optimizer"))
    assert pl["measured_rollout_gb"] == r["memory_gb"]["rollout"]
    assert math.isclose(pl["ratio_train"], pl["measured_train_gb"] / pl["train_gb"], rel_tol=1e-6)
    assert math.isclose(pl["ratio_rollout"], pl["measured_rollout_gb"] / pl["rollout_gb"], rel_tol=1e-6)
    # loose: the planner is validated tightly in tests/test_memory.py; here a factor of 2 means the cut is broken
    assert 0.5 < pl["ratio_train"] < 2 and 0.5 < pl["ratio_rollout"] < 2


def test_compare_runs_every_phase_for_both_logprob_paths(compare):
    out, stdout, last = compare
    assert set(last["compare"]) == {"fused", "reference"}
    for impl, r in last["compare"].items():
        assert r["config"]["logprob_impl"] == impl
        assert r["config"]["judge_graded"] == "demo reference answers"
        _check_result(r, mu=2)
    png = Path(last["png"])
    assert png.parent == out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_table_has_units_and_the_planner_columns(compare):
    _, stdout, _ = compare
    for text in ("tok/s", "FLOP/s", " s ", "MB", "measured/planned", "rollout peak", "train peak",
                 "fused vs reference log-probs"):
        assert text in stdout, text
    assert "skipped" not in stdout  # every phase ran


def test_skipped_phases_and_no_judge(tmp_path):
    stdout, r = _run(tmp_path, "--judge", "none", "--lora-r", "0", "--grad-checkpointing", "off",
                     "--logprob-impl", "selective")
    assert r["config"]["lora_r"] == 0 and r["trainable_params"] == r["params"] and r["mfu"] is None
    for p, why in (("old_logp", "num_iterations = 1"), ("ref_logp", "beta = 0"), ("judge", "--judge none")):
        assert r["time_s"][p] == 0 or p == "judge"
        assert why in stdout
    assert r["time_s"]["old_logp"] == r["time_s"]["ref_logp"] == 0
    assert r["flops"]["policy_bwd"] == 2 * r["flops"]["policy_fwd"]  # full fine-tune: weight grads too
    assert "MFU n/a" in stdout and Path(r["png"]).exists()
