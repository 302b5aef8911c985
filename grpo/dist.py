"""torch.distributed setup for torchrun: gloo on CPU; on GPU one group with two backends, "cpu:gloo,cuda:nccl"
(NCCL for CUDA tensors — gradients, FSDP2 shards —, gloo for the host-side rewards, votes and metrics, which NCCL
cannot reduce); also runs as a plain `python` process (world 1).

    torchrun --standalone --nproc_per_node=2 grpo/train.py --steps 4
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist

from grpo.logprobs import PolicyLogprobs


def backend() -> str:
    """The process-group backend string: every collective is dispatched by its tensor's device type, so a CUDA run
    needs a backend for CPU tensors too (an NCCL-only group fails on the first CPU all-reduce)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init() -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Initialises the process group when launched by torchrun."""
    if "RANK" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend())
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def exit(code: int) -> None:
    """End an entry point's process with `code`. A torchrun worker skips the interpreter's teardown (os._exit after
    flushing): by then its process group is destroyed and its files closed, but gloo's worker threads can still be
    joinable when Python and the C++ statics are torn down, and std::terminate then aborts the rank at exit
    ("terminate called without an active exception", SIGABRT; seen in 2 of ~20 two-process SFT runs on a loaded
    2-core CPU, cf. pytorch/pytorch#179291) — torchrun would report a finished run as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    if "RANK" in os.environ:
        os._exit(code)
    sys.exit(code)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned); identity on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0 (rank order)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model, mode: str) -> torch.nn.Module:
    """mode "none" (one process), "ddp" (replicated weights, gradients all-reduced — LoRA, small models) or "fsdp"
    (FSDP2 `fully_shard` per decoder layer + root: weights, gradients and AdamW states sharded over ranks — full
    fine-tuning of models that do not fit one GPU). Both average gradients over ranks."""
    policy = PolicyLogprobs(model)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        device = next(model.parameters()).device
        return DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in model.get_decoder().layers:
            fully_shard(layer)
        fully_shard(policy)  # root: embeddings, final norm, LM head
        # FSDP2 initialises lazily from whichever sharded module runs first; sampling calls the decoder layers
        # directly, so run one 2-token forward through the root now to make it the root.
        with torch.no_grad():
            ids = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
            policy(ids, torch.ones_like(ids), torch.ones_like(ids[:, :1]))
        policy.reshard()  # the root keeps its parameters gathered after a forward; the optimizer must see the shards
    return policy


def unwrap(policy) -> torch.nn.Module:
    """The HF (or PEFT) model inside a PolicyLogprobs (DDP-wrapped, FSDP-sharded or bare), or the model itself."""
    policy = policy.module if hasattr(policy, "module") else policy  # DDP
    return policy.model if isinstance(policy, PolicyLogprobs) else policy


def is_sharded(policy) -> bool:
    return hasattr(policy, "set_requires_gradient_sync")  # an FSDP2 module


@contextlib.contextmanager
def gradient_sync(policy, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of an optimizer step."""
    if enabled:
        yield
    elif hasattr(policy, "no_sync"):  # DDP
        with policy.no_sync():
            yield
    elif is_sharded(policy):
        policy.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            policy.set_requires_gradient_sync(True)
    else:
        yield


@contextlib.contextmanager
def root_unsharded(policy, whole: bool = False):
    """Calls into the HF model that bypass the policy's forward (sampling) need FSDP2's root parameters (embeddings,
    final norm, LM head) gathered; the decoder layers gather their own in their forward hooks.

    whole=True (a rollout): gather every decoder layer too, once, and keep it gathered until the context exits.
    Otherwise a sharded layer all-gathers and frees its weights in every forward, i.e. once per layer per decoded
    token. It costs the full unsharded weights on every rank for the rollout (the memory planner checks that)."""
    if not is_sharded(policy):
        yield
        return
    layers = [m for m in policy.modules() if is_sharded(m) and m is not policy] if whole else []  # FSDP2 units
    for m in layers:  # their post-forward hooks now keep the weights (the root never runs a forward here)
        m.set_reshard_after_forward(False, recurse=False)
    modules = [policy, *layers]
    for m in modules:
        m.unshard()  # not recursive: one all-gather per FSDP2 unit
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
        for m in layers:
            m.set_reshard_after_forward(True, recurse=False)  # parallelize()'s fully_shard default
