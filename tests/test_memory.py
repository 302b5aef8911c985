"""The memory planner (grpo/memory.py; CLI bench/memory.py) against hand counts, a saved-tensor census and measured
CPU peaks.

    python -m pytest tests/test_memory.py

Measured peaks: torch.profiler(profile_memory=True) records every CPU allocation and free with a timestamp; the running
sum of those events over one training step (after a warm-up step, so AdamW states already exist) is the peak of
memory allocated on top of the resident weights and optimizer state — the quantity the planner calls
peak_train − resident.
"""
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
from grpo import memory  # noqa: E402 — the installed planner the trainer uses
from grpo.model import SHAPES  # noqa: E402

ALL_LINEAR = list(memory.LORA_TARGETS)


def test_qwen3_14b_parameter_count_and_bf16_weights():
    # Hand count, Qwen3-14B: H 5120, I 17408, 40 layers, 40 q heads, 8 kv heads, head_dim 128, V 151936, untied.
    embed = 151936 * 5120                                             # = lm_head (untied)
    block = (5120 * 5120 + 2 * 5120 * 1024 + 5120 * 5120             # q, k, v, o
             + 3 * 5120 * 17408                                       # gate, up, down
             + 2 * 128 + 2 * 5120)                                    # q_norm, k_norm, two RMSNorms
    assert block == 330_311_936
    hand = 2 * embed + 40 * block + 5120
    assert memory.param_count(SHAPES["qwen3-14b"]) == hand == 14_768_307_200   # published: 14.8 B
    p = memory.plan(SHAPES["qwen3-14b"], memory.RunShape())
    assert abs(p.weights / 1e9 - 29.5) < 0.1                          # bf16: 2 bytes × 14.77 B ≈ 29.5 GB
    # Qwen3-0.6B ties embeddings: published 0.6 B total, 0.44 B without the embedding.
    n06 = memory.param_count(SHAPES["qwen3-0.6b"])
    assert n06 == 151936 * 1024 + 28 * (1024 * 2048 * 2 + 2 * 1024 * 1024 + 3 * 1024 * 3072 + 256 + 2048) + 1024
    assert round(n06 / 1e9, 2) == 0.60 and round((n06 - 151936 * 1024) / 1e9, 2) == 0.44
    assert round(memory.param_count(SHAPES["qwen3-8b"]) / 1e9, 1) == 8.2  # published 8.2 B


def test_lora_r16_all_linear_count_by_hand():
    # r·(in + out) per adapted linear, 7 per block, 40 blocks; lm_head not adapted.
    per_block = 16 * ((5120 + 5120) + (5120 + 1024) * 2 + (5120 + 5120) + (5120 + 17408) * 2 + (17408 + 5120))
    assert per_block == 1_605_632
    assert memory.lora_param_count(SHAPES["qwen3-14b"], 16) == 40 * per_block == 64_225_280
    p = memory.plan(SHAPES["qwen3-14b"], memory.RunShape(lora_r=16))
    assert p.trainable == p.grads == 4 * 64_225_280 and p.optimizer == 8 * 64_225_280  # fp32 params, grads, 2 moments


def test_kv_cache_by_hand():
    # 48 sequences × (1024 + 1024) tokens × 40 layers × (K, V) × 8 kv heads × 128 × 2 bytes
    hand = 48 * 2048 * 40 * 2 * 8 * 128 * 2
    assert memory.kv_cache_bytes(SHAPES["qwen3-14b"], 48, 2048, "bfloat16") == hand == 16_106_127_360
    run = memory.RunShape(prompts_per_step=8, G=6, prompt_len=1024, completion_len=1024)
    assert memory.plan(SHAPES["qwen3-14b"], run).kv_cache == hand
    assert memory.plan(SHAPES["qwen3-14b"], replace(run, rollout_batch=12)).kv_cache == hand // 4


# ------------------------------------------------------------------------------------------------ tiny models
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)


def _tiny(dtype, full_finetune=False, r=8, **over):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(**dict(TINY, **over), attn_implementation="sdpa")
    model = Qwen3ForCausalLM(cfg).to(dtype)
    if not full_finetune:
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=ALL_LINEAR))
    return cfg, model.train()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("full_finetune", [False, True])
