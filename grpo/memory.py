"""Memory planner: analytic peak memory of a GRPO run before it starts (the trainer's `--memory_budget_gb` check).

    python bench/memory.py --shape qwen3-14b --budget-gb 96            # its CLI: the paper's run on one RTX 6000 PRO

It lives in the installed package (not bench/) so the trainer's budget check works on an installed copy too.

  rollout   weights + optimizer state + KV cache of R sequences × (prompt + completion) + prefill temporaries
  train     weights + optimizer state + LoRA grads + saved activations of one micro-batch + the log-prob head's peak

`plan(model_cfg, run) -> Plan` is a pure function of a Qwen3Config (or any object/dict with its fields) and a
`RunShape`; `check(model_cfg, run, budget_gb) -> (ok, message)` is what the trainer calls, `run_shape(cfg)` maps its
Config, `fsdp_rollout_fits` decides whether an FSDP2 rollout gathers the whole model once. The activation terms are
derived from the tensors autograd actually saves in transformers' Qwen3DecoderLayer with peft LoRA and SDPA (see
`_saved_bytes_per_token_layer`); tests/test_memory.py checks them against a saved-tensor census and against peaks
measured with torch.profiler. Full fine-tuning is planned as the trainer runs it: fp32 master weights, grads and
AdamW states (and the fp32 reference copy), bf16 activations plus autocast's bf16 weight copies.
"""

import warnings
from dataclasses import asdict, dataclass

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # never lm_head
# The log-prob head paths, spelled as grpo.logprobs.IMPLS and --logprob_impl (repeated here so the planner imports
# without torch; tests/test_memory.py checks the two agree). "naive" was this module's name for "reference".
LOGPROB_IMPLS = ("fused", "selective", "reference")
DEPRECATED_IMPLS = {"naive": "reference"}  # accepted with a DeprecationWarning for one release
# kernels' chunked torch path (CPU) holds ~3 fp32 tiles of 4M elements; the Triton path (CUDA) holds less.
FUSED_WORKSPACE = 3 * (1 << 22) * FP32
# Caching-allocator fragmentation and the CUDA context/cuBLAS workspaces that max_memory_allocated does not see.
SLACK_FRAC, CONTEXT_BYTES = 0.10, 0.75 * GB


@dataclass(frozen=True)
class RunShape:
    """What one GRPO step processes. Defaults: the paper's Qwen3-14B run (grpo.config preset qwen3-14b-rtx6000)."""
    prompts_per_step: int = 8        # B prompts per optimizer step
    G: int = 6                       # samples per prompt
    prompt_len: int = 1024           # P, tokens (padded)
    completion_len: int = 1024       # T, tokens (padded)
    micro_batch: int = 6             # sequences per forward/backward
    lora_r: int = 16                 # LoRA rank on all linear layers of every block (alpha does not change memory)
    dtype: str = "bfloat16"          # weights and activations
    grad_checkpointing: bool = True  # recompute each block's activations in backward
    logprob_impl: str = "fused"      # fused | selective | reference (grpo.logprobs)
    full_finetune: bool = False      # train every weight (then a frozen reference copy is kept, as grpo.model does)
    rollout_batch: int = 0           # sequences decoded together (0 = all B*G)

    def __post_init__(self):
        if self.logprob_impl in DEPRECATED_IMPLS:
            new = DEPRECATED_IMPLS[self.logprob_impl]
            warnings.warn(f"logprob_impl={self.logprob_impl!r} is deprecated: spell it {new!r} (as --logprob_impl does)",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "logprob_impl", new)  # frozen dataclass


@dataclass
class Plan:
    """Bytes per term. peak_* are what torch.cuda.max_memory_allocated would report; `peak` adds allocator slack."""
    params: int                  # parameter count of the base model
    trainable_params: int
    weights: int                 # base weights (+ the frozen reference copy when full fine-tuning)
    trainable: int               # LoRA parameters (fp32); 0 when full fine-tuning (they are the weights)
    grads: int
    optimizer: int               # AdamW exp_avg + exp_avg_sq
    kv_cache: int
    prefill: int                 # temporaries of one block during prefill (no grad)
    activations: int             # saved for backward at the peak of one micro-batch
    layer_backward: int          # temporaries of one block's backward
    logprob_head: int            # the LM head + log-prob path at its peak
    peak_rollout: int
    peak_train: int
    slack: int
    peak: int

    def table(self, run: RunShape) -> str:
        rows = [("weights", self.weights, self.weights), ("LoRA params", self.trainable, self.trainable),
                ("grads", 0, self.grads), ("AdamW states", self.optimizer, self.optimizer),
                ("KV cache", self.kv_cache, 0), ("prefill temporaries", self.prefill, 0),
                ("saved activations", 0, self.activations), ("block backward temporaries", 0, self.layer_backward),
                (f"log-prob head ({run.logprob_impl})", 0, self.logprob_head),
                ("peak allocated", self.peak_rollout, self.peak_train)]
        R = run.rollout_batch or run.prompts_per_step * run.G
        lines = [f"{'term':<30}{f'rollout (R={R})':>16}{f'train (mb={run.micro_batch})':>18}"]
        lines += [f"{name:<30}{r / GB:>13.2f} GB{t / GB:>15.2f} GB" for name, r, t in rows]
        lines.append(f"{'+ allocator slack, context':<30}{self.slack / GB:>13.2f} GB")
        lines.append(f"{'= peak':<30}{self.peak / GB:>13.2f} GB")
        return "\n".join(lines)


