"""Log-prob kernels vs torch: correctness at scale, time, throughput against measured ceilings, extra peak memory.

    python bench/bench_kernels.py                      # CUDA: Qwen3-14B head (H=5120, V=151,936), N = 4k, 16k, 64k
    python bench/bench_kernels.py --n 1024 --h 64 --v 4096 --reps 3   # anything; CPU default is a small shape
    python bench/bench_kernels.py --sampler            # kernels.sample_tokens vs grpo/rollout.py's torch sampler

Prints one table per N and, as its last line, one JSON object (what bench/RESULTS.md needs). `run(...)` returns
the same dict for bench/throughput.py. On CPU only the torch paths run (eager reference vs our chunked path), at a
small shape, so the script cannot rot; the Triton rows, torch.compile, Liger-Kernel's LigerFusedLinearGRPOLoss and
Apple's cut-cross-entropy join on CUDA when installed.

Units: fused linear rows report TFLOP/s of the matmul work they must do (fwd 2NHV; fwd+bwd 3·2NHV = forward,
recompute, dhidden — the frozen-head case) and "floor×" = time / (that work at the measured bf16 matmul peak);
selective rows report GB/s of logits traffic (fwd reads NV·b; fwd+bwd reads twice, writes once) and the fraction of
measured copy bandwidth. "extra GB" = peak allocated minus what the inputs hold. Correctness: max over the first
256 tokens of |exp(logp − logp_fp64) − 1| (issue 4: ≤ 2e-3 bf16).
"""
import argparse
import datetime
import importlib
import json
import math
import statistics
import time

import torch

from grpo import kernels

lin = importlib.import_module("grpo.kernels.linear_logprobs")
sel = importlib.import_module("grpo.kernels.selective_logprobs")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timed(fn, device, reps, warmup=2):
    """Median seconds of fn() over reps calls after warm-up; CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()  # sync: wait for the events
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def extra_peak_gb(fn, device):
    """Peak memory fn() allocates beyond what is already live (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 1e9


def ceilings(device, dtype):
    """Measured bf16 matmul TFLOP/s and copy GB/s of this device (CUDA), or None on CPU."""
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_gbs": None}
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    t = timed(lambda: a @ a, device, reps=20)
    x = torch.empty(1 << 29, device=device, dtype=torch.uint8)  # 512 MB ≫ L2
    y = torch.empty_like(x)
    tc = timed(lambda: y.copy_(x), device, reps=20)
    return {"matmul_tflops": 2 * 8192 ** 3 / t / 1e12, "copy_gbs": 2 * x.numel() / tc / 1e9}


def ratio_error(logp, ref):
    return (torch.expm1((logp.double() - ref).abs())).max().item()


def linear_methods(device):
    """name → fn(hidden, weight, targets) -> logp, for the fused-linear comparison."""
    methods = {"eager torch (matmul + fp32 log_softmax)": lin._reference,
               "ours: chunked torch path": lambda h, w, t: kernels.linear_logprobs(h, w, t, impl="torch")}
    if device.type == "cuda":
        methods["torch.compile(reference)"] = torch.compile(lin._reference)
        if kernels.HAS_TRITON:
            methods["ours: triton fused"] = lambda h, w, t: kernels.linear_logprobs(h, w, t, impl="triton")
        try:  # Apple's cut-cross-entropy: per-token loss = −logp
            from cut_cross_entropy import linear_cross_entropy
            methods["cut-cross-entropy"] = lambda h, w, t: -linear_cross_entropy(h, w, t, reduction="none")
        except ImportError:
            pass
        try:  # Liger's fused GRPO loss: with advantages 1 and beta 0 its gradient is −∂logp summed
            # forward(_input (B, T, H), lin_weight, selected_token_ids (B, T), attention_mask (B, T), advantages (B,))
            # as of liger-kernel 0.8.5; it chunks over sequences (chunk_size=1), so hand it 1024-token sequences
            # as TRL does — one 64k-token "sequence" would make it build (64k, V) fp32 logits
            from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
            liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False)

            def liger_fn(h, w, t):
                T = 1024 if h.shape[0] % 1024 == 0 else h.shape[0]
                B = h.shape[0] // T
                loss = liger(h.view(B, T, -1), w, t.view(B, T), torch.ones_like(t.view(B, T)),
                             torch.ones(B, device=h.device))
                return loss[0] if isinstance(loss, tuple) else loss
            methods["Liger LigerFusedLinearGRPOLoss"] = liger_fn
        except ImportError:
            pass
    return methods


