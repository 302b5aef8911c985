"""Rollout engines head to head: eager (HF forward per token) vs static (grpo/decode.py), and the bandwidth floor.

    python bench/bench_decode.py                                  # CPU: tiny model, then qwen3-0.6b shape, ~2 min
    python bench/bench_decode.py --shape qwen3-14b --rows 24 --prompt-len 512 --new-tokens 1024   # GPU, the paper's
    python bench/bench_decode.py --engines static --lora-r 16     # LoRA on all linear layers (merged for rollout)
    python bench/bench_decode.py --amp                            # full fine-tuning: fp32 masters, bf16 autocast

Random-weight models of grpo.model.SHAPES (no download), random prompt ids, no EOS: every row decodes --new-tokens.
Per engine it prints the rollout time, decode ms per step (one token for every row), tokens/s, and the ratio to the
floor: a decode step must read every weight once plus the K/V of every row's context, so
    floor ms/step = (weight bytes + K/V bytes at the mean context) / copy bandwidth,
with the copy bandwidth measured here (a large tensor copy: read + write bytes / time). With --amp (fp32 master
weights under bf16 autocast, as full fine-tuning rolls out) the floor counts bf16 weight bytes: what an engine that
casts once per rollout reads per token. The last line is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install -e`

import torch  # noqa: E402

from grpo.model import SHAPES, add_lora, random_model  # noqa: E402
from grpo.rollout import make_engine  # noqa: E402

GB = 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, nbytes: int | None = None, reps: int = 5) -> float:
    """Bytes/s of a large device-to-device copy, counting read + write (what a memory-bound kernel moves)."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def decode_bytes_per_step(model, rows: int, context: float, itemsize: int | None = None) -> float:
    """Bytes one decode step must read: every weight matrix once (an untied input embedding is only indexed, so
    not counted) + K and V of `context` cached tokens for each of `rows` sequences. itemsize: bytes per weight and
    K/V element in the compute dtype (default: the weights' own)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg, emb = base.config, base.get_input_embeddings().weight
    size = lambda p: itemsize or p.element_size()  # noqa: E731
    tied = base.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    weights = sum(p.numel() * size(p) for p in base.parameters()) - (0 if tied else emb.numel() * size(emb))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * size(emb) * rows * context
    return weights + kv


def floor_ratio(model, seconds: float, *, rows: int, prompt_len: int, new_tokens: int, chunks: int, bw: float,
                itemsize: int | None = None) -> dict:
    """decode ms/step, tokens/s and the ratio to the bandwidth floor for `chunks` runs of rows × new_tokens."""
    steps = (new_tokens - 1) * chunks                                        # decode calls after each prefill
    mean_ctx = prompt_len + new_tokens / 2
    floor_s = decode_bytes_per_step(model, rows, mean_ctx, itemsize) / bw
    ms = 1e3 * seconds / steps if steps else float("nan")
    return {"decode_ms_per_step": ms, "floor_ms_per_step": 1e3 * floor_s,
            "decode_tok_per_s": rows * steps / seconds if seconds > 0 else None,
            "ratio_to_floor": ms / (1e3 * floor_s) if steps else None}


def time_engine(engine, model, ids, mask, *, new_tokens: int, device, repeats: int) -> tuple[float, float]:
    """(seconds of the whole rollout, seconds of its prefill alone) for one chunk, best of `repeats` after a warm-up."""
    kw = dict(eos=torch.tensor([], dtype=torch.long, device=device), pad=0, temperature=1.0, min_p=0.1, seed=0)
    engine.sample_tokens(model, ids, mask, max_new_tokens=2, **kw)          # warm-up (allocator, graphs, kernels)
    best, best_prefill = float("inf"), float("inf")
    for _ in range(repeats):
        for n, slot in ((new_tokens, "full"), (1, "prefill")):
            sync(device)
            t0 = time.perf_counter()
            engine.sample_tokens(model, ids, mask, max_new_tokens=n, **kw)
            sync(device)
            dt = time.perf_counter() - t0
            if slot == "full":
                best = min(best, dt)
            else:
                best_prefill = min(best_prefill, dt)
    return best, best_prefill


def run(shape: str, a, device, dtype) -> list[dict]:
    torch.manual_seed(0)
    model = random_model(shape, dtype=dtype, device=device).eval()
    if a.lora_r:
        model = add_lora(model, r=a.lora_r, alpha=2 * a.lora_r).eval()
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.01)  # a real adapter, not peft's zero init
    V = model.config.vocab_size
    ids = torch.randint(0, V, (a.rows, a.prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    bw = copy_bandwidth(device)
    out = []
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if a.amp else contextlib.nullcontext()
    for name in a.engines.split(","):
        engine = make_engine(name)
        with amp:
            total, pre = time_engine(engine, model, ids, mask, new_tokens=a.new_tokens, device=device,
                                     repeats=a.repeats)
        r = {"shape": shape, "engine": name, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({torch.get_num_threads()} threads)",
             "dtype": str(dtype).split(".")[-1] + (" + bf16 autocast" if a.amp else ""), "rows": a.rows,
             "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "lora_r": a.lora_r, "rollout_s": total,
             "prefill_s": pre, "copy_gb_per_s": bw / GB,
             **floor_ratio(model, total - pre, rows=a.rows, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
                           chunks=1, bw=bw, itemsize=2 if a.amp else None)}
        out.append(r)
        print(f"{shape:<11}{name:<8}{r['rollout_s']:>9.2f} s{r['decode_ms_per_step']:>10.1f} ms"
              f"{r['decode_tok_per_s']:>10.0f}{r['floor_ms_per_step']:>10.2f} ms{r['ratio_to_floor']:>8.1f}×", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--shape", default="tiny,qwen3-0.6b", help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument("--engines", default="eager,static")
    ap.add_argument("--rows", type=int, default=8, help="sequences decoded at once")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank on all linear layers (0 = none)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="fp32 weights under bf16 autocast (full fine-tuning's rollout)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" and not a.amp else torch.float32
    print(f"{'shape':<11}{'engine':<8}{'rollout':>11}{'decode/step':>13}{'tok/s':>10}{'floor':>13}{'ratio':>9}")
    results = [r for shape in a.shape.split(",") for r in run(shape, a, device, dtype)]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