def test_saved_bytes_per_layer_match_autograd_census(dtype, full_finetune):
    """Every tensor autograd saves inside block 1 (block 0's input needs no grad), deduplicated by storage and
    excluding parameters, equals the derivation in _saved_bytes_per_token_layer exactly."""
    cfg, model = _tiny(getattr(torch, dtype), full_finetune)
    B, S = 2, 48
    layers = model.get_decoder().layers
    current = [None]
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, per_layer = set(), [0] * len(layers)

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if current[0] is not None and ptr not in params and ptr not in seen:
            seen.add(ptr)
            per_layer[current[0]] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, 512, (B, S)), use_cache=False, logits_to_keep=1)
    d = memory._dims(cfg)
    want = B * S * memory._saved_bytes_per_token_layer(d, memory.DTYPE_BYTES[dtype], 8, full_finetune)
    assert per_layer[1] == per_layer[2] == want


def _measured_step_peak(model, input_ids, T, impl):
    """Peak bytes allocated above the resident state during one step of the trainer's own log-prob path."""
    from torch.profiler import ProfilerActivity, profile

    from grpo.logprobs import completion_logprobs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    attn, cmask = torch.ones_like(input_ids), torch.ones(input_ids.shape[0], T, dtype=torch.long)

    def step():
        logp = completion_logprobs(model, input_ids, attn, cmask, impl=impl)    # (S, T)
        (-logp.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # allocations do not depend on it; OpenMP spinning on a loaded 2-core CI box does
    try:
        step()  # AdamW states now exist, as in every step after the first
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    finally:
        torch.set_num_threads(threads)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # + on allocation, − on free
        peak = max(peak, live)
    assert abs(live) < 0.01 * peak, "step leaked memory; the measurement window is wrong"
    return peak


# (vocab, prompt, completion): activations dominate / the reference head's (N, V) fp32 tensors dominate
REGIMES = {"activations": (512, 192, 64), "head": (8192, 64, 128)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_planned_train_peak_matches_measured_cpu_peak(dtype, ckpt, regime):
    V, P, T = REGIMES[regime]
    cfg, model = _tiny(getattr(torch, dtype), vocab_size=V)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    S = 4
    measured = _measured_step_peak(model, torch.randint(0, V, (S, P + T)), T, "reference")
    run = memory.RunShape(prompts_per_step=1, G=S, prompt_len=P, completion_len=T, micro_batch=S, lora_r=8,
                          dtype=dtype, grad_checkpointing=ckpt, logprob_impl="reference")
    p = memory.plan(cfg, run)
    planned = p.peak_train - (p.weights + p.trainable + p.optimizer)
    head_share = p.logprob_head / planned
    assert (head_share > 0.5) == (regime == "head")  # the regime exercises the term it is named after
    print(f"{regime} {dtype} ckpt={ckpt}: planned {planned / 1e6:.2f} MB measured {measured / 1e6:.2f} MB")
    assert abs(planned / measured - 1) < 0.10, f"planned {planned / 1e6:.2f} MB vs measured {measured / 1e6:.2f} MB"


def test_checkpointing_and_fused_head_shrink_the_plan():
    run = memory.RunShape(grad_checkpointing=False, logprob_impl="reference")
    base = memory.plan(SHAPES["qwen3-14b"], run)
    ck = memory.plan(SHAPES["qwen3-14b"], replace(run, grad_checkpointing=True))
    fused = memory.plan(SHAPES["qwen3-14b"], replace(run, logprob_impl="fused"))
    assert ck.activations < base.activations / 10  # keeps (N, H) per block instead of ~(30H + 5I)·N bytes
    # reference head: 6 × 1024 completion tokens × 151936 × 3 fp32 (n, V) tensors ≈ 11.2 GB; fused: O(N·H)
    assert abs(base.logprob_head / 1e9 - 6 * 1024 * 151936 * 12 / 1e9) < 0.2
    assert fused.logprob_head < 0.3e9


def test_fit_and_check_agree_with_the_plan():
    cfg, run = SHAPES["qwen3-14b"], memory.RunShape(grad_checkpointing=False, logprob_impl="reference")
    mb, rb = memory.fit(cfg, run, 96)
    assert 1 <= mb < run.prompts_per_step * run.G
    at = memory.plan(cfg, replace(run, micro_batch=mb))
    over = memory.plan(cfg, replace(run, micro_batch=mb + 1))
    budget = 96e9
    fits = lambda alloc, w: alloc + memory.SLACK_FRAC * (alloc - w) + memory.CONTEXT_BYTES <= budget  # noqa: E731
    assert fits(at.peak_train, at.weights) and not fits(over.peak_train, over.weights)
    ok, msg = memory.check(cfg, replace(run, micro_batch=48), 96)
    assert not ok and f"micro_batch={mb}" in msg and "GB" in msg
    assert memory.check(cfg, memory.RunShape(), 96)[0]


def test_cli_prints_table_and_json_last_line():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--shape", "tiny", "--budget-gb", "1"],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    import json
    last = json.loads(out.strip().splitlines()[-1])
    assert last["shape"] == "tiny" and last["max_micro_batch"] >= 1 and " GB" in out


def test_trainer_budget_check_runs_from_an_installed_copy(tmp_path):
    """The packages setup.py installs — and nothing else (no bench/) — are enough for the trainer's
    --memory_budget_gb check: it warns with the planner's numbers when the paper's run cannot fit 10 GB."""
    import re
    packages = re.search(r"packages=\[([^\]]*)\]", (ROOT / "setup.py").read_text()).group(1)
    for pkg in sorted({name.split(".")[0] for name in re.findall(r'"([^"]+)"', packages)}):  # subpackages come along
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (tmp_path / "bench").exists()
    code = (f"import grpo, types; assert grpo.__file__.startswith({str(tmp_path)!r}), grpo.__file__; "
            "from grpo.config import Config; from grpo.model import SHAPES; "
            "from grpo.train import check_memory_plan; "
            "cfg = Config(memory_budget_gb=10.0, max_new_tokens=1024, max_prompt_len=512, num_generations=6); "
            "check_memory_plan(cfg, types.SimpleNamespace(config=SHAPES['qwen3-14b']), "
            "types.SimpleNamespace(write=print))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNING: planned peak exceeds the budget" in out.stdout and "vs budget 10.0 GB" in out.stdout


def test_full_finetune_plans_fp32_master_weights_and_the_fsdp_rollout_gather():
    """Full fine-tuning as the trainer runs it in bf16: fp32 weights + fp32 reference copy + autocast's bf16 copies,
    fp32 grads and AdamW moments. An FSDP2 rank gathering the whole 14B model for a rollout holds the fp32 weights in
    full plus its 1/world share of weights and moments (3 × fp32) — by hand, against an 80 GB card."""
    n = memory.param_count(SHAPES["qwen3-14b"])
    run = memory.RunShape(full_finetune=True, lora_r=0, dtype="bfloat16")
    p = memory.plan(SHAPES["qwen3-14b"], run)
    assert p.weights == n * (4 + 4 + 2) and p.grads == 4 * n and p.optimizer == 8 * n
    for world in (8, 64):
        gathered = 4 * n + 3 * 4 * n / world + p.kv_cache + p.prefill
        fits = gathered * (1 + memory.SLACK_FRAC) + memory.CONTEXT_BYTES <= 80e9
        assert memory.fsdp_rollout_fits(SHAPES["qwen3-14b"], run, 80, world) == fits
    assert not memory.fsdp_rollout_fits(SHAPES["qwen3-14b"], run, 80, 8)      # 59 + 22 GB of weights alone
    assert memory.fsdp_rollout_fits(SHAPES["qwen3-0.6b"], replace(run, prompts_per_step=1), 80, 8)


def test_run_shape_follows_the_trainer_config(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the paper preset grades with an OpenAI judge
    from grpo.config import parse_args
    cfg = parse_args(["--preset", "qwen3-14b-rtx6000", "--data", "x.jsonl", "--judge_model", "gpt-4.1-mini"])
    run = memory.run_shape(cfg)
    got = (run.G, run.completion_len, run.prompt_len, run.micro_batch, run.rollout_batch, run.lora_r)
    assert got == (6, 1024, 512, 6, 24, 16)
    assert run.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert memory.run_shape(parse_args(["--dtype=bf16"])).dtype == "bfloat16"


def test_one_logprob_vocabulary_and_the_old_spelling_warns():
    """The planner, grpo.logprobs and --logprob_impl name the head paths alike; the planner's old "naive" still plans
    the reference head, with a DeprecationWarning."""
    from grpo.logprobs import IMPLS
    assert memory.LOGPROB_IMPLS == IMPLS
    with pytest.warns(DeprecationWarning, match="spell it 'reference'"):
        old = memory.RunShape(logprob_impl="naive")
    assert old == memory.RunShape(logprob_impl="reference")
    from grpo.config import parse_args
    assert memory.run_shape(parse_args(["--logprob_impl=reference"])).logprob_impl == "reference"
