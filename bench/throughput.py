"""End-to-end GRPO step profile: where every second and every gigabyte of a training step goes.

    python bench/throughput.py --shape tiny                          # CPU, ~10 s: tiny random Qwen3, small batch
    python bench/throughput.py --shape qwen3-14b                     # GPU: the paper's run (LoRA r16 all-linear, G=6,
                                                                     #   1024-token completions, bf16, grad checkpointing)
    python bench/throughput.py --shape qwen3-14b --compare           # fused vs reference log-probs, back to back
    python bench/throughput.py --model Qwen/Qwen3-0.6B --judge keyword --grad-checkpointing off --attn eager

Runs the trainer's own step (grpo.step.grpo_step: a grpo.rollout engine, rewards.judge, advantages, log-probs, loss,
AdamW) on random prompts, `--warmup` unmeasured then `--steps` measured, and prints
  1. a time table: seconds per phase per step, tokens/s and achieved TFLOP/s of each phase, MFU of the step;
  2. a memory table: peak GB per phase next to bench/memory.py's prediction and the ratio measured / planned;
  3. writes OUT/throughput.png (stacked time per phase; memory per phase with the planner's peaks) and, as its last
     line, one JSON object with every number.

Phases: prefill (the prompt forward inside the rollout, timed by hooks on the model call or the static engine's
prefill), decode (rest of the rollout; `--rollout` picks the engine, grpo.rollout.ENGINES), judge, old log-probs (only when --num-iterations > 1), ref log-probs (only when --beta > 0), policy forward,
policy backward, optimizer (clip + AdamW). Completions always run to --completion-len (no EOS), so every step has the
same shape. Random-weight models write noise, so the judge is timed on the bundled demo's reference answers (real
text of real length); with --model PATH it grades the decoded completions. The update trains on random N(0, 1)
rewards (the judge's Hybrid reward is logged beside them): every group varies, so no step is skipped as no-signal
and every measured step runs every phase.

Timing: on CUDA every phase boundary synchronizes, so a phase's time is its device work. Memory: on CUDA the peak of
torch.cuda.max_memory_allocated, reset at each phase start (what the planner predicts; excludes the CUDA context and
allocator cache). On CPU, RSS never goes down, so the peaks come from one extra, untimed step under torch.profiler's
allocation trace: resident tensors (weights, AdamW states) + the running sum of allocations inside each phase.
On a busy CPU box, OMP_NUM_THREADS=1 keeps OpenMP spin-waiting out of the tiny shape's numbers.
MFU counts model FLOPs (2·params·tokens forward + attention; backward 2× forward with full fine-tuning, 1× with LoRA
since frozen weights need no weight gradient), not the recompute of gradient checkpointing, over the step minus judging.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without `pip install -e`

import torch  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from grpo.config import TrainConfig  # noqa: E402
from grpo.dist import parallelize  # noqa: E402
from grpo.logprobs import IMPLS  # noqa: E402
from grpo.loss import LOSSES  # noqa: E402
from grpo.model import SHAPES, Reference, add_lora, default_dtype, load_model, random_model  # noqa: E402
from grpo.rollout import ENGINES, Rollouts, completion_masks, make_engine  # noqa: E402
from grpo.step import TRAIN_PHASES, Learner, grpo_step  # noqa: E402  TRAIN_PHASES: the planner's "train" peak

GB = 1e9
PHASES = ("prefill", "decode", "judge", "old_logp", "ref_logp", "policy_fwd", "policy_bwd", "optimizer")
MEM_PHASES = ("rollout", "judge", "old_logp", "ref_logp", "policy_fwd", "policy_bwd", "optimizer")
TRAIN = TrainConfig()  # the trainer's defaults: ε, grad clip, temperature
LABELS = {"prefill": "prefill", "decode": "decode", "rollout": "rollout", "judge": "judge", "old_logp": "old log-probs",
          "ref_logp": "ref log-probs", "policy_fwd": "policy forward", "policy_bwd": "policy backward",
          "optimizer": "optimizer", "other": "other"}
# Dense bf16 tensor-core peak, TFLOP/s, from the vendor spec sheets; first substring of the device name that matches.
PEAK_BF16_TFLOPS = [("H200 NVL", 835.0), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("RTX PRO 6000", 503.8), ("A100", 312.0), ("L40S", 362.1), ("RTX 6000 Ada", 364.2)]
# Per-shape defaults. Big shapes: the paper's run (grpo.config preset qwen3-14b-rtx6000); tiny: seconds on a CPU.
PAPER = dict(prompts=8, G=6, prompt_len=512, completion_len=1024, micro_batch=6, rollout_batch=24, lora_r=16)
DEFAULTS = {"tiny": dict(prompts=2, G=4, prompt_len=32, completion_len=32, micro_batch=4, rollout_batch=0, lora_r=16)}


def load_by_path(name: str):
    """bench/ is not a package: load a sibling script (memory.py, bench_kernels.py) by path, as the trainer does."""
    path = ROOT / "bench" / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    onoff = lambda s: {"on": True, "off": False}[s]  # noqa: E731
    # Model
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="random-weight Qwen3 of this shape")
    ap.add_argument("--model", default="", help="HF model dir or hub id instead of --shape (real weights + tokenizer)")
    ap.add_argument("--dtype", default="", choices=["", "float32", "bfloat16", "float16"], help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", default="", help="cuda | cpu | cuda:N (default: cuda if available)")
    ap.add_argument("--attn", default="", choices=["", "sdpa", "flash_attention_2", "eager"],
                    help="attention implementation (default: grpo.model.attention_implementation)")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank on all linear layers; 0 = full fine-tune")
    ap.add_argument("--grad-checkpointing", type=onoff, default=True, metavar="on|off", help="recompute block activations")
    ap.add_argument("--logprob-impl", default="fused", choices=IMPLS, help="grpo.logprobs path for old/ref/policy")
    # Run shape (defaults: the paper's run; smaller for --shape tiny)
    ap.add_argument("--prompts", type=int, default=None, help="B prompts per step")
    ap.add_argument("--G", type=int, default=None, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=None, help="P prompt tokens (random ids, no padding)")
    ap.add_argument("--completion-len", type=int, default=None, help="T completion tokens (always decoded in full)")
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward (0 = B*G)")
    ap.add_argument("--rollout-batch", type=int, default=None, help="sequences decoded at once (0 = B*G)")
    ap.add_argument("--min-p", type=float, default=0.1, help="rollout min-p (the paper's 0.1)")
    ap.add_argument("--rollout", default="static", choices=sorted(ENGINES), help="rollout engine (grpo.rollout.ENGINES)")
    # Loss
    ap.add_argument("--loss", default="grpo", choices=sorted(LOSSES))
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient; > 0 adds the reference forward")
    # the trainer's own defaults (grpo/config.py), so the bench times the step train.py runs
    ap.add_argument("--eps-low", type=float, default=TRAIN.eps_low, help="clip ratio below 1 - eps_low")
    ap.add_argument("--eps-high", type=float, default=TRAIN.eps_high, help="clip ratio above 1 + eps_high")
    ap.add_argument("--grad-clip", type=float, default=TRAIN.grad_clip, help="max global grad norm (0 = off)")
    ap.add_argument("--temperature", type=float, default=TRAIN.temperature, help="sampling and log-prob temperature")
    ap.add_argument("--num-iterations", type=int, default=1, help="μ updates per rollout; > 1 adds the old forward")
    ap.add_argument("--judge", default="keyword", help="rewards.judge name (keyword = offline) or none (random rewards)")
    # Benchmark
    ap.add_argument("--steps", type=int, default=2, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (allocator, kernels, AdamW states)")
    ap.add_argument("--compare", action="store_true", help="run --logprob-impl fused and reference back to back")
    ap.add_argument("--kernels", action="store_true", help="also run bench/bench_kernels.py's run()")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: from the device name)")
    ap.add_argument("--out", default="runs/throughput", help="directory for throughput.png")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for k, v in DEFAULTS.get(a.shape if not a.model else "", PAPER).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    S = a.prompts * a.G  # 0 = all; never more than the step has (the paper's 24 with a smaller --prompts/--G)
    a.micro_batch, a.rollout_batch = min(a.micro_batch or S, S), min(a.rollout_batch or S, S)
    if a.prompt_len < 2 or a.completion_len < 2:
        ap.error("--prompt-len and --completion-len must be >= 2 (a prefill and at least one decode step)")
    return a


# ------------------------------------------------------------------------------------------------------- timing
class Clock:
    """Seconds and peak memory per phase. A phase is also a torch.profiler record_function range, so the CPU memory
    trace can be cut at the same boundaries. On CUDA: synchronize at both ends (device work, not launch time),
    reset_peak_memory_stats at entry, max_memory_allocated at exit."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.time: dict = defaultdict(float)
        self.mem: dict = defaultdict(int)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with record_function(f"phase/{name}"):
            yield
            self.sync()
        self.time[name] += time.perf_counter() - t0
        if self.cuda:
            self.mem[name] = max(self.mem[name], torch.cuda.max_memory_allocated())


