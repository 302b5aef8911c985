"""GRPO with rubric rewards, written to be read top to bottom.

    torchrun grpo/train.py                                    # embedded CPU demo: SFT warm start, then GRPO, ~2 min
    torchrun --standalone --nproc_per_node=2 grpo/train.py    # the same, data-parallel on 2 processes (gloo)
    torchrun grpo/train.py --preset qwen3-14b-rtx6000 --data heart_grpo.jsonl --judge_model gpt-4.1-mini
    torchrun grpo/train.py --resume auto --out runs/demo      # continue the latest checkpoint exactly

One step (grpo/step.py `grpo_step`, the same function bench/throughput.py times): B prompts → G samples each
(grpo/rollout.py) → the judge grades every rubric criterion (rewards/judge.py) → a rubric reward per sample
(rewards/functions.py) → group-relative advantages (grpo/advantages.py) → log-probs of completion tokens only
(grpo/logprobs.py → grpo/kernels/) → clipped surrogate + β·KL_k3 (grpo/loss.py) → AdamW. This file sets it up, draws
the prompts, grades them, logs and checkpoints.

How this departs from the GRPO paper, frankly: the reference policy is the model with the LoRA adapter switched off
(no second copy; after an SFT warm start it is the SFT model, through a frozen copy of the SFT adapter that GRPO
trains on); at num_iterations = 1 the importance ratio is exactly 1, so no "old" forward is run; samples whose
reward the judge could not compute (every verdict unknown) are masked out of the loss instead of scored 0; and
sampling noise is keyed by (seed, sequence), so a resumed or multi-process run draws the very same completions.
"""
from __future__ import annotations

import functools
import math
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `torchrun grpo/train.py` puts grpo/ first on sys.path; we want the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from data import load_samples, resolve_data_path
from data.loaders import clip_messages
from data.format import graded_answer, parse, to_messages
from grpo import checkpoint, config, demo, dist
from grpo.config import parse_args, to_json
from grpo import kernels
from grpo.logprobs import check_kernels
from grpo.metrics import NullLogger, RunLogger, peak_memory_gb
from grpo.model import (Reference, add_lora, autocast, compute_dtype, continue_adapter, load_model, merge_adapter,
                        weights_dtype)
from grpo.rollout import make_engine
from grpo.step import TRAIN_PHASES, Clock, Learner, grpo_step
from rewards import needs as reward_needs, score as reward_score
from rewards.judge import grade_sync, make_judge, rate_sync


def lr_lambda(cfg, total_updates: int):
    """Linear warmup for warmup_ratio of the updates, then linear / cosine decay to 0, or constant."""
    warmup = max(1, int(cfg.warmup_ratio * total_updates))

    def f(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        progress = (update - warmup) / max(1, total_updates - warmup)
        return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0}[cfg.schedule]
    return f


def check_memory_plan(cfg, model, log) -> None:
    """Warn, with the planner's numbers, before a run that will not fit (grpo/memory.py)."""
    if not cfg.memory_budget_gb:
        return
    from grpo import memory
    fits, message = memory.check(model.config, memory.run_shape(cfg), cfg.memory_budget_gb)
    log.write(("" if fits else "WARNING: planned peak exceeds the budget\n") + message)


def gather_for_rollout(cfg, model, world: int, device) -> bool:
    """FSDP2: gather the whole model once per rollout instead of every layer for every token, when the planner says a
    rank can hold it (budget: --memory_budget_gb, else the GPU's memory; no limit on CPU)."""
    if not (cfg.fsdp and world > 1):
        return False
    from grpo import memory
    budget = cfg.memory_budget_gb or (torch.cuda.get_device_properties(device).total_memory / 1e9
                                      if device.type == "cuda" else 0.0)
    return not budget or memory.fsdp_rollout_fits(model.config, memory.run_shape(cfg), budget, world)


class JudgeDown(RuntimeError):
    """--max_unknown_steps consecutive steps with most rewards unknown: stop rather than train on no signal."""


