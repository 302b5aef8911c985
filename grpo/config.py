"""Run configuration: one dataclass, named presets, `--key=value` flags.

    torchrun grpo/train.py --preset qwen3-14b-rtx6000 --data heart_grpo.jsonl --judge openai --judge_model gpt-4.1-mini

Precedence: dataclass defaults < preset < flags. Flags accept `--key=value` or `--key value`, dashes or underscores.
The resolved config is written to `<out>/config.json` (the judge API key is never part of it: it comes from the
environment, OPENAI_API_KEY).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields


@dataclass
class Config:
    # Run
    preset: str = field(default="tiny", metadata={"help": "named preset applied before flags (tiny | qwen3-14b-rtx6000)"})
    out: str = field(default="runs/demo", metadata={"help": "run directory: metrics.jsonl, config.json, checkpoints/"})
    steps: int = field(default=150, metadata={"help": "optimizer steps"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and sampling noise"})
    resume: str = field(default="", metadata={"help": "checkpoint dir to resume from ('auto' = latest in out/)"})
    debug: bool = field(default=False, metadata={"help": "show the full traceback of a user error (else one line)"})
    # Model
    model: str = field(default="tiny", metadata={"help": "HF model dir or hub id; 'tiny' builds a local toy Qwen3"})
    init_adapter: str = field(default="", metadata={"help": "PEFT adapter dir to start from and use as the KL reference (the "
                                                            "SFT output); LoRA keeps its r/alpha/targets"})
    sft_steps: int = field(default=0, metadata={"help": "the demo's warm start: LoRA SFT steps on the data's reference "
                                                      "answers in the output format, into out/sft/, then GRPO from "
                                                      "that adapter (0 = off; ignored with --init_adapter)"})
    sft_lr: float = field(default=3e-3, metadata={"help": "learning rate of the --sft_steps warm start"})
    full_finetune: bool = field(default=False, metadata={"help": "train all weights instead of LoRA (small models)"})
    fsdp: bool = field(default=False, metadata={"help": "full fine-tuning sharded over ranks with FSDP2 (else DDP)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_targets: str = field(default="all-linear", metadata={"help": "'all-linear' or comma list of module names"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward (saves memory)"})
    logprob_impl: str = field(default="fused", metadata={"help": "fused | selective | reference (see grpo/logprobs.py)"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32; "
                                                          "full fine-tuning keeps fp32 master weights either way"})
    # Data
    data: str = field(default="demo", metadata={"help": "JSONL/parquet of samples; 'demo' = bundled heart sample"})
    max_prompt_len: int = field(default=1024, metadata={"help": "prompt tokens kept (left-truncated), tokens"})
    # Rollout
    prompts_per_step: int = field(default=8, metadata={"help": "prompts per optimizer step, all ranks together (B)"})
    num_generations: int = field(default=8, metadata={"help": "samples per prompt (G)"})
    max_new_tokens: int = field(default=40, metadata={"help": "completion length cap, tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (also used for log-probs)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    min_p: float = field(default=0.0, metadata={"help": "min-p sampling threshold relative to the top token (0 = off)"})
    rollout_batch: int = field(default=0, metadata={"help": "sequences decoded at once (0 = all); bounds the KV cache"})
    rollout: str = field(default="local", metadata={"help": "local (static KV cache, in process) | eager (reference) | server (vLLM / SGLang over HTTP, docs/serving.md)"})
    rollout_base_url: str = field(default="", metadata={"help": "--rollout server: the engine's OpenAI-compatible URL(s), comma list (.../v1)"})
    rollout_model: str = field(default="", metadata={"help": "--rollout server: the served base model's name"})
    rollout_is_cap: float = field(default=3.0, metadata={"help": "--rollout server: truncated importance-sampling cap, trainer/engine prob per token (0 = off)"})
    dynamic_sampling: bool = field(default=False, metadata={"help": "DAPO: replace zero-variance groups with new prompts"})
    max_resample_rounds: int = field(default=3, metadata={"help": "dynamic sampling: extra rollout rounds per step, max"})
    # Reward
    reward: str = field(default="hybrid", metadata={"help": "hybrid | complexity | rar_explicit | healthbench | rar_implicit"})
    log_rewards: str = field(default="healthbench", metadata={"help": "extra rewards logged (not trained on), comma list"})
    judge: str = field(default="keyword", metadata={"help": "keyword (offline toy) | openai | local (policy, LoRA off)"})
    judge_model: str = field(default="", metadata={"help": "judge model name (openai judge)"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible base URL (default: OPENAI_BASE_URL)"})
    judge_mode: str = field(default="per_completion", metadata={"help": "openai judge: per_completion | per_criterion"})
    judge_concurrency: int = field(default=16, metadata={"help": "openai judge: requests in flight, max"})
    judge_timeout: float = field(default=30.0, metadata={"help": "openai judge: seconds per request attempt before "
                                                                  "the client retries it"})
    max_unknown_steps: int = field(default=3, metadata={"help": "stop (rc 2) after this many consecutive steps with "
                                                               "> 50 % of rewards unknown: the judge is down (0 = never)"})
    # Loss
    loss: str = field(default="grpo", metadata={"help": "grpo | bnpo | dr_grpo | dapo (grpo/loss.py)"})
    adv_scale: str = field(default="group", metadata={"help": "advantage scaling: group | batch | none"})
    beta: float = field(default=0.0, metadata={"help": "KL_k3 coefficient; 0 skips the reference forward"})
    eps_low: float = field(default=0.2, metadata={"help": "clip ratio below 1 - eps_low"})
    eps_high: float = field(default=0.2, metadata={"help": "clip ratio above 1 + eps_high (DAPO: 0.28)"})
    num_iterations: int = field(default=1, metadata={"help": "optimizer passes per rollout batch (mu)"})
    # Optimization
    lr: float = field(default=5e-6, metadata={"help": "peak learning rate"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warmup"})
    schedule: str = field(default="linear", metadata={"help": "decay after warmup: linear | cosine | constant"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (0 = off)"})
    micro_batch: int = field(default=0, metadata={"help": "sequences per forward/backward (0 = the whole rank batch)"})
    # Logging / checkpoints
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard (if installed)"})
    plot: bool = field(default=True, metadata={"help": "write reward_curve.png at the end"})
    memory_budget_gb: float = field(default=0.0, metadata={"help": "warn before start if the planned peak exceeds this"})


PRESETS: dict[str, dict] = {
    # The embedded CPU demo, the paper's pipeline in miniature: a tiny Qwen3 (pretrained locally on the bundled
    # questions) gets an SFT warm start of the output format, then GRPO trains that SFT model against the keyword
    # judge. Full fine-tuning: a LoRA on a 64-wide model cannot learn the format (format_ok 0 after 400 SFT steps);
    # 40 full steps give format_ok ≈ 0.3 at temperature 1, without memorising the answers (nll ≈ 0.4, not 0.02).
    # 80 new tokens fit every bundled reference answer in the format (41-72 tokens), so EOS is reachable. Without
    # the KL to the SFT model (beta) and at lr 2e-3 / temperature 1, GRPO learns to ramble keywords the toy judge
    # counts (format_ok → 0, trunc → 1); at temperature 0.7 a 64-wide model's samples keep the format (≈ 0.5).
    "tiny": dict(model="tiny", data="demo", sft_steps=40, sft_lr=3e-3, full_finetune=True, lr=5e-4, beta=0.05,
                 temperature=0.7, warmup_ratio=0.05, steps=80, prompts_per_step=8, num_generations=8,
                 max_new_tokens=80, save_every=40),
    # The paper's setup (Ahmadi et al. 2026) on one 96 GB RTX 6000 PRO.
    "qwen3-14b-rtx6000": dict(model="Qwen/Qwen3-14B", data="", lora_r=16, lora_alpha=32, lora_targets="all-linear",
                              num_generations=6, max_new_tokens=1024, lr=5e-6, warmup_ratio=0.1, schedule="linear",
                              temperature=1.0, min_p=0.1, grad_checkpointing=True, prompts_per_step=8, micro_batch=6,
                              rollout_batch=24, max_prompt_len=512,
                              steps=500, beta=0.0, judge="openai", save_every=25, memory_budget_gb=96.0),
}


def _coerce(name: str, typ, raw: str):
    if typ in (bool, "bool"):
        if raw.lower() in ("1", "true", "yes", "on", ""):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name} expects true/false, got {raw!r}")
    conv = {"int": int, "float": float, "str": str}.get(typ if isinstance(typ, str) else typ.__name__, str)
    try:
        return conv(raw)
    except ValueError:
        raise ValueError(f"--{name} expects {conv.__name__}, got {raw!r}") from None


def parse_args(argv: list, cls=None, presets: dict | None = None, check=None, usage: str = ""):
    """A `cls` dataclass (default Config, with PRESETS and validate()) from `--preset NAME` and `--key=value` or
    `--key value` flags; unknown keys are an error that lists the close matches. Entry points with their own
    dataclass (grpo/sft.py) pass it with presets=None (then there is no --preset) and their own check."""
    if cls is None:
        cls, presets, check = Config, PRESETS, validate
        usage = usage or TRAIN_USAGE
    known = {f.name: f for f in fields(cls)}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(help_text(cls, presets, usage))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; flags look like --key=value (see --help)")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:  # --key value, or a bare boolean --flag
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if known.get(key) and known[key].type in (bool, "bool") and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise ValueError(f"--{key} needs a value")
            else:
                value, i = nxt, i + 1
        if key not in known:
            import difflib
            close = difflib.get_close_matches(key, known, n=3)
            raise ValueError(f"unknown flag --{key}" + (f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""))
        pairs.append((key, value))
        i += 1
    base = {}
    if presets is not None:
        preset = dict(pairs).get("preset", cls.preset)
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
        base = {**presets[preset], "preset": preset}
    cfg = cls(**base)
    for key, value in pairs:
        setattr(cfg, key, _coerce(key, known[key].type, value))
    if check is not None:
        check(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Errors a user can cause, each naming the fix — checked here, before any model or data loads."""
    import math
    import os
    from grpo.loss import LOSSES
    from grpo.rollout import ENGINES
    if cfg.rollout not in ENGINES:
        raise ValueError(f"--rollout={cfg.rollout} unknown; choose one of {', '.join(sorted(ENGINES))}")
    if cfg.rollout == "server":
        from grpo.rollout_server import FULL_FT
        if cfg.full_finetune:
            raise ValueError(FULL_FT)
        if not (cfg.rollout_base_url and cfg.rollout_model):
            raise ValueError("--rollout server needs --rollout_base_url (e.g. http://127.0.0.1:8000/v1) and "
                             "--rollout_model (the served model's name)")
    if not (cfg.rollout_is_cap >= 0 and math.isfinite(cfg.rollout_is_cap)):
        raise ValueError(f"--rollout_is_cap must be >= 0 (0 = off), got {cfg.rollout_is_cap}")
    for name in ("steps", "save_every", "prompts_per_step", "keep_last", "judge_concurrency"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.sft_steps < 0:
        raise ValueError(f"--sft_steps must be >= 0 (0 = no warm start), got {cfg.sft_steps}")
    for name in ("lr", "sft_lr", "temperature", "judge_timeout"):  # temperature 0 would divide the log-probs by zero
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0, got {value}")
    if cfg.max_unknown_steps < 0:
        raise ValueError(f"--max_unknown_steps must be >= 0 (0 = never stop), got {cfg.max_unknown_steps}")
    if cfg.judge == "openai":
        if not cfg.judge_model:
            raise ValueError("--judge=openai needs --judge_model (e.g. gpt-4.1-mini, or the model your server serves)")
        if not (os.environ.get("OPENAI_API_KEY") or cfg.judge_base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ValueError("--judge=openai needs an API key: set OPENAI_API_KEY, or --judge_base_url for a local server")
    from rewards import REWARDS
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss={cfg.loss} unknown; choose one of {sorted(LOSSES)}")
    for name in [cfg.reward] + [r for r in cfg.log_rewards.split(",") if r]:
        if name not in REWARDS and name != "rar_implicit":
            raise ValueError(f"reward {name!r} unknown; choose from {sorted(REWARDS) + ['rar_implicit']}")
    if cfg.judge not in ("keyword", "openai", "local"):
        raise ValueError(f"--judge={cfg.judge} must be keyword | openai | local")
    if "rar_implicit" in (cfg.reward, *cfg.log_rewards.split(",")) and cfg.judge != "openai":
        raise ValueError("rar_implicit needs a rating judge: use --judge=openai")
    if cfg.adv_scale not in ("group", "batch", "none"):
        raise ValueError(f"--adv_scale={cfg.adv_scale} must be group | batch | none")
    if cfg.num_generations < 2:
        raise ValueError("--num_generations must be >= 2: GRPO's advantage compares samples within a group")
    if cfg.num_iterations < 1:
        raise ValueError("--num_iterations must be >= 1")
    if not cfg.data:
        raise ValueError("--data is required for this preset: a HealthBench / RaR-Medicine / heart JSONL file")
    if cfg.fsdp and not cfg.full_finetune:
        raise ValueError("--fsdp shards full fine-tuning; LoRA runs data-parallel with DDP: add --full_finetune or drop --fsdp")
    if cfg.fsdp and (cfg.beta > 0 or cfg.judge == "local"):
        raise ValueError("--fsdp supports beta=0 and a remote or keyword judge (a frozen full copy for the reference "
                         "or local judge is not sharded); use LoRA for beta > 0 or --judge local")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--dtype={cfg.dtype} must be auto | bf16 | fp32")


def to_json(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


TRAIN_USAGE = "usage: torchrun grpo/train.py [--preset NAME] [--key=value ...]"


def help_text(cls=None, presets: dict | None = None, usage: str = "") -> str:
    """One line per field: `--name  help (default ...)`; the same format for every entry point."""
    if cls is None:
        cls, presets, usage = Config, PRESETS, usage or TRAIN_USAGE
    lines = [usage or "usage: [--key=value ...]"] + ([f"presets: {', '.join(presets)}"] if presets else []) + [""]
    for f in fields(cls):
        lines.append(f"  --{f.name:<20} {f.metadata.get('help', '')} (default {f.default!r})")
    return "\n".join(lines)