@contextlib.contextmanager
def prefill_timer(model, clock: Clock):
    """Time the prompt forward inside the rollout: the model call whose input has more than one position (eager
    engine), or grpo.decode.prefill (static engine: its own layer stack, not a model call)."""
    import grpo.decode as decode
    t0, own = [], decode.prefill

    def start():
        clock.sync()
        t0.append(time.perf_counter())

    def stop():
        if t0:
            clock.sync()
            clock.time["prefill"] += time.perf_counter() - t0.pop()

    def pre(module, args, kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] > 1:
            start()

    def timed(*args, **kwargs):
        start()
        out = own(*args, **kwargs)
        stop()
        return out

    hooks = [model.register_forward_pre_hook(pre, with_kwargs=True),
             model.register_forward_hook(lambda *_, **__: stop(), with_kwargs=True)]
    decode.prefill = timed
    try:
        yield
    finally:
        decode.prefill = own
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------------------------------------- judging
def make_reward_fn(a, tokenizer):
    """(step, completion_ids (S, T)) → rewards (B, G) float32, NaN = unknown, and what the judge graded."""
    if a.judge == "none":
        return (lambda step, ids: torch.randn(a.prompts, a.G, generator=torch.Generator().manual_seed(step))), "none"
    try:
        from rewards import REWARDS
        from rewards.judge import grade_sync, make_judge
    except ImportError as e:
        raise SystemExit(f"judge {a.judge!r} needs rewards.judge ({e}); pass --judge none to time the step without it")
    from data import bundled_demo_path, load_samples
    judge = make_judge(a.judge)
    samples = load_samples(bundled_demo_path())
    refs = [s.reference for s in samples if s.reference]
    graded = "decoded completions" if tokenizer is not None else "demo reference answers"

    def reward_fn(step: int, ids: torch.Tensor) -> torch.Tensor:
        S = a.prompts * a.G
        picked = [samples[(step * a.prompts + b) % len(samples)] for b in range(a.prompts)]
        if tokenizer is not None:
            texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)  # sync: ids to host
        else:  # random weights write noise: grade real answers of real length, a different one per sample
            texts = [refs[(step * S + i) % len(refs)] for i in range(S)]
        items = [(s.prompt, texts[b * a.G + g], s.rubric) for b, s in enumerate(picked) for g in range(a.G)]
        verdicts = grade_sync(judge, items)
        return torch.tensor([float("nan") if (r := REWARDS["hybrid"](rub, met)) is None else r
                             for (_, _, rub), met in zip(items, verdicts)], dtype=torch.float32).view(a.prompts, a.G)

    return reward_fn, graded


