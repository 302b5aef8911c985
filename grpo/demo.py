"""The embedded demo's two ends: an SFT warm start before GRPO, and a before/after report after it.

    torchrun grpo/train.py          # preset tiny: SFT (--sft_steps) into runs/demo/sft/, GRPO from it, this report

The paper's pipeline in miniature. `warm_start` samples one answer from the base model (the first bundled question,
seed --seed), then runs grpo/sft.py's SFT in this process on the data's reference answers in the structured format
(full fine-tuning under --full_finetune, as the tiny preset does, else LoRA) and returns what GRPO starts from: the
SFT model dir (GRPO's --model; its frozen copy is the KL reference) or the adapter dir (GRPO's --init_adapter: it
trains that adapter on, and a frozen copy of it is the reference). `report` samples the same question with the same
seed from the trained policy and prints both answers and `summary_line` over metrics.jsonl. The keyword judge behind
the demo's scores is a toy: it counts rubric keywords.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from data import load_samples, resolve_data_path
from data.format import to_messages
from grpo import dist
from grpo.model import build_tiny
from grpo.metrics import read_metrics, summary_line
from grpo.rollout import make_engine

BEFORE = "before.txt"  # in out/sft/: the base model's answer, printed again after training


def sample_answer(cfg, model, tokenizer) -> str:
    """One answer to the data's first question, sampled as a rollout samples it (same seed ⇒ same noise), with how it
    ended: by EOS, or cut at --max_new_tokens."""
    sample = load_samples(resolve_data_path(cfg.data))[0]
    was_training = model.training
    roll = make_engine("eager").generate(model, tokenizer, [to_messages(sample)], num_generations=1,
                                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                         top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p, seed=cfg.seed,
                                         max_prompt_len=cfg.max_prompt_len)
    model.train(was_training)
    ending = f"[cut at {cfg.max_new_tokens} tokens]" if bool(roll.truncated[0]) else "[ended by EOS]"
    return f"{roll.texts[0].strip()}\n{ending}"


def model_fingerprint(name_or_path: str) -> str:
    """What identifies a base model's weights and tokenizer without reading them: for a local dir every file's name,
    size and mtime (as make decides staleness); for a hub id its cached snapshot dir, named by the commit."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        return json.dumps([(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:  # not cached yet: loading it will download, and the id is all we know
        return name_or_path


def cache_dir(sft, tokenizer, world: int, device: torch.device) -> Path:
    """Where a warm start with these settings is kept: SFT is deterministic given its inputs, so a second run (and
    the test suite's many tiny runs) reuses it, as build_tiny reuses the tiny model. The key is everything the SFT's
    result depends on: its config (out excluded), the base model's files, the token ids of every training pair (data,
    reasoning traces, output format, chat template, tokenizer), the SFT code, and where it runs (world size, device
    type, torch and transformers versions: the reduction order and the kernels)."""
    import transformers
    from grpo import sft as sft_module
    from grpo.sft import training_pairs
    pairs = hashlib.sha256()
    for prompt, target in training_pairs(sft, tokenizer):
        pairs.update(json.dumps([prompt.tolist(), target.tolist()]).encode())
    model = model_fingerprint(build_tiny() if sft.model == "tiny" else sft.model)
    code = hashlib.sha256(Path(sft_module.__file__).read_bytes()).hexdigest()
    key = json.dumps([{**asdict(sft), "out": ""}, model, pairs.hexdigest(), code, world, device.type,
                      torch.__version__, transformers.__version__], default=str)
    root = Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo-rubric"))
    return root / f"sft-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def warm_start(cfg, device: torch.device, rank: int) -> str:
    """SFT the output format for cfg.sft_steps into out/sft/ and return what GRPO starts from (every rank takes part):
    with --full_finetune the SFT model dir (GRPO's --model), else the LoRA adapter dir (GRPO's --init_adapter).
    Reuses a cached warm start of the same settings; a resumed run reuses the one it started from. Data without
    reference answers has nothing to imitate: the warm start is skipped (one line says so) and cfg's value returned."""
    from grpo.config import SFTConfig
    from grpo.model import load_model, load_tokenizer
    from grpo.sft import train_sft
    here = Path(cfg.out) / "sft"
    saved = "model" if cfg.full_finetune else "adapter"
    if cfg.resume and (here / saved).is_dir():
        return str(here / saved)
    if not any(s.reference for s in load_samples(resolve_data_path(cfg.data))):  # nothing to imitate: GRPO from base
        if rank == 0:
            print(f"SFT warm start skipped: no sample in {cfg.data} has a reference answer (--sft_steps=0 silences "
                  f"this)", flush=True)
        return cfg.model if cfg.full_finetune else cfg.init_adapter  # unchanged
    sft = SFTConfig(model=cfg.model, data=cfg.data, out="", steps=cfg.sft_steps, lr=cfg.sft_lr,
                    full_finetune=cfg.full_finetune, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                    lora_targets=cfg.lora_targets, seed=cfg.seed, dtype=cfg.dtype)
    cache = cache_dir(sft, load_tokenizer(cfg.model), dist.world_size(), device)
    # rank 0 looks, every rank follows its answer: a concurrent run filling the cache between two ranks' looks (or
    # a per-node cache) must not send one rank into the collective SFT alone
    cached = dist.all_reduce_sum(torch.tensor(float(rank == 0 and (cache / saved).is_dir()))).item() > 0
    if not cached:
        if rank == 0:
            print(f"SFT warm start: {cfg.sft_steps} steps of {'full' if cfg.full_finetune else 'LoRA'} SFT on the "
                  f"reference answers in the output format (cached in {cache})", flush=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        sft.out = str(tmp)
        try:
            train_sft(sft, progress=False)
            if rank == 0:
                with contextlib.suppress(OSError):  # atomic: a concurrent run either wins or finds it done
                    tmp.rename(cache)
        finally:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # a killed or losing SFT leaves no .tmp dir behind
        dist.barrier()
    elif rank == 0:
        print(f"SFT warm start: reusing {cache} ({cfg.sft_steps} steps, same settings)", flush=True)
    if rank == 0:
        shutil.rmtree(here, ignore_errors=True)
        shutil.copytree(cache, here)  # a few hundred KB: the run dir holds the adapter its checkpoints continue
        base, tok = load_model(cfg.model, device=device, dtype=torch.float32)
        (here / BEFORE).write_text(sample_answer(cfg, base, tok), encoding="utf-8")  # the base model's answer
        del base
    dist.barrier()
    return str(here / saved)


def report(cfg, model, tokenizer, rank: int = 0) -> str:
    """The before/after answers and the summary line, returned, and printed on rank 0. Every rank calls it after the
    last step, inside the loop's `dist.root_unsharded(policy)`: under FSDP2 sampling gathers shards, a collective."""
    after = sample_answer(cfg, model, tokenizer)
    if rank != 0:
        return ""
    before = Path(cfg.out) / "sft" / BEFORE
    lines = []
    if before.exists():
        lines += ["", "— before training (base model) —", before.read_text(encoding="utf-8")]
    lines += ["", "— after SFT + GRPO —", after, "",
              summary_line(read_metrics(Path(cfg.out) / "metrics.jsonl"), reward=cfg.reward)]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
