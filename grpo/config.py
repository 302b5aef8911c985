"""Run configuration for every entry point: one dataclass each, presets as plain dicts, one flag parser.

    torchrun grpo/train.py --preset qwen3-14b-rtx6000 --data heart_grpo.jsonl --judge openai --judge_model gpt-4.1-mini
    python -m grpo.evaluate --help          # the same --help format for grpo/train.py, grpo/sft.py, grpo.evaluate

TrainConfig (grpo/train.py), SFTConfig (grpo/sft.py) and EvalConfig (grpo/evaluate.py), each registered in
ENTRY_POINTS with its usage line, presets and validation. Precedence: dataclass defaults < preset < flags. Flags
accept `--key=value` or `--key value`, dashes or underscores; a list field (EvalConfig.compare) takes the values up
to the next flag. An unknown flag names the close matches; `cli()` prints any user error as one `error: …` line
and exits 2. The resolved training config is written to `<out>/config.json` (the judge API key is never part of it:
it comes from the environment, OPENAI_API_KEY).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Callable


@dataclass
class TrainConfig:
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
    sft_steps: int = field(default=0, metadata={"help": "the demo's warm start: SFT steps (all weights with "
                                                      "--full_finetune, else LoRA) on the data's reference answers in "
                                                      "the output format, into out/sft/, then GRPO from it (0 = off; "
                                                      "ignored with --init_adapter)"})
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
    malformed: str = field(default="graded", metadata={"help": "a completion not in the output format: graded (its "
                                                             "best-effort answer) | wrong (graded as the empty answer)"})
    judge: str = field(default="keyword", metadata={"help": "keyword (offline toy) | openai | local (policy, LoRA off)"})
    judge_model: str | None = field(default=None, metadata={"help": "judge model name (openai judge)"})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (default: OPENAI_BASE_URL)"})
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
    # malformed="wrong": a completion out of the format is graded as the empty answer, so form carries reward and
    # GRPO raises format_ok with the reward (with "graded" it fell 0.50 → 0.41 over 40 steps while the reward rose).
    "tiny": dict(model="tiny", data="demo", sft_steps=40, sft_lr=3e-3, full_finetune=True, lr=5e-4, beta=0.05,
                 temperature=0.7, warmup_ratio=0.05, steps=80, prompts_per_step=8, num_generations=8,
                 max_new_tokens=80, save_every=40, malformed="wrong"),
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
    typ = typ.removesuffix(" | None") if isinstance(typ, str) else typ.__name__  # an optional field takes its type
    conv = {"int": int, "float": float, "str": str}.get(typ, str)
    try:
        return conv(raw)
    except ValueError:
        raise ValueError(f"--{name} expects {conv.__name__}, got {raw!r}") from None


def _is_list(f) -> bool:
    return f.type in (list, "list")


def parse_args(argv: list, cls: type | None = None):
    """A `cls` dataclass (default TrainConfig; any of ENTRY_POINTS) from `--preset NAME` (where it has presets) and
    `--key=value` or `--key value` flags, then its entry point's validation. Unknown keys are a ValueError that lists
    the close matches; `--help` prints help_text(cls) and exits 0."""
    cls = cls or TrainConfig
    entry = ENTRY_POINTS[cls]
    known = {f.name: f for f in fields(cls)}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(help_text(cls))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; flags look like --key=value (see --help)")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            raise ValueError(f"unknown flag --{key}" + (f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""))
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if _is_list(known[key]):  # --compare a b c (up to the next flag) or --compare=a,b,c
            values = value.split(",") if eq else []
            while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values, i = values + [argv[i + 1]], i + 1
            if not values:
                raise ValueError(f"--{key} needs one or more values")
            value = values
        elif not eq:  # --key value, or a bare boolean --flag
            if known[key].type in (bool, "bool") and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise ValueError(f"--{key} needs a value")
            else:
                value, i = nxt, i + 1
        pairs.append((key, value))
        i += 1
    base = {}
    preset = dict(pairs).get("preset", getattr(cls, "preset", ""))
    if entry.presets is not None and preset:  # an empty preset (EvalConfig's default) = none
        if preset not in entry.presets:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(entry.presets)}")
        base = {**entry.presets[preset], "preset": preset}
    cfg = cls(**base)
    for key, value in pairs:
        setattr(cfg, key, value if _is_list(known[key]) else _coerce(key, known[key].type, value))
    if entry.check is not None:
        entry.check(cfg)
    return cfg


def reward_names(cfg: TrainConfig) -> tuple[str, ...]:
    """--reward first, then the --log_rewards comma list (blanks and repeats dropped): every reward a step scores.
    The one place --log_rewards is parsed."""
    return tuple(dict.fromkeys([cfg.reward, *(r.strip() for r in cfg.log_rewards.split(",") if r.strip())]))


def cli(main: Callable, argv: list, errors: tuple | Callable[[], tuple] = (ValueError, FileNotFoundError)) -> int:
    """Run an entry point's main(argv): a user error (`errors`, or what `errors()` returns when one is raised — the
    classes of a module main imported on the way) is one `error: …` line on stderr, on rank 0 only so torchrun shows
    it once, and exit code 2 (`--debug` re-raises it with its traceback). main's own return value (None = 0) is the
    exit code otherwise."""
    try:
        return main(argv) or 0
    except (errors() if callable(errors) else errors) as e:
        if any(a in ("--debug", "--debug=true", "--debug=1") for a in argv):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def check_judge(judge: str, mode: str) -> None:
    """--judge and --judge_mode, for every entry point that grades (rewards.judge.JUDGES, rewards.judge_base.MODES)."""
    from rewards.judge import JUDGES, MODES
    if judge not in JUDGES:
        raise ValueError(f"--judge={judge} must be {' | '.join(JUDGES)}")
    if mode not in MODES:
        raise ValueError(f"--judge_mode={mode} must be {' | '.join(MODES)}")


def validate(cfg: TrainConfig) -> None:
    """Errors a user can cause, each naming the fix — checked here, before any model or data loads."""
    import math
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
    from rewards import needs
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss={cfg.loss} unknown; choose one of {sorted(LOSSES)}")
    check_judge(cfg.judge, cfg.judge_mode)
    for name in reward_names(cfg):  # needs() raises on an unknown name, listing the known ones
        if needs(name) == "rating" and cfg.judge != "openai":
            raise ValueError(f"{name} needs a rating judge: use --judge=openai")
    from data.format import MALFORMED
    if cfg.malformed not in MALFORMED:
        raise ValueError(f"--malformed={cfg.malformed} must be {' | '.join(MALFORMED)}")
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


def to_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


def help_text(cls: type | None = None) -> str:
    """One line per field: `--name  help (default ...)`; the same format for every entry point."""
    cls = cls or TrainConfig
    entry = ENTRY_POINTS[cls]
    lines = [entry.usage] + ([f"presets: {', '.join(p for p in entry.presets if p)}"] if entry.presets else []) + [""]
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name:<20} {f.metadata.get('help', '')} (default {default!r})")
    return "\n".join(lines)


Config = TrainConfig  # the name grpo/train.py and its tests have always used


@dataclass
class SFTConfig:
    model: str = field(default="tiny", metadata={"help": "HF model dir or hub id; 'tiny' builds the local toy Qwen3"})
    data: str = field(default="demo", metadata={"help": "samples with reference answers; 'demo' = bundled sample"})
    reasoning: str = field(default="", metadata={"help": "JSONL of {id, reasoning} traces (data.augment output)"})
    out: str = field(default="runs/sft", metadata={"help": "output dir; the adapter goes to out/adapter"})
    steps: int = field(default=30, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "sequences per step, all ranks together"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate (constant)"})
    max_len: int = field(default=1024, metadata={"help": "target tokens kept, tokens"})
    full_finetune: bool = field(default=False, metadata={"help": "train every weight and save out/model (a full HF "
                                                              "model dir, for small models) instead of out/adapter"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default="all-linear", metadata={"help": "'all-linear' or comma list of module names"})
    seed: int = field(default=0, metadata={"help": "seed for init and data order"})
    dtype: str = field(default="auto", metadata={"help": "base weights: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32; "
                                                          "the LoRA adapter is fp32"})


def validate_sft(cfg: SFTConfig) -> None:
    """SFT flag errors a user can cause, each naming the fix."""
    import math
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--dtype={cfg.dtype} must be auto | bf16 | fp32")
    if cfg.max_len < 1 or cfg.steps < 0:
        raise ValueError("--max_len must be >= 1 and --steps >= 0")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.reasoning and not os.path.isfile(cfg.reasoning):
        raise ValueError(f"--reasoning={cfg.reasoning}: no such file (the traces JSONL `python -m data.augment` writes)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {cfg.lr}")


@dataclass
class EvalConfig:
    # Data and selection
    preset: str = field(default="", metadata={"help": "paper: heart subset, n=500, seed 0 ('' = none)"})
    data: str = field(default="demo", metadata={"help": "samples file (HealthBench / RaR / heart JSONL); 'demo' = bundled"})
    out: str = field(default="runs/eval", metadata={"help": "output directory (results.jsonl resumes)"})
    heart_only: bool = field(default=False, metadata={"help": "only heart-related samples (lexicon filter tags)"})
    n: int | None = field(default=None, metadata={"help": "draw this many examples (with --seed)"})
    limit: int | None = field(default=None, metadata={"help": "stop after the first N selected examples"})
    seed: int = field(default=0, metadata={"help": "seed of the subset draw and of sampling"})
    # Policy
    model: str = field(default="tiny", metadata={"help": "HF dir or hub id; 'tiny' = the locally built toy model"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter directory (trained policy)"})
    api_model: str | None = field(default=None, metadata={"help": "evaluate this OpenAI-compatible model instead of --model"})
    api_base_url: str | None = field(default=None, metadata={"help": "endpoint of --api_model"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "env variable with the endpoint's key"})
    max_new_tokens: int = field(default=512, metadata={"help": "response length limit, tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    batch_size: int = field(default=8, metadata={"help": "examples per respond+judge round"})
    concurrency: int = field(default=8, metadata={"help": "API requests in flight (policy API and judge)"})
    # Judge
    judge: str = field(default="keyword", metadata={"help": "keyword (offline toy) | openai (any OpenAI-compatible "
                                                            "server) | local (a transformers model)"})
    judge_model: str | None = field(default=None, metadata={"help": "openai: model name (default gpt-4.1-2025-04-14, "
                                                           "HealthBench's grader); local: HF dir or hub id (default: "
                                                           "the policy itself)"})
    judge_base_url: str | None = field(default=None, metadata={"help": "judge endpoint (openai judge)"})
    judge_mode: str = field(default="per_criterion", metadata={"help": "openai judge: per_criterion (HealthBench's "
                                                                       "grader) | per_completion (cheaper approximation)"})
    # Report
    compare: list = field(default_factory=list, metadata={"help": "result dirs/files to compare instead of evaluating"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})


EVAL_PRESETS: dict[str, dict] = {
    # The paper's evaluation set: the heart-related subset of HealthBench (lexicon filter), n = 500 drawn with seed 0.
    "paper": dict(heart_only=True, n=500, seed=0),
}


def validate_eval(cfg: EvalConfig) -> None:
    """Evaluation flag errors a user can cause, each naming the fix."""
    import math
    check_judge(cfg.judge, cfg.judge_mode)
    for name in ("n", "limit", "bootstrap"):
        if (getattr(cfg, name) or 0) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("max_new_tokens", "batch_size", "concurrency"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {cfg.temperature}")


@dataclass(frozen=True)
class EntryPoint:
    usage: str
    presets: dict | None  # None: the entry point has no --preset
    check: Callable | None  # validation run after the flags: raises ValueError naming the fix


ENTRY_POINTS: dict[type, EntryPoint] = {
    TrainConfig: EntryPoint("usage: torchrun grpo/train.py [--preset NAME] [--key=value ...]", PRESETS, validate),
    SFTConfig: EntryPoint("usage: torchrun grpo/sft.py [--key=value ...]", None, validate_sft),
    EvalConfig: EntryPoint("usage: python -m grpo.evaluate [--preset paper] [--key=value ...]", EVAL_PRESETS,
                           validate_eval),
}