# ------------------------------------------------------------------------------------------------------- one step
NO_EOS = torch.tensor([], dtype=torch.long)  # decode every sequence to --completion-len


def step_config(a, impl: str) -> TrainConfig:
    """The trainer's config for the step this bench runs: its defaults, with the bench's shape and switches."""
    return TrainConfig(prompts_per_step=a.prompts, num_generations=a.G, max_new_tokens=a.completion_len,
                       micro_batch=a.micro_batch, rollout_batch=a.rollout_batch, loss=a.loss, beta=a.beta,
                       eps_low=a.eps_low, eps_high=a.eps_high, grad_clip=a.grad_clip, temperature=a.temperature,
                       num_iterations=a.num_iterations, logprob_impl=impl, min_p=a.min_p, rollout=a.rollout,
                       reward="random", log_rewards="hybrid", seed=a.seed)


def random_prompts_draw(step: int, model, engine, reward_fn, a, V: int):
    """grpo.step's draw(clock) for the bench: B random prompts of P tokens, G samples each decoded to exactly T
    tokens (no EOS), graded by reward_fn (timed, logged) and trained on random rewards — every step has the same
    shape and runs every phase."""
    device = next(model.parameters()).device
    B, G, P, T = a.prompts, a.G, a.prompt_len, a.completion_len
    S, R = B * G, a.rollout_batch or B * G
    eos = NO_EOS.to(device)

    def draw(clock):
        prompt_ids = torch.randint(0, V, (B, P), generator=torch.Generator().manual_seed(a.seed + step))
        prompt_ids = prompt_ids.repeat_interleave(G, 0).to(device)                # (S, P) G samples per prompt
        prompt_mask = torch.ones_like(prompt_ids)                                 # (S, P)
        with clock("rollout"), prefill_timer(model, clock):
            completion = torch.cat([engine.sample_tokens(model, prompt_ids[i:i + R], prompt_mask[i:i + R], eos=eos,
                                                         pad=0, max_new_tokens=T, temperature=a.temperature,
                                                         min_p=a.min_p, seed=a.seed, seq_offset=step * S + i)
                                    for i in range(0, S, R)])                     # (S, T)
        cmask, _ = completion_masks(completion, eos)                              # (S, T) all ones
        with clock("judge"):
            graded = reward_fn(step, completion)                                  # (B, G)
        noise = torch.randn(B, G, generator=torch.Generator().manual_seed(a.seed * 7919 + step))  # (B, G)
        roll = Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion,
                        completion_mask=cmask, texts=[], truncated=torch.ones(S, dtype=torch.bool),
                        num_generations=G)
        return roll, {"random": noise, "hybrid": graded}, {"rollout_tokens": cmask.sum()}

    return draw


