"""The embedded demo's two ends: an SFT warm start before GRPO, and a before/after report after it.

    torchrun grpo/train.py          # preset tiny: SFT (--sft_steps) into runs/demo/sft/, GRPO from it, this report

The paper's pipeline in miniature. `warm_start` samples one answer from the base model (the first bundled question,
seed --seed), then runs grpo/sft.py's LoRA SFT in this process on the data's reference answers in the structured
format and returns its adapter dir: GRPO continues that adapter, and a frozen copy of it is the KL reference
(grpo/model.py continue_adapter). `report` samples the same question with the same seed from the trained policy and
prints both answers and `summary_line` over metrics.jsonl. The keyword judge behind the demo's scores is a toy.
"""
from __future__ import annotations

from pathlib import Path

import torch

from data import bundled_demo_path, load_samples
from data.format import to_messages
from grpo.metrics import read_metrics, summary_line
from grpo.rollout import make_engine

BEFORE = "before.txt"  # in out/sft/: the base model's answer, printed again after training


def sample_answer(cfg, model, tokenizer) -> str:
    """One answer to the data's first question, sampled as a rollout samples it (same seed ⇒ same noise), with how it
    ended: by EOS, or cut at --max_new_tokens."""
    sample = load_samples(bundled_demo_path() if cfg.data == "demo" else cfg.data)[0]
    was_training = model.training
    roll = make_engine("eager").generate(model, tokenizer, [to_messages(sample)], num_generations=1,
                                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                         top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p, seed=cfg.seed,
                                         max_prompt_len=cfg.max_prompt_len)
    model.train(was_training)
    ending = f"[cut at {cfg.max_new_tokens} tokens]" if bool(roll.truncated[0]) else "[ended by EOS]"
    return f"{roll.texts[0].strip()}\n{ending}"


def warm_start(cfg, device: torch.device, rank: int) -> str:
    """SFT the output format for cfg.sft_steps into out/sft/ and return the adapter dir (every rank takes part).
    A resumed run reuses the adapter it started from, so its checkpoints keep matching it."""
    from grpo.model import load_model
    from grpo.sft import SFTConfig, train_sft
    sft_dir = Path(cfg.out) / "sft"
    if cfg.resume and (sft_dir / "adapter" / "adapter_config.json").exists():
        return str(sft_dir / "adapter")
    if rank == 0:
        sft_dir.mkdir(parents=True, exist_ok=True)
        base, tok = load_model(cfg.model, device=device, dtype=torch.float32)
        (sft_dir / BEFORE).write_text(sample_answer(cfg, base, tok), encoding="utf-8")
        del base
    sft = SFTConfig(model=cfg.model, data=cfg.data, out=str(sft_dir), steps=cfg.sft_steps, lr=cfg.sft_lr,
                    lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, seed=cfg.seed, dtype=cfg.dtype)
    if rank == 0:
        print(f"SFT warm start: {cfg.sft_steps} steps of LoRA SFT on the reference answers in the output format "
              f"→ {sft_dir / 'adapter'}", flush=True)
    return str(train_sft(sft, progress=False))


def report(cfg, model, tokenizer) -> str:
    """The before/after answers and the summary line, printed and returned (rank 0 calls it after the last step)."""
    before = Path(cfg.out) / "sft" / BEFORE
    lines = []
    if before.exists():
        lines += ["", "— before training (base model) —", before.read_text(encoding="utf-8")]
    lines += ["", "— after SFT + GRPO —", sample_answer(cfg, model, tokenizer), "",
              summary_line(read_metrics(Path(cfg.out) / "metrics.jsonl"), reward=cfg.reward)]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
