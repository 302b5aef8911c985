"""Completion log-probs: the three paths agree, masks are honoured, and the start-up kernel self-check works."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import kernels
from grpo.logprobs import IMPLS, check_kernels, completion_logprobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rollout():
    from grpo.model import build_tiny, load_model
    from grpo.rollout import generate
    model, tok = load_model(build_tiny(), device=torch.device("cpu"))
    prompts = [[{"role": "user", "content": "Is a resting heart rate of 50 normal?"}],
               [{"role": "user", "content": "What does an ECG show in atrial fibrillation?"}]]
    return model, generate(model, tok, prompts, num_generations=2, max_new_tokens=10, seed=3)


@pytest.mark.parametrize("impl", IMPLS)
def test_paths_agree_with_an_fp64_full_forward(rollout, impl):
    model, r = rollout
    logp, entropy = completion_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask, temperature=0.8,
                                        impl=impl, with_entropy=True)
    with torch.no_grad():  # independent: the HF forward's logits in fp64, log_softmax at T = 0.8
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                       position_ids=(r.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits.double()
    T = r.completion_ids.shape[1]
    ref = torch.log_softmax(logits[:, -T - 1:-1] / 0.8, -1)                        # (S, T, V)
    valid = r.completion_mask.bool()
    want = ref.gather(-1, r.completion_ids[..., None]).squeeze(-1)[valid]
    assert (logp[valid].double() - want).exp().sub(1).abs().max() < 1e-5
    assert torch.all(logp[~valid] == 0)
    want_entropy = -(ref.exp() * ref).sum(-1)[valid].mean()
    assert abs(entropy.item() - want_entropy.item()) < 1e-4


def test_self_check_raises_when_the_kernel_is_wrong(monkeypatch):
    real = kernels.linear_logprobs

    def off_by_a_bit(h, w, t, temperature=1.0, *, impl="auto", **kw):
        out = real(h, w, t, temperature, impl="torch", **kw)
        return out + 0.01 if impl == "triton" else out                              # a 1 % ratio error
    monkeypatch.setattr(kernels, "linear_logprobs", off_by_a_bit)
    with pytest.raises(RuntimeError, match="--logprob_impl reference"):
        check_kernels(torch.randn(300, 32))


def test_self_check_passes_on_the_triton_interpreter():
    pytest.importorskip("triton")
    from test_kernels_logprobs import interpreter_problem
    if interpreter_problem():
        pytest.skip(interpreter_problem())
    code = ("import torch; from grpo.logprobs import check_kernels; "
            "errs = check_kernels(torch.randn(300, 32), temperature=0.7, n=8); print(errs)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    errs = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # the dict printed above
    assert errs["kernel_check/ratio_err"] < 1e-5 and errs["kernel_check/grad_err"] < 1e-4


@pytest.fixture(scope="module")
def lora64():
    """fp64 LoRA policy with a non-zero adapter (B ≠ 0, so adapter gradients reach every layer) and a rollout of
    2 prompts × 3 samples whose prompts differ in length (left padding) and whose row 0 stops early (EOS at 5)."""
    from grpo.model import add_lora, build_tiny, load_model
    from grpo.rollout import generate
    model, tok = load_model(build_tiny(), device=torch.device("cpu"))
    model = add_lora(model, r=4, alpha=8)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model = model.double()
    prompts = [[{"role": "user", "content": "Is a resting heart rate of 50 normal?"}],
               [{"role": "user", "content": "What does an ECG show in atrial fibrillation?"}]]
    r = generate(model, tok, prompts, num_generations=3, max_new_tokens=12, seed=3)
    cmask = r.completion_mask.clone()
    cmask[0, 6:] = 0
    attn = torch.cat([r.prompt_mask, cmask], 1)
    assert r.prompt_mask.sum(1).unique().numel() == 2  # the two prompts really are padded differently
    return model, r.input_ids, attn, cmask


def _logp_and_grads(model, ids, attn, cmask, share, **kw):
    model.zero_grad()
    logp = completion_logprobs(model, ids, attn, cmask, share_prompt=share, **kw)
    weights = torch.linspace(0.5, 1.5, cmask.numel(), dtype=logp.dtype).view_as(cmask)
    (logp * weights).sum().backward()
    return logp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_shared_prompt_matches_full_rows_forward_and_backward(lora64):
    model, ids, attn, cmask = lora64
    logp, grads = _logp_and_grads(model, ids, attn, cmask, True)
    want, want_grads = _logp_and_grads(model, ids, attn, cmask, False)
    assert torch.all(logp[~cmask.bool()] == 0)
    assert (logp - want).abs().max() < 1e-12
    # Not 1e-15: HF's Qwen3RMSNorm upcasts to *fp32* even in an fp64 model, so the shared prefix's norm backward
    # rounds the sum of its G gradients at fp32 (~6e-8) where the full path rounds each copy; one row alone agrees
    # to 1e-15 (checked below). An indexing error would be O(1).
    for g, w in zip(grads, want_grads):
        assert (g - w).norm() / w.norm() < 1e-6
    model.zero_grad()
    one = completion_logprobs(model, ids, attn, cmask, share_prompt=True)[1, 3]
    one.backward()
    g1 = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    completion_logprobs(model, ids, attn, cmask, share_prompt=False)[1, 3].backward()
    for g, w in zip(g1, (p.grad for p in model.parameters() if p.requires_grad)):
        assert (g - w).norm() / w.norm() < 1e-12


def _positions_through_decoder(model, ids, attn, cmask, **kw) -> int:
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape[0] * out.shape[1]))
    try:
        with torch.no_grad():
            completion_logprobs(model, ids, attn, cmask, **kw)
    finally:
        hook.remove()
    return sum(seen)


def test_shared_prompt_runs_each_distinct_prompt_once(lora64):
    model, ids, attn, cmask = lora64
    S, T = cmask.shape
    P = ids.shape[1] - T
    assert _positions_through_decoder(model, ids, attn, cmask) == 2 * P + S * (T - 1)   # 2 distinct prompts
    assert _positions_through_decoder(model, ids, attn, cmask, share_prompt=False) == S * (P + T)
    distinct = ids.clone()
    distinct[:, -T - 1] = torch.arange(S)  # every prompt row differs now: nothing to share, the plain path runs
    assert _positions_through_decoder(model, distinct, attn, cmask) == S * (P + T)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:  # HF drops the KV cache under checkpointing in training mode, so the plain path must run
        model.train()
        assert _positions_through_decoder(model, ids, attn, cmask) == S * (P + T)
    finally:
        model.gradient_checkpointing_disable()