# ------------------------------------------------------------------------------------------------------- memory
def resident_bytes(model, optimizer) -> int:
    """Bytes of tensors alive between steps: parameters, buffers, AdamW states (each storage once)."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def cpu_phase_peaks(run_step, model, optimizer) -> dict:
    """Peak allocated bytes per phase on CPU: resident tensors + the running sum of torch.profiler's allocation
    events (+ on malloc, − on free) over one untimed step, cut at the Clock's record_function ranges."""
    from torch.profiler import ProfilerActivity, profile
    base = resident_bytes(model, optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_step()
    events = list(prof.profiler.kineto_results.events())
    windows = defaultdict(list)
    for e in events:
        if e.name().startswith("phase/"):
            windows[e.name()[6:]].append((e.start_ns(), e.start_ns() + e.duration_ns()))
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    peaks, live, i = {}, 0, 0
    marks = sorted((t0, t1, name) for name, ws in windows.items() for t0, t1 in ws)
    for t0, t1, name in marks:
        while i < len(mem) and mem[i][0] < t0:
            live += mem[i][1]
            i += 1
        peak = live
        while i < len(mem) and mem[i][0] <= t1:
            live += mem[i][1]
            peak = max(peak, live)
            i += 1
        peaks[name] = max(peaks.get(name, 0), base + peak)
    return peaks


# ------------------------------------------------------------------------------------------------------- FLOPs
def step_flops(cfg, a, dims, n_params: int, n_lora: int) -> dict:
    """Model FLOPs per phase of one step. Forward: 2·(block params)·tokens + 2·V·H per head token + 4·L·(heads·head_dim)
    per causal (query, key) pair (QKᵀ and AV). Backward: 2× forward (full fine-tune) or 1× (LoRA: input grads only)."""
    H, V, L, Dq = dims["H"], dims["V"], dims["L"], dims["Dq"]
    body = n_params - V * H * (1 if dims["tied"] else 2)  # the embedding lookup is not a matmul
    S, P, T = a.prompts * a.G, a.prompt_len, a.completion_len
    pairs = lambda n: n * (n + 1) // 2  # noqa: E731  causal pairs in a sequence of n tokens

    def fwd(body_tokens, head_tokens, attn_pairs, lora=True):
        return 2 * (body + (n_lora if lora else 0)) * body_tokens + 2 * V * H * head_tokens + 4 * L * Dq * attn_pairs

    seq = fwd(S * (P + T), S * T, S * pairs(P + T))
    bwd = (2 if a.lora_r == 0 else 1) * seq * a.num_iterations
    return {"prefill": fwd(S * P, S, S * pairs(P)),
            "decode": fwd(S * (T - 1), S * (T - 1), S * sum(P + t + 1 for t in range(T - 1))),  # T−1 decode calls
            "judge": 0, "old_logp": seq if a.num_iterations > 1 else 0,
            "ref_logp": fwd(S * (P + T), S * T, S * pairs(P + T), lora=False) if a.beta > 0 else 0,
            "policy_fwd": seq * a.num_iterations, "policy_bwd": bwd, "optimizer": 0}


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float) -> float | None:
    if override:
        return override
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


