"""grpo/model.py: what AdamW steps in each precision, and which weights the KL reference uses after an SFT warm start.

    python -m pytest tests/test_model.py
"""
import contextlib

import pytest
import torch

from grpo.logprobs import completion_logprobs
from grpo.model import (Reference, add_lora, autocast, build_tiny, continue_adapter, load_model, merge_adapter,
                        weights_dtype)

CPU = torch.device("cpu")
STEPS, LR = 10, 5e-6  # the paper's learning rate; Adam moves each weight by ~lr per step


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 24), generator=g)                       # (S, P+T)
    return ids, torch.ones_like(ids), torch.ones(4, 8, dtype=torch.long)      # (S, P+T), (S, P+T), (S, T)


def _moved_fraction(model, amp, steps=STEPS) -> float:
    """Fraction of trainable weight elements that differ from their start after `steps` AdamW updates at LR."""
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    ids, attn, cmask = _batch(model.config.vocab_size)
    for _ in range(steps):
        with amp():
            loss = -completion_logprobs(model, ids, attn, cmask).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = sum((p.detach() != s).sum().item() for p, s in zip(params, start))
    return moved / sum(s.numel() for s in start)


def test_bf16_full_finetune_keeps_fp32_master_weights_and_trains_them_all():
    """--dtype bf16 --full_finetune: weights loaded in fp32 (what AdamW steps), matmuls in bf16 under autocast.
    10 updates at lr 5e-6 move >= 99 % of the weights, as in fp32; stepping bf16 weights directly (the old path) moves
    only a small fraction: the update is below half a bf16 spacing for most weights, and rounds away."""
    path = build_tiny()
    wdtype = weights_dtype(torch.bfloat16, full_finetune=True)
    assert wdtype == torch.float32
    model, _ = load_model(path, device=CPU, dtype=wdtype)
    seen = []
    model.get_decoder().layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    model.train()
    moved = _moved_fraction(model, lambda: autocast(CPU, torch.bfloat16, wdtype))
    assert set(seen) == {torch.bfloat16}                 # the bf16 path really computes in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert moved >= 0.99, moved

    bf16, _ = load_model(path, device=CPU, dtype=torch.bfloat16)  # negative control: no master weights
    bf16.train()
    assert _moved_fraction(bf16, lambda: autocast(CPU, torch.bfloat16, torch.bfloat16)) < 0.5


def test_lora_under_bf16_trains_fp32_adapters_over_a_frozen_bf16_base():
    model, _ = load_model(build_tiny(), device=CPU, dtype=weights_dtype(torch.bfloat16, full_finetune=False))
    model = add_lora(model, r=4, alpha=8)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and "lora_" in n for n, p in trainable)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if not p.requires_grad and "lora_" not in n)
    model.train()
    assert _moved_fraction(model, lambda: autocast(CPU, torch.bfloat16, torch.bfloat16)) >= 0.99


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A saved r=8 PEFT adapter with non-zero weights, as grpo/sft.py writes one (no training needed)."""
    model, _ = load_model(build_tiny(), device=CPU, dtype=torch.float32)
    model = add_lora(model, r=8, alpha=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(path)
    return path


def _logp(model, ids, attn, cmask):
    with torch.no_grad():
        return completion_logprobs(model, ids, attn, cmask)


def test_reference_after_sft_is_the_sft_model(sft_adapter):
    """The trainer's --init_adapter paths. LoRA: GRPO trains the SFT adapter on and the reference is its frozen copy;
    full fine-tuning: the adapter is merged and the reference is a copy of that. Either way the reference's log-probs
    equal the SFT model's (base + adapter, loaded independently) — before and after policy updates — and not the
    pre-SFT base's, which "adapter off" would give."""
    from peft import PeftModel
    path = build_tiny()
    fresh = lambda: load_model(path, device=CPU, dtype=torch.float32)[0]  # noqa: E731
    sft = PeftModel.from_pretrained(fresh(), str(sft_adapter)).eval()
    ids, attn, cmask = _batch(sft.config.vocab_size, seed=2)
    sft_logp, base_logp = _logp(sft, ids, attn, cmask), _logp(fresh().eval(), ids, attn, cmask)
    assert (sft_logp - base_logp).abs().max() > 1e-2  # the warm start did change the model

    lora = continue_adapter(fresh(), str(sft_adapter))
    ref = Reference(lora, keep_copy=False, adapter=str(sft_adapter))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    full = merge_adapter(fresh(), str(sft_adapter))
    full_ref = Reference(full, keep_copy=True)
    for policy, reference in ((lora, ref), (full, full_ref)):
        torch.testing.assert_close(_logp(policy, ids, attn, cmask), sft_logp, rtol=0, atol=1e-4)  # starts at SFT
        policy.train()
        _moved_fraction(policy, contextlib.nullcontext, steps=3)  # lr 5e-6 is enough to change the log-probs
        with reference.active() as m:
            torch.testing.assert_close(_logp(m, ids, attn, cmask), sft_logp, rtol=0, atol=1e-4)
        assert (_logp(policy, ids, attn, cmask) - sft_logp).abs().max() > 1e-6   # the policy did move
    # switching to the reference and back leaves exactly the trained adapter trainable
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == trainable