def selective_methods(device):
    methods = {"eager torch (fp32 log_softmax + gather)": sel._reference,
               "ours: chunked torch path": lambda x, t: kernels.selective_logprobs(x, t, impl="torch")}
    if device.type == "cuda":
        methods["torch.compile(reference)"] = torch.compile(sel._reference)
        if kernels.HAS_TRITON:
            methods["ours: triton"] = lambda x, t: kernels.selective_logprobs(x, t, impl="triton")
    return methods


def bench_one(name, fn, args, grad_arg, device, reps, work, unit, ceiling, check_ref):
    """Times fn(*args) forward and forward+backward; returns one result row (errors become a note)."""
    row = {"method": name}
    try:
        with torch.no_grad():
            out = fn(*args)
        if check_ref is not None and out.dim() == 1:
            row["ratio_err"] = ratio_error(out[:check_ref.shape[0]].float(), check_ref)
        del out

        def fwd():
            with torch.no_grad():
                fn(*args)

        def fwd_bwd():
            out = fn(*args)
            out.sum().backward() if out.dim() == 0 else out.backward(torch.ones_like(out))
            grad_arg.grad = None

        for tag, f, w in (("fwd", fwd, work[0]), ("fwd+bwd", fwd_bwd, work[1])):
            t = timed(f, device, reps)
            row[f"{tag}_ms"] = 1e3 * t
            row[f"{tag}_{unit}"] = w / t / (1e12 if unit == "tflops" else 1e9)
            if ceiling:
                row[f"{tag}_of_ceiling"] = w / t / ceiling
            row[f"{tag}_extra_gb"] = extra_peak_gb(f, device)
    except torch.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as e:  # a third-party API drift must not hide our numbers
        row["note"] = f"{type(e).__name__}: {str(e)[:80]}"
    finally:
        grad_arg.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def run(ns=None, H=None, V=None, dtype="bf16", device=None, reps=None, selective=True) -> dict:
    """Benchmarks both kernels at each N; returns {"device", "date", "ceilings", "linear": {N: rows}, ...}."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    ns = ns or ([4096, 16384, 65536] if gpu else [256])
    H, V = H or (5120 if gpu else 256), V or (151_936 if gpu else 8192)
    reps = reps or (20 if gpu else 3)
    dt = DTYPES[dtype]
    ceil = ceilings(device, dt)
    result = {"device": torch.cuda.get_device_name(device) if gpu else "cpu",
              "date": datetime.date.today().isoformat(), "dtype": dtype, "H": H, "V": V, "ceilings": ceil,
              "linear": {}, "selective": {}}
    gen = torch.Generator(device=device).manual_seed(0)
    weight = (torch.randn(V, H, device=device, generator=gen) / math.sqrt(H)).to(dt)          # frozen LoRA head
    for N in ns:
        hidden = (2 * torch.randn(N, H, device=device, generator=gen)).to(dt).requires_grad_()
        targets = torch.randint(0, V, (N,), device=device, generator=gen)
        k = min(N, 256)
        ref = lin._reference(hidden[:k].detach().double(), weight.double(), targets[:k])        # (k,) fp64 truth
        flops = 2 * N * H * V
        result["linear"][N] = [bench_one(name, fn, (hidden, weight, targets), hidden, device, reps,
                                         (flops, 3 * flops), "tflops", ceil["matmul_tflops"] and
                                         ceil["matmul_tflops"] * 1e12, ref)
                               for name, fn in linear_methods(device).items()]
        for row in result["linear"][N]:
            if ceil["matmul_tflops"] and "fwd+bwd_ms" in row:
                row["floor_x"] = row["fwd+bwd_ms"] / 1e3 / (3 * flops / (ceil["matmul_tflops"] * 1e12))
        if selective:
            with torch.no_grad():
                logits = (hidden.detach() @ weight.t()).requires_grad_()                       # (N, V)
            ref = sel._reference(logits[:k].detach().double(), targets[:k])
            nbytes = N * V * logits.element_size()
            result["selective"][N] = [bench_one(name, fn, (logits, targets), logits, device, reps,
                                                (nbytes, 3 * nbytes), "gbs", ceil["copy_gbs"] and
                                                ceil["copy_gbs"] * 1e9, ref)
                                      for name, fn in selective_methods(device).items()]
            del logits
        del hidden
    return result


def print_tables(result):
    c = result["ceilings"]
    nan = float("nan")
    print(f"# {result['device']}  {result['date']}  {result['dtype']}  H={result['H']} V={result['V']}  ceilings: "
          f"matmul {c['matmul_tflops'] or nan:.0f} TFLOP/s, copy {c['copy_gbs'] or nan:.0f} GB/s")
    for kind, unit in (("linear", "tflops"), ("selective", "gbs")):
        for N, rows in result[kind].items():
            print(f"\n{kind} N={N}")
            print(f"{'method':44s} {'err':>8s} {'fwd ms':>9s} {'fwd ' + unit:>11s} {'f+b ms':>9s} "
                  f"{'f+b ' + unit:>11s} {'of ceil':>8s} {'floor×':>7s} {'extra GB':>9s}")
            for r in rows:
                if "note" in r:
                    print(f"{r['method']:44s} {r['note']}")
                    continue
                f = lambda key, fmt: format(r[key], fmt) if r.get(key) is not None else "-"  # noqa: E731
                print(f"{r['method']:44s} {f('ratio_err', '8.1e'):>8s} {f('fwd_ms', '9.2f'):>9s} "
                      f"{f('fwd_' + unit, '11.1f'):>11s} {f('fwd+bwd_ms', '9.2f'):>9s} "
                      f"{f('fwd+bwd_' + unit, '11.1f'):>11s} {f('fwd+bwd_of_ceiling', '8.2f'):>8s} "
                      f"{f('floor_x', '7.2f'):>7s} {f('fwd+bwd_extra_gb', '9.2f'):>9s}")


def run_sampler(rows_list=None, V=None, dtype="bf16", device=None, reps=None) -> dict:
    """One decode step's sampling (top-k 50, top-p 0.95, min-p 0.05, T 0.7) per method: ms, logits GB/s (read once),
    extra peak GB, and whether its tokens equal today's sampler (filter_logits + gumbel_noise argmax)."""
    from grpo.rollout import filter_logits, gumbel_noise
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    rows_list, V, reps = rows_list or ([64, 512] if gpu else [16]), V or (151_936 if gpu else 8192), reps or 3
    f = dict(temperature=0.7, top_k=50, top_p=0.95, min_p=0.05)

    def today(x, seq):
        return (filter_logits(x, **f) + gumbel_noise(1, seq, 5, x.shape[-1])).argmax(-1)
    methods = {"torch sampler (grpo/rollout.py today)": today,
               "ours: torch reference (chunked)": lambda x, s: kernels.sample_tokens(x, s, 5, seed=1, impl="torch",
                                                                                    **f)}
    if gpu and kernels.HAS_TRITON:
        methods["ours: triton, one program per row"] = lambda x, s: kernels.sample_tokens(x, s, 5, seed=1,
                                                                                           impl="triton", **f)
    result = {"device": torch.cuda.get_device_name(device) if gpu else "cpu",
              "date": datetime.date.today().isoformat(), "dtype": dtype, "V": V, "sampler": {}}
    for rows in rows_list:
        x = (3 * torch.randn(rows, V, device=device)).to(DTYPES[dtype])                             # (rows, V)
        seq = torch.arange(rows, device=device)
        with torch.no_grad():
            want = today(x, seq)
            result["sampler"][rows] = []
            for name, fn in methods.items():
                t = timed(lambda: fn(x, seq), device, reps)
                result["sampler"][rows].append({"method": name, "ms": 1e3 * t, "same_tokens": bool(torch.equal(
                    fn(x, seq), want)), "gbs": x.numel() * x.element_size() / t / 1e9,
                    "extra_gb": extra_peak_gb(lambda: fn(x, seq), device)})
    for rows, table in result["sampler"].items():
        print(f"\nsampler rows={rows} V={V} {dtype}")
        print(f"{'method':44s} {'ms':>9s} {'GB/s':>9s} {'extra GB':>9s} same tokens")
        for r in table:
            print(f"{r['method']:44s} {r['ms']:9.3f} {r['gbs']:9.2f} "
                  f"{'-' if r['extra_gb'] is None else format(r['extra_gb'], '9.3f'):>9s} {r['same_tokens']}")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", help="completion tokens per call (default 4k 16k 64k on CUDA)")
    p.add_argument("--h", type=int, help="hidden size (default 5120 on CUDA)")
    p.add_argument("--v", type=int, help="vocabulary size (default 151,936 on CUDA)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--reps", type=int, help="timed repetitions after warm-up (median reported)")
    p.add_argument("--no-selective", action="store_true", help="skip selective_logprobs (it builds (N, V) logits)")
    p.add_argument("--sampler", action="store_true", help="time only the sampler (rows = --n, default 64 512 on CUDA)")
    a = p.parse_args()
    if a.sampler:
        print(json.dumps(run_sampler(a.n, a.v, a.dtype, reps=a.reps)))
        return
    result = run(a.n, a.h, a.v, a.dtype, reps=a.reps, selective=not a.no_selective)
    print_tables(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