# ------------------------------------------------------------------------------------------------------- run
def build(a, device: torch.device, dtype: torch.dtype):
    """(model with LoRA / full fine-tune + checkpointing, tokenizer or None, vocab size, base config)."""
    memory = load_by_path("memory")
    tokenizer = None
    if a.model:
        model, tokenizer = load_model(a.model, device=device, dtype=dtype)
    else:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype: a 14B model never exists in fp32
        try:
            model = random_model(a.shape, dtype=dtype, device=device, vocab_size=memory.shape_config(a.shape)["vocab_size"])
        finally:
            torch.set_default_dtype(previous)
    if a.attn:
        model.set_attn_implementation(a.attn)
    cfg = model.config
    if a.lora_r > 0:
        model = add_lora(model, r=a.lora_r, alpha=2 * a.lora_r, targets="all-linear")
    if a.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer, cfg.vocab_size, cfg


def bench(a, model, tokenizer, V: int, cfg, device, dtype, impl: str) -> dict:
    """Warm-up + measured steps of one configuration → the result dict (the JSON line)."""
    memory = load_by_path("memory")
    reference = Reference(model, keep_copy=a.beta > 0 and a.lora_r == 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    reward_fn, graded = make_reward_fn(a, tokenizer)
    engine = make_engine(a.rollout)
    learner = Learner(parallelize(model, "none"), reference, optimizer, params, device=device)
    train_cfg = step_config(a, impl)
    run = lambda step, clock: grpo_step(random_prompts_draw(step, model, engine, reward_fn, a, V),  # noqa: E731
                                        learner, train_cfg, clock, pad_id=0)

    for step in range(a.warmup):
        run(step, Clock(device))
    per_step, cuda_mem = [], defaultdict(int)
    for step in range(a.warmup, a.warmup + a.steps):
        clock = Clock(device)
        t0 = time.perf_counter()
        run(step, clock)
        clock.sync()
        wall = time.perf_counter() - t0
        t = {p: clock.time.get(p, 0.0) for p in PHASES}
        t["decode"] = clock.time["rollout"] - t["prefill"]
        t["other"] = max(wall - sum(t.values()), 0.0)  # advantages, batch assembly, host work between phases
        t["step"] = wall
        per_step.append(t)
        for k, v in clock.mem.items():
            cuda_mem[k] = max(cuda_mem[k], v)
    if device.type == "cuda":
        mem, method = dict(cuda_mem), "cuda max_memory_allocated, reset at each phase start"
    else:
        mem = cpu_phase_peaks(lambda: run(a.warmup + a.steps, Clock(device)), model, optimizer)
        method = "cpu: resident tensors + torch.profiler allocation trace of one extra untimed step"

    mean = {k: sum(s[k] for s in per_step) / len(per_step) for k in per_step[0]}
    S, P, T = a.prompts * a.G, a.prompt_len, a.completion_len
    tokens = {"prompt": S * P, "completion": S * T, "sequence": S * (P + T)}
    dims = memory._dims(cfg)
    n_params, n_lora = memory.param_count(cfg), memory.lora_param_count(cfg, a.lora_r)
    flops = step_flops(cfg, a, dims, n_params, n_lora)
    rate = lambda n, s: n / s if s > 0 else None  # noqa: E731
    mu_seq = tokens["sequence"] * a.num_iterations
    tok_per_s = {"overall": rate(tokens["completion"], mean["step"]),           # what the table's step row shows
                 "prefill": rate(tokens["prompt"], mean["prefill"]),
                 "decode": rate(tokens["completion"], mean["decode"]),          # sampled tokens / (rollout − prefill)
                 "old_logp": rate(tokens["sequence"], mean["old_logp"]),
                 "ref_logp": rate(tokens["sequence"], mean["ref_logp"]),
                 "policy_fwd": rate(mu_seq, mean["policy_fwd"]), "policy_bwd": rate(mu_seq, mean["policy_bwd"]),
                 "policy": rate(mu_seq, mean["policy_fwd"] + mean["policy_bwd"])}
    tflops = {p: rate(flops[p], mean[p]) / 1e12 for p in PHASES if flops[p] and mean[p] > 0}
    peak = peak_tflops(device, dtype, a.peak_tflops)
    busy = mean["step"] - mean["judge"]
    mfu = sum(flops.values()) / busy / (peak * 1e12) if peak else None
    # decode reads every weight matrix once per call; an untied embedding table is only indexed
    weight_bytes = (n_params - (0 if dims["tied"] else dims["V"] * dims["H"])) * torch.finfo(dtype).bits // 8
    decode_gbps = rate(weight_bytes * (T - 1) * math.ceil(S / (a.rollout_batch or S)), mean["decode"])
    floor = load_by_path("bench_decode").floor_ratio(  # decode ms/step vs (weights + K/V bytes) / copy bandwidth
        model, mean["decode"], rows=a.rollout_batch or S, prompt_len=P, new_tokens=T,
        chunks=math.ceil(S / (a.rollout_batch or S)), bw=load_by_path("bench_decode").copy_bandwidth(device))

    dname = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[str(dtype).split(".")[-1]]
    shape = memory.RunShape(prompts_per_step=a.prompts, G=a.G, prompt_len=P, completion_len=T,
                            micro_batch=a.micro_batch, lora_r=a.lora_r, dtype=dname,
                            grad_checkpointing=a.grad_checkpointing,
                            logprob_impl=impl, full_finetune=a.lora_r == 0,
                            rollout_batch=a.rollout_batch)
    plan = memory.plan(cfg, shape)
    m_roll = mem.get("rollout", 0)
    m_train = max((mem.get(p, 0) for p in TRAIN_PHASES), default=0)
    planner = {"rollout_gb": plan.peak_rollout / GB, "train_gb": plan.peak_train / GB,
               "measured_rollout_gb": m_roll / GB, "measured_train_gb": m_train / GB,
               "ratio_rollout": m_roll / plan.peak_rollout, "ratio_train": m_train / plan.peak_train,
               "peak_with_slack_gb": plan.peak / GB}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": a.model or f"{a.shape} (random weights)", "dtype": dname, "params": n_params,
        "trainable_params": sum(p.numel() for p in params),
        "config": {"B": a.prompts, "G": a.G, "P": P, "T": T, "micro_batch": a.micro_batch,
                   "rollout_batch": a.rollout_batch or S, "lora_r": a.lora_r, "grad_checkpointing": a.grad_checkpointing,
                   "attn": model.config._attn_implementation if hasattr(model.config, "_attn_implementation") else a.attn,
                   "logprob_impl": impl, "beta": a.beta, "num_iterations": a.num_iterations, "loss": a.loss,
                   "judge": a.judge, "judge_graded": graded, "min_p": a.min_p},
        "steps": a.steps, "warmup": a.warmup, "tokens": tokens, "time_s": mean, "per_step_time_s": per_step,
        "tok_per_s": tok_per_s, "flops": flops, "tflops": tflops, "peak_tflops": peak, "mfu": mfu,
        "decode_weight_gb_per_s": None if decode_gbps is None else decode_gbps / GB, "rollout_engine": a.rollout,
        "decode_ms_per_step": floor["decode_ms_per_step"], "decode_floor_ms_per_step": floor["floor_ms_per_step"],
        "decode_ratio_to_floor": floor["ratio_to_floor"],
        "memory_gb": {p: mem[p] / GB for p in MEM_PHASES if p in mem}, "memory_method": method,
        "planner": planner, "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
    }


