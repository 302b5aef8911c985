"""Atomic checkpoints: write `step-NNNNNN.tmp-PID/`, then rename to `step-NNNNNN/`, then prune to the last K.

    python -m pytest tests/test_checkpoint.py

A checkpoint directory holds:
  adapter/        the LoRA adapter in PEFT format (adapter_model.safetensors + adapter_config.json), loadable with
                  `PeftModel.from_pretrained(base, DIR/adapter)`; or model/ (safetensors) under full fine-tuning
  optimizer.pt    AdamW state;  scheduler.pt  LR schedule state
  rng.pt          torch (CPU and CUDA), python and numpy RNG states
  state.json      step, data position, and anything else the loop needs to continue exactly
A crash mid-save leaves only a `.tmp-PID` directory, which `latest()` ignores, so the previous checkpoint stays usable;
`remove_stale(run_dir)` deletes such leftovers at the next start.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from grpo.dist import is_sharded, unwrap
from grpo.model import is_peft


_FULL = dict(full_state_dict=True, cpu_offload=True)
_TMP = re.compile(r"step-\d{6}\.tmp-(\d+)")  # what save() writes before its rename; nothing else is ever deleted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(run_dir: str | Path) -> list[Path]:
    """Delete `checkpoints/step-NNNNNN.tmp-PID/` dirs left by a save that was killed, and return them. Only names
    save() writes, and only when that PID is no longer running (a live save of another process is left alone)."""
    removed = []
    for p in (Path(run_dir) / "checkpoints").glob("step-*.tmp-*"):
        m = _TMP.fullmatch(p.name)
        if m and p.is_dir() and not (int(m.group(1)) != os.getpid() and _alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return sorted(removed)


def save(run_dir: str | Path, step: int, model, optimizer, scheduler, state: dict, keep_last: int = 2,
         rank: int = 0) -> Path | None:
    """Call on every rank (gathering FSDP-sharded weights and optimizer state is collective); rank 0 writes."""
    weights, optim_state = None, None
    if is_sharded(model):  # full state dicts through torch.distributed.checkpoint, HF names for the weights
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
        opts = StateDictOptions(**_FULL)
        weights = {k.removeprefix("model."): v for k, v in get_model_state_dict(model, options=opts).items()}
        optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    if rank != 0:
        return None
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f"step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf = unwrap(model)
    hf.save_pretrained(tmp / ("adapter" if is_peft(hf) else "model"), **({"state_dict": weights} if weights else {}))
    torch.save(optim_state if optim_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic on POSIX within one filesystem
    for old in sorted(p for p in ckpt_root.glob("step-*") if ".tmp-" not in p.name)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: str | Path) -> Path | None:
    done = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if ".tmp-" not in p.name)
    return done[-1] if done else None


def load(ckpt: str | Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG states in place; returns state.json."""
    ckpt = Path(ckpt)
    if not (ckpt / "state.json").exists():
        raise FileNotFoundError(f"{ckpt} is not a checkpoint (no state.json); pass a checkpoints/step-NNNNNN dir")
    hf = unwrap(model)
    optim_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    if is_peft(hf):
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(hf, load_file(ckpt / "adapter" / "adapter_model.safetensors"))
    elif is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
        weights = {"model." + k: v for k, v in load_file(ckpt / "model" / "model.safetensors").items()}
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
        optim_state = None
    else:
        missing, unexpected = hf.load_state_dict(load_file(ckpt / "model" / "model.safetensors"), strict=False)
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):  # tied head is saved once
            raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())
