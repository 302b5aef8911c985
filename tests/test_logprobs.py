"""Completion log-probs: the three paths agree, masks are honoured, and the start-up kernel self-check works."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
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
    code = ("import torch; from grpo.logprobs import check_kernels; "
            "errs = check_kernels(torch.randn(300, 32), temperature=0.7, n=8); print(errs)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    errs = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # the dict printed above
    assert errs["kernel_check/ratio_err"] < 1e-5 and errs["kernel_check/grad_err"] < 1e-4