# ------------------------------------------------------------------------------------------------------- report
def _skipped(p: str, c: dict) -> str:
    """Why a phase did not run in this configuration ("" if it did)."""
    return {"old_logp": "skipped (num_iterations = 1: old = policy, ratio ≡ 1)" if c["num_iterations"] == 1 else "",
            "ref_logp": "skipped (beta = 0: no KL term)" if c["beta"] == 0 else "",
            "judge": "skipped (--judge none: random rewards)" if c["judge"] == "none" else ""}.get(p, "")


def _bytes(gb: float) -> str:
    return f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1e3:.1f} MB"


def _flops(tf: float) -> str:
    return f"{tf:.1f} TFLOP/s" if tf >= 1 else f"{tf * 1e3:.2f} GFLOP/s"


def table(r: dict) -> str:
    c, t, tok = r["config"], r["time_s"], r["tok_per_s"]
    lines = [f"{r['model']} on {r['device']} | {r['dtype']} | "
             f"{'LoRA r' + str(c['lora_r']) + ' all-linear' if c['lora_r'] else 'full fine-tune'} | "
             f"ckpt {'on' if c['grad_checkpointing'] else 'off'} | attn {c['attn']} | log-probs {c['logprob_impl']}",
             f"B={c['B']} prompts × G={c['G']} = {c['B'] * c['G']} sequences of P={c['P']} + T={c['T']} tokens | "
             f"micro-batch {c['micro_batch']} | rollout batch {c['rollout_batch']} | beta {c['beta']} | "
             f"μ={c['num_iterations']} | judge {c['judge']} ({c['judge_graded']}) | "
             f"mean of {r['steps']} steps after {r['warmup']} warm-up",
             "",
             f"{'phase':<17}{'time/step':>12}{'share':>8}{'throughput':>18}{'achieved':>18}"]
    for p in (*PHASES, "other"):
        if _skipped(p, c):
            lines.append(f"{LABELS[p]:<17}{'':>12}{'':>8}   {_skipped(p, c)}")
            continue
        thr, tf = tok.get(p), r["tflops"].get(p)
        lines.append(f"{LABELS[p]:<17}{t[p]:>10.3f} s{100 * t[p] / t['step']:>7.1f}%"
                     f"{f'{thr:,.0f} tok/s' if thr else '':>18}{_flops(tf) if tf else '':>18}")
    mfu = (f"MFU {100 * r['mfu']:.1f} % of {r['peak_tflops']:.0f} TFLOP/s" if r["mfu"] is not None
           else "MFU n/a (no bf16 peak for this device)")
    lines.append(f"{'step':<17}{t['step']:>10.3f} s{100.0:>7.1f}%{tok['overall']:>12,.0f} tok/s"
                 f"   (completion tokens / step time) | {mfu}")
    if r["decode_weight_gb_per_s"]:
        lines.append(f"decode reads the weights once per token: {r['decode_weight_gb_per_s']:,.2f} GB/s (KV reads not counted)")
    if r.get("decode_ms_per_step"):
        lines.append(f"decode ({r['rollout_engine']} engine): {r['decode_ms_per_step']:.2f} ms/step, floor "
                     f"{r['decode_floor_ms_per_step']:.2f} ms (weights + K/V ÷ measured copy bandwidth): "
                     f"{r['decode_ratio_to_floor']:.1f}× the floor")
    pl = r["planner"]
    lines += ["", f"memory, GB = 1e9 B, MB = 1e6 B ({r['memory_method']})",
              f"{'phase':<17}{'measured':>12}{'planned':>12}{'measured/planned':>18}"]
    for p in MEM_PHASES:
        if p in r["memory_gb"] and not _skipped(p, c):
            planned = pl["rollout_gb"] if p == "rollout" else pl["train_gb"] if p in TRAIN_PHASES else None
            lines.append(f"{LABELS[p]:<17}{_bytes(r['memory_gb'][p]):>12}{_bytes(planned) if planned else '':>12}")
    lines.append(f"{'rollout peak':<17}{_bytes(pl['measured_rollout_gb']):>12}{_bytes(pl['rollout_gb']):>12}"
                 f"{pl['ratio_rollout']:>18.2f}")
    lines.append(f"{'train peak':<17}{_bytes(pl['measured_train_gb']):>12}{_bytes(pl['train_gb']):>12}"
                 f"{pl['ratio_train']:>18.2f}")
    lines.append(f"planner's run peak with allocator slack and CUDA context: {_bytes(pl['peak_with_slack_gb'])} | "
                 f"process peak RSS {_bytes(r['rss_peak_gb'])}")
    return "\n".join(lines)