def main(argv: list) -> None:
    cfg = parse_args(argv)  # every flag checked here, before any process group, data or model
    rank, world, device = dist.init()
    if cfg.prompts_per_step % world:
        raise ValueError(f"--prompts_per_step={cfg.prompts_per_step} must be divisible by the {world} processes")
    B_r, G = cfg.prompts_per_step // world, cfg.num_generations  # prompts per rank, samples per prompt
    out = Path(cfg.out)
    engine = make_engine(cfg.rollout, cfg, out)  # --rollout: each ENGINES factory reads its flags from the config
    engine.check()  # a served engine is reached before any model loads or trains
    if cfg.sft_steps and not cfg.init_adapter:  # the demo's SFT warm start, then GRPO from it (grpo/demo.py)
        setattr(cfg, "model" if cfg.full_finetune else "init_adapter", demo.warm_start(cfg, device, rank))
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(to_json(cfg))
        stale = checkpoint.remove_stale(out)  # step-N.tmp-PID/ of a save that was killed

    # ---- data, model, judge ----
    # full fine-tuning: fp32 master weights (what AdamW steps) under bf16 autocast; LoRA: base in the compute dtype
    compute = compute_dtype(cfg.dtype, device)
    wdtype = weights_dtype(compute, cfg.full_finetune)
    amp = functools.partial(autocast, device, compute, wdtype)  # a fresh context per use
    samples = load_samples(resolve_data_path(cfg.data))
    model, tokenizer = load_model(cfg.model, device=device, dtype=wdtype)
    if cfg.init_adapter and cfg.full_finetune:  # train every weight of the SFT model; its frozen copy is the reference
        model = merge_adapter(model, cfg.init_adapter)
    elif cfg.init_adapter:  # train the SFT adapter on; a frozen copy of it is the reference (below)
        model = continue_adapter(model, cfg.init_adapter)
    elif not cfg.full_finetune:
        model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = Reference(model, keep_copy=cfg.beta > 0 and cfg.full_finetune,  # taken before any update or resume
                          adapter=cfg.init_adapter if cfg.beta > 0 and not cfg.full_finetune else None)
    # DDP or FSDP2 wraps a module whose forward is the completion log-probs (grpo/dist.py); one process: no wrapper
    policy = dist.parallelize(model, "none" if world == 1 else "fsdp" if cfg.fsdp else "ddp")
    policy.train()  # from_pretrained returns eval mode, and HF checkpoints activations only in training mode
    judge = make_judge(cfg.judge, **{
        "keyword": {},
        "local": dict(model=model, tokenizer=tokenizer),  # the policy's own base weights, adapter switched off
        "openai": dict(model=cfg.judge_model, base_url=cfg.judge_base_url or None, mode=cfg.judge_mode,
                       concurrency=cfg.judge_concurrency, timeout=cfg.judge_timeout,
                       cache_path=str(out / "judge_cache.sqlite")),
    }.get(cfg.judge, {}))
    reward_names = config.reward_names(cfg)  # the trained one first, then those only logged
    consumed = {reward_needs(n) for n in reward_names}  # "verdicts" | "rating": which judge calls a step makes

    params = [p for p in policy.parameters() if p.requires_grad]  # after sharding: FSDP2 swaps in DTensors
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_updates = cfg.steps * cfg.num_iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_updates))
    learner = Learner(policy, reference, optimizer, params, scheduler, amp, device, rank, world)

    start_step, cursor, skipped = 0, 0, 0  # cursor = prompts consumed from the global data stream
    skips = {"skipped/no_signal": 0, "skipped/bad_gradient": 0}  # why: no advantage ≠ 0 | non-finite or zero gradient
    unknown_run = 0  # consecutive steps with > 50 % of rewards unknown (--max_unknown_steps)
    resume = str(checkpoint.latest(out) or "") if cfg.resume == "auto" else cfg.resume
    if resume:
        state = checkpoint.load(resume, policy, optimizer, scheduler)
        start_step, cursor, skipped = state["step"], state["cursor"], state["skipped"]
        skips.update(state.get("skips", {}))
        if rank == 0:  # judge/* count rank 0's judge, so rank 0 continues the counters it saved
            judge.load_stats(state.get("judge", {}))
    judge_errors = judge.stats().get("judge/errors", 0.0)
    log = RunLogger(out, cfg.steps, start_step, cfg.tensorboard, cfg.plot) if rank == 0 else NullLogger()
    if rank == 0 and stale:
        log.write(f"removed {len(stale)} unfinished checkpoint dir(s) of a killed save: {', '.join(p.name for p in stale)}")
    log.write(f"{len(samples)} samples | {sum(p.numel() for p in params):,} trainable params | world {world} | "
              f"B={cfg.prompts_per_step} G={G} | reward {cfg.reward} | judge {cfg.judge} | loss {cfg.loss}")
    if cfg.init_adapter and not cfg.full_finetune:
        lora = model.peft_config["default"]
        differ = [f"--{k}={getattr(cfg, k)}" for k, v in (("lora_r", lora.r), ("lora_alpha", lora.lora_alpha))
                  if getattr(cfg, k) != v]
        log.write(f"--init_adapter: training its LoRA (r={lora.r}, alpha={lora.lora_alpha})"
                  + (f"; {', '.join(differ)} do not apply" if differ else ""))
    check_memory_plan(cfg, model, log)
    whole = gather_for_rollout(cfg, model, world, device)
    if device.type == "cuda" and cfg.logprob_impl == "fused" and kernels.HAS_TRITON:
        with dist.root_unsharded(policy):  # FSDP2: the head weight gathered
            log.write(f"kernel self-check: {check_kernels(model.get_output_embeddings().weight)}")

    engine.after_update(model, start_step)  # a served engine samples the adapter we start from (resume, SFT), not the base

    @functools.lru_cache(maxsize=2)  # a step spans at most two epochs
    def epoch_order(epoch: int) -> list:
        return torch.randperm(len(samples), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).tolist()

    def next_prompts():
        """This rank's slice of the next B prompts of the global stream: a fresh permutation every epoch."""
        nonlocal cursor
        picked = [(k, samples[epoch_order(k // len(samples))[k % len(samples)]])
                  for k in range(cursor + rank * B_r, cursor + (rank + 1) * B_r)]
        cursor += cfg.prompts_per_step
        return picked

    def rollout_and_score(clock):
        """The next prompts, G completions each, graded: (rollouts, {reward: (B_r, G), NaN = unknown}, extras)."""
        picked = next_prompts()
        with clock("rollout"), dist.root_unsharded(policy, whole=whole), amp():
            roll = engine.generate(model, tokenizer, [to_messages(s) for _, s in picked], num_generations=G,
                                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                   top_k=cfg.top_k, min_p=cfg.min_p, seed=cfg.seed, seq_offset=picked[0][0] * G,
                                   max_prompt_len=cfg.max_prompt_len, rollout_batch=cfg.rollout_batch)
        with clock("judge"):
            parsed = [parse(t) for t in roll.texts]  # the judge grades the answer, not the reasoning (--malformed)
            # the judge reads the prompt as the policy did: its last max_prompt_len tokens (a 10 MB line is not sent)
            questions = [clip_messages(s.prompt, tokenizer, cfg.max_prompt_len) for _, s in picked]
            items = [(questions[b], graded_answer(parsed[b * G + g], cfg.malformed), s.rubric)
                     for b, (_, s) in enumerate(picked) for g in range(G)]
            verdicts = grade_sync(judge, items) if "verdicts" in consumed else [None] * len(items)
            ratings = rate_sync(judge, items) if "rating" in consumed else [None] * len(items)  # one Likert call each
        scores = {name: score_tensor(name, items, verdicts, ratings, G) for name in reward_names}
        well_formed = torch.tensor([p.well_formed for p in parsed], dtype=torch.float32)
        return roll, scores, {"format_ok": well_formed.mean().item(), "rollout_tokens": roll.completion_mask.sum()}

    for step in range(start_step + 1, cfg.steps + 1):
        t_step = time.perf_counter()
        clock = Clock()
        done = grpo_step(rollout_and_score, learner, cfg, clock, tokenizer.pad_token_id)  # grpo/step.py
        with clock("weight_sync"):
            engine.after_update(model, step)  # a served engine loads this step's adapter before the next rollout
        skipped += cfg.num_iterations if done.no_signal else done.bad_updates
        skips["skipped/no_signal"] += done.no_signal
        skips["skipped/bad_gradient"] += done.bad_updates
        unknown_frac = done.metrics["reward/unknown_frac"]
        unknown_run = unknown_run + 1 if unknown_frac > 0.5 else 0
        t_train = sum(clock.time[p] for p in (*TRAIN_PHASES, "weight_sync"))

        # ---- log on rank 0 (the step's metrics are already reduced over ranks), checkpoint ----
        n_upd = cfg.num_iterations
        metrics = {
            **done.metrics,
            "actor/lr": scheduler.get_last_lr()[0], "skipped/steps": skipped, **skips,
            **({"skipped/reason": done.reason} if done.reason else {}),
            "time/rollout": clock.time["rollout"], "time/judge": clock.time["judge"], "time/train": t_train,
            "time/step": time.perf_counter() - t_step,
            "tok_per_s/rollout": done.extra["rollout_tokens"].item() * world / max(clock.time["rollout"], 1e-9),
            # completion tokens through a forward: μ policy passes (+ backward), + old (μ > 1), + reference (β > 0)
            "tok_per_s/train": None if done.no_signal else  # nothing trained: null, not 0
            done.num_tokens * (n_upd + (n_upd > 1) + (cfg.beta > 0)) / max(t_train, 1e-9),
            "memory/peak_gb": peak_memory_gb(device), "data/prompts_seen": cursor,
            **{k: float(v) for k, v in judge.stats().items()},
            **{k: float(v) for k, v in engine.stats.items()},  # a served engine's request counts
            "judge/step_errors": judge.stats().get("judge/errors", 0.0) - judge_errors,  # rank 0's failed requests
        }
        judge_errors = metrics["judge/step_errors"] + judge_errors
        log.log(step, metrics)
        if cfg.max_unknown_steps and unknown_run >= cfg.max_unknown_steps:  # before saving: the last checkpoint stands
            log.close()
            raise JudgeDown(f"{unknown_run} consecutive steps with > 50 % of rewards unknown (step {step}: "
                            f"{unknown_frac:.0%}): the judge is down or cannot grade — {judge.describe()}. Fix it, then "
                            f"--resume=auto (latest checkpoint: {checkpoint.latest(out) or 'none'}); "
                            f"--max_unknown_steps=0 never stops")
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoint.save(out, step, policy, optimizer, scheduler,
                            {"cursor": cursor, "skipped": skipped, "skips": skips, "judge": judge.stats()},
                            keep_last=cfg.keep_last, rank=rank)  # every rank: gathering FSDP shards is collective
            dist.barrier()
    log.close()
    if cfg.sft_steps:  # before/after answers, summary line; every rank samples: FSDP2 gathers shards collectively
        with dist.root_unsharded(policy, whole=whole), amp():
            demo.report(cfg, model, tokenizer, rank)
    dist.close()


def score_tensor(name: str, items: list, verdicts: list, ratings: list, G: int) -> torch.Tensor:
    """(B_r, G) float32 reward `name` of each sample, NaN where it is None (the judge could not tell) or not finite."""
    vals = [reward_score(name, rubric, met, rating) for (_, _, rubric), met, rating in zip(items, verdicts, ratings)]
    vals = [float("nan") if v is None or not math.isfinite(v) else v for v in vals]  # ±inf is no value either
    return torch.tensor(vals, dtype=torch.float32).view(-1, G)


def _user_errors() -> tuple:
    """Exceptions that mean the user must fix something (a flag, a data line, the judge): one line, exit code 2."""
    judge_config = getattr(sys.modules.get("rewards.openai_judge"), "JudgeConfigError", JudgeDown)
    return ValueError, FileNotFoundError, JudgeDown, judge_config


def cli(argv: list) -> int:
    """The command line: main() through config.cli (a user error: one `error: …` line on rank 0, exit code 2), then
    the process group closed (main closes it after a finished run; after a user error it is closed here)."""
    code = config.cli(main, argv, _user_errors)
    dist.close()
    return code


if __name__ == "__main__":
    dist.exit(cli(sys.argv[1:]))
