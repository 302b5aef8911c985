"""Memory planner CLI: analytic peak memory of a GRPO run (the planner itself is grpo/memory.py).

    python bench/memory.py --shape qwen3-14b --budget-gb 96            # the paper's run on one RTX 6000 PRO
    python bench/memory.py --shape tiny --dtype float32 --no-grad-checkpointing --logprob-impl reference

Prints one table (GB = 1e9 bytes) of where the bytes go in the two phases of a step, then the largest micro-batch
and rollout batch that fit `--budget-gb`, and as its last line one JSON object.
"""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e`

from grpo.memory import *  # noqa: E402,F401,F403 — re-exported: bench/throughput.py loads this file by path
from grpo.memory import DEPRECATED_IMPLS, DTYPE_BYTES, GB, LOGPROB_IMPLS, RunShape, _dims, check, fit, plan  # noqa: E402,F401


def shape_config(name: str) -> dict:
    """Qwen3Config kwargs of a named shape from grpo.model.SHAPES; the tiny shape gets the tiny tokenizer's vocab."""
    from grpo.model import FORMAT_TOKENS, SHAPES, TINY_VOCAB
    if name not in SHAPES:
        raise SystemExit(f"unknown --shape {name!r}; choose one of {sorted(SHAPES)}")
    cfg = dict(SHAPES[name])
    cfg.setdefault("vocab_size", TINY_VOCAB + len(FORMAT_TOKENS) if name == "tiny" else 151936)
    return cfg


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    dflt = RunShape()
    ap.add_argument("--shape", default="qwen3-14b", help="model shape from grpo.model.SHAPES")
    ap.add_argument("--budget-gb", type=float, default=96.0, help="device memory to fit, GB (1e9 bytes)")
    # Run shape
    ap.add_argument("--prompts-per-step", type=int, default=dflt.prompts_per_step, help="B prompts per step")
    ap.add_argument("--G", type=int, default=dflt.G, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=dflt.prompt_len, help="prompt tokens (padded)")
    ap.add_argument("--completion-len", type=int, default=dflt.completion_len, help="completion tokens (padded)")
    ap.add_argument("--micro-batch", type=int, default=dflt.micro_batch, help="sequences per forward/backward")
    ap.add_argument("--rollout-batch", type=int, default=0, help="sequences decoded together (0 = B*G)")
    # Model
    ap.add_argument("--lora-r", type=int, default=dflt.lora_r, help="LoRA rank (all linear layers of each block)")
    ap.add_argument("--dtype", default=dflt.dtype, choices=sorted(DTYPE_BYTES))
    ap.add_argument("--no-grad-checkpointing", action="store_true", help="keep every block's activations")
    ap.add_argument("--logprob-impl", default=dflt.logprob_impl, choices=LOGPROB_IMPLS + tuple(DEPRECATED_IMPLS))
    ap.add_argument("--full-finetune", action="store_true", help="train all weights instead of LoRA")
    a = ap.parse_args(argv)

    cfg = shape_config(a.shape)
    run = RunShape(prompts_per_step=a.prompts_per_step, G=a.G, prompt_len=a.prompt_len,
                   completion_len=a.completion_len, micro_batch=a.micro_batch, lora_r=a.lora_r, dtype=a.dtype,
                   grad_checkpointing=not a.no_grad_checkpointing, logprob_impl=a.logprob_impl,
                   full_finetune=a.full_finetune, rollout_batch=a.rollout_batch)
    p = plan(cfg, run)
    ok, msg = check(cfg, run, a.budget_gb)
    mb, rb = fit(cfg, run, a.budget_gb)
    print(f"{a.shape}: {p.params / 1e9:.3f} B params, {p.trainable_params / 1e6:.2f} M trainable, {run.dtype}, "
          f"ckpt={'on' if run.grad_checkpointing else 'off'}, logprobs={run.logprob_impl}, "
          f"B={run.prompts_per_step} G={run.G} P={run.prompt_len} T={run.completion_len} tokens")
    print(p.table(run))
    print(("fits: " if ok else "DOES NOT FIT: ") + msg)
    print(f"largest within {a.budget_gb:.0f} GB: micro_batch {mb} sequences ({mb * (run.prompt_len + run.completion_len):,}"
          f" tokens), rollout_batch {rb} sequences")
    out = dict(shape=a.shape, budget_gb=a.budget_gb, fits=ok, max_micro_batch=mb, max_rollout_batch=rb,
               run=asdict(run), **{f"{k}_gb": round(v / GB, 3) for k, v in asdict(p).items()
                                   if k not in ("params", "trainable_params")},
               params=p.params, trainable_params=p.trainable_params)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