def plot(results: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["config"]["logprob_impl"] for r in results]
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(results):
        bottom = 0.0
        for j, p in enumerate((*PHASES, "other")):
            v = r["time_s"][p]
            ax_t.bar(i, v, bottom=bottom, color=colors[j], label=LABELS[p] if i == 0 else None)
            bottom += v
    ax_t.set_xticks(range(len(results)), names)
    ax_t.set_ylabel("seconds per step")
    ax_t.set_title(f"time per phase, {results[0]['model']} on {results[0]['device']}", fontsize=9)
    ax_t.legend(fontsize=7)
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [k + i * width for k in range(len(MEM_PHASES))]
        ax_m.bar(xs, [r["memory_gb"].get(p, 0) for p in MEM_PHASES], width, label=f"measured ({names[i]})")
        ax_m.axhline(r["planner"]["train_gb"], color=colors[i], ls="--", lw=1, label=f"planned train peak ({names[i]})")
    ax_m.axhline(results[0]["planner"]["rollout_gb"], color="k", ls=":", lw=1, label="planned rollout peak")
    ax_m.set_xticks([k + 0.4 - width / 2 for k in range(len(MEM_PHASES))], [LABELS[p] for p in MEM_PHASES],
                    rotation=30, fontsize=7)
    ax_m.set_ylabel("peak GB (1e9 B)")
    ax_m.set_title("peak memory per phase", fontsize=9)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    a = parse_args(argv)
    device = torch.device(a.device) if a.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = getattr(torch, a.dtype) if a.dtype else default_dtype(device)
    torch.manual_seed(a.seed)
    model, tokenizer, V, cfg = build(a, device, dtype)
    impls = ["fused", "reference"] if a.compare else [a.logprob_impl]
    results = []
    for impl in impls:
        r = bench(a, model, tokenizer, V, cfg, device, dtype, impl)
        print(table(r), end="\n\n", flush=True)
        results.append(r)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "throughput.png"
    plot(results, png)
    print(f"wrote {png}")
    kernel_result = None
    if a.kernels:  # the log-prob kernels alone, at this model's head and one micro-batch of completion tokens
        kb = load_by_path("bench_kernels")
        if kb is None or not hasattr(kb, "run"):
            print("--kernels: bench/bench_kernels.py with a run() function not found; skipped")
        else:
            kernel_result = kb.run(ns=[a.micro_batch * a.completion_len], H=cfg.hidden_size, V=V, device=str(device),
                                   dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"))
            kb.print_tables(kernel_result)
    if a.compare:
        f, ref = results
        lp = lambda r: sum(r["time_s"][k] for k in ("old_logp", "ref_logp", "policy_fwd", "policy_bwd"))  # noqa: E731
        print(f"fused vs reference log-probs: log-prob + policy phases {lp(f):.3f} s vs {lp(ref):.3f} s per step "
              f"({lp(ref) / lp(f):.2f}x), whole step {f['time_s']['step']:.3f} s vs {ref['time_s']['step']:.3f} s, "
              f"train peak {_bytes(f['planner']['measured_train_gb'])} vs {_bytes(ref['planner']['measured_train_gb'])}")
        final = {"compare": {r["config"]["logprob_impl"]: r for r in results}, "png": str(png)}
    else:
        final = dict(results[0], png=str(png))
    if kernel_result is not None:
        final["kernels"] = kernel_result
    print(json.dumps(final))
    return final


if __name__ == "__main__":
    main()
