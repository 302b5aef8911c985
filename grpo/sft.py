"""LoRA SFT warm start on reference answers in the structured output format (prompt tokens masked).

    torchrun grpo/sft.py --data sft.jsonl --reasoning traces.jsonl --out runs/sft    # then:
    torchrun grpo/train.py --init_adapter runs/sft/adapter ...
    torchrun grpo/sft.py --steps 20 --out runs/sft-demo                              # CPU demo on the bundled sample

Flags as in grpo/train.py (grpo/config.py SFTConfig: `--key value` or `--key=value`, `--help` lists them). The target is
`format_target(reasoning, reference)`: the reasoning trace (from `data.augment`, a JSONL of {"id", "reasoning"}; empty
when absent) between <start_working_out> tags, the reference answer between <SOLUTION> tags, then EOS — unless
`--max_len` cut the target, which then ends without EOS (it must not learn to stop mid-answer). A sample's own
`reasoning` (the paper's `synthetic_reasoning` field) is used when no trace file covers it. The loss is the negative
log-likelihood of target tokens averaged over every target token of the step on all ranks (not a mean of per-rank
means), through the same `completion_logprobs` as GRPO. Then GRPO with `--init_adapter` merges this adapter into the
base, so its KL reference is this SFT model.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # `torchrun grpo/sft.py` puts grpo/ first on sys.path; we want the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from data import load_samples, resolve_data_path
from data.augment import read_traces
from data.format import format_target, to_messages
from grpo import dist
from grpo.config import SFTConfig, cli, parse_args
from grpo.logprobs import completion_logprobs
from grpo.model import add_lora, compute_dtype, load_model


def encode(tokenizer, messages: list, target: str, max_len: int):
    """Prompt ids (chat template + generation prompt) and target ids, as 1-D tensors: at most max_len target tokens,
    ending in EOS only when the whole target fits (a cut target must not teach the model to stop there)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    p = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    t = tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(t) + 1 > max_len:
        return p, t[:max_len]
    return p, torch.cat([t, torch.tensor([tokenizer.eos_token_id])])


def training_pairs(cfg: SFTConfig, tokenizer) -> list:
    """(prompt ids, target ids) of every sample with a reference answer, in data order: all SFT trains on (and what
    the demo's warm-start cache key hashes, grpo/demo.py)."""
    samples = [s for s in load_samples(resolve_data_path(cfg.data)) if s.reference]
    if not samples:
        raise SystemExit(f"{cfg.data}: no sample has a reference answer to train on")
    traces = read_traces(cfg.reasoning) if cfg.reasoning else {}  # data.augment's output (a torn line is skipped)
    return [encode(tokenizer, to_messages(s), format_target(traces.get(s.id, s.reasoning or ""), s.reference),
                   cfg.max_len) for s in samples]


def collate(pairs: list, pad_id: int):
    """Left-pad prompts, right-pad targets: the same layout as rollouts, so completion_logprobs applies unchanged."""
    P = max(len(p) for p, _ in pairs)
    T = max(len(t) for _, t in pairs)
    ids = torch.full((len(pairs), P + T), pad_id)
    attn = torch.zeros((len(pairs), P + T), dtype=torch.long)
    cmask = torch.zeros((len(pairs), T), dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        ids[i, P - len(p):P], ids[i, P:P + len(t)] = p, t
        attn[i, P - len(p):P + len(t)] = 1
        cmask[i, :len(t)] = 1
    return ids, attn, cmask  # (S, P+T), (S, P+T), (S, T)


def main(argv: list) -> None:
    cfg = parse_args(argv, SFTConfig)  # every flag checked (grpo/config.py validate_sft) before the process group
    train_sft(cfg)
    dist.close()


def train_sft(cfg: SFTConfig, progress: bool = True) -> Path:
    """Run SFT in this process and return out/adapter (out/model with --full_finetune). Uses the process group when
    there is one (initialising it under torchrun) and leaves it open, so grpo/train.py can call it before GRPO (the
    demo's warm start, grpo/demo.py)."""
    rank, world, device = dist.init()
    random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    dtype = torch.float32 if cfg.full_finetune else compute_dtype(cfg.dtype, device)  # full FT: fp32 master weights
    model, tok = load_model(cfg.model, device=device, dtype=dtype)
    pairs_all = training_pairs(cfg, tok)
    if not cfg.full_finetune:
        model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
    model.train()  # from_pretrained returns eval mode
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    per_rank = cfg.batch_size // world
    order = torch.randperm(len(pairs_all), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    bar = tqdm(range(cfg.steps), desc="sft", disable=rank != 0 or not progress)
    for step in bar:
        idx = [order[(step * cfg.batch_size + rank * per_rank + j) % len(pairs_all)] for j in range(per_rank)]
        ids, attn, cmask = (x.to(device) for x in collate([pairs_all[i] for i in idx], tok.pad_token_id))
        logp = completion_logprobs(model, ids, attn, cmask)                           # (S, T)
        # ÷ the target tokens of all ranks, and the gradients summed (not averaged) over ranks: the token mean of the
        # global batch, whatever the ranks' share of tokens
        tokens = dist.all_reduce_sum(cmask.sum().float())
        loss = -(logp * cmask).sum() / tokens.clamp(min=1)
        loss.backward()
        if world > 1:
            for p in params:
                dist.all_reduce_sum(p.grad)
        loss = dist.all_reduce_sum(loss.detach())  # the global NLL per token, for the progress bar
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(nll=f"{loss.item():.3f}")  # sync: once per step, for the progress bar
    if rank == 0:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.full_finetune:  # an HF model dir GRPO loads as --model (its frozen copy is then the KL reference)
            model.save_pretrained(out / "model")
            tok.save_pretrained(out / "model")
        else:
            model.save_pretrained(out / "adapter")  # PEFT format: adapter_model.safetensors + adapter_config.json
        (out / "sft_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        print(f"{_saved(cfg)} saved to {out / _saved(cfg)} (final nll {loss.item():.3f})", flush=True)
    dist.barrier()  # the other ranks read what rank 0 wrote
    return Path(cfg.out) / _saved(cfg)


def _saved(cfg: SFTConfig) -> str:
    """What SFT writes under out/: the LoRA adapter, or the whole model (--full_finetune)."""
    return "model" if cfg.full_finetune else "adapter"


if __name__ == "__main__":
    dist.exit(cli(main, sys.argv[1:]))