def _field(cfg, name, default=None):
    value = cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)
    return default if value is None else value


def _dims(cfg) -> dict:
    H, nh = _field(cfg, "hidden_size"), _field(cfg, "num_attention_heads")
    hd = _field(cfg, "head_dim", H // nh)
    nkv = _field(cfg, "num_key_value_heads", nh)
    return dict(H=H, I=_field(cfg, "intermediate_size"), L=_field(cfg, "num_hidden_layers"), nh=nh, nkv=nkv, hd=hd,
                V=_field(cfg, "vocab_size", 151936), Dq=nh * hd, Dkv=nkv * hd,
                tied=bool(_field(cfg, "tie_word_embeddings", False)))


def param_count(cfg) -> int:
    """Parameters of a Qwen3ForCausalLM (no attention bias; q_norm/k_norm over head_dim)."""
    d = _dims(cfg)
    H, I, Dq, Dkv = d["H"], d["I"], d["Dq"], d["Dkv"]
    block = H * Dq + 2 * H * Dkv + Dq * H + 3 * H * I + 2 * d["hd"] + 2 * H  # q,k,v,o; gate,up,down; q/k_norm; 2 norms
    return d["V"] * H * (1 if d["tied"] else 2) + d["L"] * block + H     # embed (+ untied lm_head) + blocks + norm


def lora_param_count(cfg, r: int) -> int:
    """LoRA on q,k,v,o,gate,up,down: r·(in + out) per adapted (in → out) linear, per block."""
    d = _dims(cfg)
    H, I, Dq, Dkv = d["H"], d["I"], d["Dq"], d["Dkv"]
    ins_outs = [(H, Dq), (H, Dkv), (H, Dkv), (Dq, H), (H, I), (H, I), (I, H)]
    return d["L"] * sum(r * (i + o) for i, o in ins_outs)


def kv_cache_bytes(cfg, sequences: int, tokens: int, dtype: str) -> int:
    """sequences × tokens × layers × (K and V) × kv_heads × head_dim × dtype bytes."""
    d = _dims(cfg)
    return sequences * tokens * d["L"] * 2 * d["nkv"] * d["hd"] * DTYPE_BYTES[dtype]


def _saved_bytes_per_token_layer(d: dict, b: int, r: int, full_finetune: bool) -> int:
    """Bytes per token that autograd keeps for one Qwen3DecoderLayer (SDPA/flash attention, LoRA dropout 0).

    From a saved_tensors_hooks census of transformers 5 + peft 0.21 (tests/test_memory.py repeats it). b is the
    activation dtype's bytes; LoRA weights are fp32 (peft's autocast_adapter_dtype), so with b < 4 peft casts each
    adapted linear's input to fp32 and lora_A saves that copy, once per adapter; with b = 4 the cast is a no-op and
    adapters that share an input share the saved tensor. Frozen base linears save no input (they only need W).
      RMSNorm ×2 (input_layernorm, post_attention_layernorm): fp32 copy of x (pow, mul) + rsqrt   2·(4H + 4)
      lora_A inputs: q,k,v share x1, gate,up share x2 (3 + 2 fp32 copies when b < 4)             (1|3)·4H + (1|2)·4H
      lora_B inputs (N, r) fp32, 7 adapters                                                        7·4r
      q_norm, k_norm (fp32 copy + per-head rsqrt)                                                  4(Dq + Dkv) + 4(nh + nkv)
      RoPE: cos/sin do not require grad, so q·cos and rotate_half(q)·sin save only cos/sin (shared)  0
      SDPA: q, k, v (after RoPE) and the output in b, logsumexp fp32 per head                     b(2Dq + 2Dkv) + 4nh
      o_proj lora_A: fp32 copy of the attention output (the output itself when b = 4)              (4Dq | 0)
      MLP: silu input (gate out), silu out, up out in b; down lora_A: fp32 act·up                  3bI + 4I
    Full fine-tuning (no LoRA): every linear saves its input in b (q,k,v and gate,up share one), each RMSNorm also
    saves its normalised input in b for the weight's grad, and q_norm/k_norm outputs are saved by their weight's mul:
      2·(4H + 4) + 2·(2bH) + 4(Dq + Dkv) + 4(nh + nkv) + b(Dq + Dkv) + b(2Dq + 2Dkv) + 4nh + 3bI + bI
    """
    H, I, Dq, Dkv, nh, nkv = d["H"], d["I"], d["Dq"], d["Dkv"], d["nh"], d["nkv"]
    norms = 2 * (FP32 * H + FP32)
    qk_norm = FP32 * (Dq + Dkv) + FP32 * (nh + nkv)
    sdpa = b * (2 * Dq + 2 * Dkv) + FP32 * nh
    if full_finetune:
        # The fp32 copy in RMSNorm is x itself when b = 4, so norms stay 4H; the normalised input and the linear input
        # are distinct tensors (weight · x̂ makes a new one).
        return norms + 2 * (2 * b * H) + qk_norm + b * (Dq + Dkv) + sdpa + 3 * b * I + b * I
    cast = b != FP32
    lora_in = FP32 * H * ((3 if cast else 1) + (2 if cast else 1)) + (FP32 * Dq if cast else 0) + FP32 * I
    return norms + lora_in + 7 * FP32 * r + qk_norm + sdpa + 3 * b * I


def _backward_temp_bytes_per_token(d: dict, b: int) -> int:
    """Temporaries alive inside one block's backward, per token: at down_proj the grad w.r.t. its input exists as the
    fp32 LoRA grad, its cast and the base grad (I·(4 + b) when b < 4, I·4 when the cast is a no-op), plus the fp32
    grad of the residual stream and its RMSNorm (2·4H). Calibrated against the measured tiny-model peaks (±1 I·b)."""
    I, H = d["I"], d["H"]
    return I * (FP32 + (b if b != FP32 else 0)) + 2 * FP32 * H


def _logprob_head_bytes(d: dict, b: int, n: int, impl: str) -> int:
    """Peak of the log-prob path for n completion tokens (only completion positions reach the head, grpo.logprobs).
    All paths keep the gathered hidden states h (n, H) and later their grad (n, H).
      reference: forward: logits (n,V)b + (fp32 copy / temperature) (n,V)4 + log_softmax (n,V)4 (the fp32 copy
                 is freed by then); backward: log_softmax out + gather grad + its grad, 3·(n,V)4 — the larger of the two
      selective: logits (n,V)b saved + dlogits (n,V)b in backward + a chunk of fp32 tiles (torch path)
      fused:     never builds (n,V): per-row stats + a bounded workspace"""
    V, H = d["V"], d["H"]
    hidden = 2 * n * H * b
    if impl == "reference":
        return hidden + n * V * max(3 * FP32, b + 2 * FP32)
    if impl == "selective":
        return hidden + 2 * n * V * b + min(n * V * FP32, FUSED_WORKSPACE)
    if impl == "fused":
        return hidden + 4 * n * FP32 + min(n * V * FP32, FUSED_WORKSPACE)
    raise ValueError(f"logprob_impl {impl!r} not in {LOGPROB_IMPLS}")


def plan(model_cfg, run: RunShape) -> Plan:
    """Analytic peak memory (bytes) of the rollout and the training phase of one GRPO step."""
    if run.dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {run.dtype!r} not in {sorted(DTYPE_BYTES)}")
    impl = run.logprob_impl
    d, b = _dims(model_cfg), DTYPE_BYTES[run.dtype]
    n_params = param_count(model_cfg)
    S = run.prompt_len + run.completion_len
    N, Nc = run.micro_batch * S, run.micro_batch * run.completion_len  # tokens through the blocks / the head
    R = run.rollout_batch or run.prompts_per_step * run.G

    if run.full_finetune:  # fp32 master weights (grpo.model), their grads and AdamW states; frozen reference copy
        # (β > 0) in fp32 too; in bf16 autocast also caches a bf16 copy of every weight during a forward
        n_train, weights, trainable = n_params, 2 * n_params * FP32 + (n_params * b if b != FP32 else 0), 0
        grads, optimizer = n_params * FP32, 2 * n_params * FP32
    else:                  # LoRA params, grads and AdamW states fp32: 16 bytes per trainable parameter
        n_train, weights = lora_param_count(model_cfg, run.lora_r), n_params * b
        trainable, grads, optimizer = n_train * FP32, n_train * FP32, 2 * n_train * FP32
    resident = weights + trainable + optimizer  # alive in both phases (grads are set to None after each step)

    kv = kv_cache_bytes(model_cfg, R, S, run.dtype)
    # Prefill of R·P tokens through one block without grad peaks inside up_proj: silu(gate) (I·b) + the base output
    # (I·b) + peft's fp32 lora_B output and its ·scaling copy (2·4I; the sum is fp32 too, then cast back), plus a few
    # residual-stream tensors (4·H·b). Logits are computed for the last position only (logits_to_keep=1).
    prefill = R * run.prompt_len * ((2 * b + 2 * FP32) * d["I"] + 4 * b * d["H"])
    peak_rollout = resident + kv + prefill

    per_layer = _saved_bytes_per_token_layer(d, b, run.lora_r, run.full_finetune)
    final_norm = FP32 * d["H"] + FP32
    bwd_temp = N * _backward_temp_bytes_per_token(d, b)
    head = _logprob_head_bytes(d, b, Nc, impl)
    if run.grad_checkpointing:
        # Non-reentrant checkpointing keeps each block's input (N, H) in b; the block being differentiated is
        # recomputed, so its saved tensors exist once, after the head's backward is done.
        activations = N * (d["L"] * d["H"] * b + final_norm)
        peak_dyn = activations + max(head, N * per_layer + bwd_temp)
    else:
        activations = N * (d["L"] * per_layer + final_norm)
        peak_dyn = activations + max(head, bwd_temp)
    peak_train = resident + grads + peak_dyn

    peak_alloc = max(peak_rollout, peak_train)
    slack = int(SLACK_FRAC * (peak_alloc - weights) + CONTEXT_BYTES)
    return Plan(params=n_params, trainable_params=n_train, weights=weights, trainable=trainable, grads=grads,
                optimizer=optimizer, kv_cache=kv, prefill=prefill, activations=activations, layer_backward=bwd_temp,
                logprob_head=head, peak_rollout=peak_rollout, peak_train=peak_train, slack=slack,
                peak=peak_alloc + slack)


def fit(model_cfg, run: RunShape, budget_gb: float) -> tuple[int, int]:
    """Largest micro-batch and rollout batch (sequences, each ≤ B·G) whose phase peak plus slack fits the budget;
    0 where not even one sequence fits."""
    n = run.prompts_per_step * run.G

    def fits(phase: str, k: int) -> bool:
        p = plan(model_cfg, RunShape(**{**asdict(run), "micro_batch": k, "rollout_batch": k}))
        alloc = p.peak_train if phase == "train" else p.peak_rollout
        return alloc + SLACK_FRAC * (alloc - p.weights) + CONTEXT_BYTES <= budget_gb * GB

    return (max((k for k in range(1, n + 1) if fits("train", k)), default=0),
            max((k for k in range(1, n + 1) if fits("rollout", k)), default=0))


def check(model_cfg, run: RunShape, budget_gb: float) -> tuple[bool, str]:
    """(fits, one-line message with the numbers) — the trainer warns with the message when it does not fit."""
    p = plan(model_cfg, run)
    mb, rb = fit(model_cfg, run, budget_gb)
    R = run.rollout_batch or run.prompts_per_step * run.G
    msg = (f"planned peak {p.peak / GB:.1f} GB (rollout {p.peak_rollout / GB:.1f} GB with R={R}, train "
           f"{p.peak_train / GB:.1f} GB with micro_batch={run.micro_batch}, + {p.slack / GB:.1f} GB slack) vs budget "
           f"{budget_gb:.1f} GB")
    ok = p.peak <= budget_gb * GB
    if not ok:
        msg += f"; fits with micro_batch={mb} and rollout_batch={rb}" if mb and rb else "; does not fit at batch 1"
    return ok, msg


def run_shape(cfg) -> RunShape:
    """The RunShape of a trainer Config (grpo.config), as the trainer's budget check plans it."""
    import torch

    from grpo.model import compute_dtype
    dtype = compute_dtype(cfg.dtype, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return RunShape(prompts_per_step=cfg.prompts_per_step, G=cfg.num_generations, prompt_len=cfg.max_prompt_len,
                    completion_len=cfg.max_new_tokens, micro_batch=cfg.micro_batch or cfg.num_generations,
                    rollout_batch=cfg.rollout_batch, lora_r=0 if cfg.full_finetune else cfg.lora_r,
                    dtype=str(dtype).removeprefix("torch."), grad_checkpointing=cfg.grad_checkpointing,
                    logprob_impl=cfg.logprob_impl,
                    full_finetune=cfg.full_finetune)


def fsdp_rollout_fits(model_cfg, run: RunShape, budget_gb: float, world: int) -> bool:
    """Whether an FSDP2 rank can hold the whole model gathered for a rollout: the fp32 weights gathered in full, plus
    this rank's shards of weights and AdamW states (3 × fp32 / world), plus the KV cache and prefill temporaries of
    its rollout batch, plus slack — at or under the budget."""
    p = plan(model_cfg, run)
    gathered = p.params * FP32 + 3 * p.params * FP32 / world + p.kv_cache + p.prefill
    return gathered * (1 + SLACK_FRAC) + CONTEXT_BYTES <= budget_gb * GB
