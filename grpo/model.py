"""Policy model: load (local dir, hub id, or the locally built tiny model), LoRA, and the reference policy.

    python -m grpo.model            # builds (or finds) the cached tiny model and prints its path and size

The reference policy is the same weights with the LoRA adapter disabled (`peft`'s `disable_adapter()`), so it costs no
memory. Only full fine-tuning keeps a frozen copy, which is why full fine-tuning is meant for small models. After an SFT
warm start (`--init_adapter`) the reference is the SFT model, as in the GRPO papers, not the pre-SFT base: LoRA trains
the SFT adapter on and keeps a frozen copy of it as a second adapter, "reference" (a few MB), which `Reference.active`
switches to; full fine-tuning merges the SFT adapter into the weights first (`merge_adapter`) and copies that.

Precision (`--dtype`): LoRA keeps the frozen base in the compute dtype and peft keeps the adapters in fp32. Full
fine-tuning keeps the weights themselves in fp32 — they are what AdamW steps — and computes in bf16 under
`torch.autocast` (`autocast`): a bf16 weight of scale 0.02 has a spacing of ~1e-4, so most lr·1 = 5e-6 Adam steps
would round away.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

# Qwen3Config fields of the published checkpoints (config.json on the hub), so bench/ and the memory planner can build
# random-weight models of the real shapes without a download. "tiny" is ours: the CPU demo and the tests.
_QWEN3_COMMON = dict(head_dim=128, num_key_value_heads=8, vocab_size=151936, rms_norm_eps=1e-6,
                     max_position_embeddings=40960, rope_theta=1_000_000.0, hidden_act="silu")
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, tie_word_embeddings=True),
    "qwen3-0.6b": dict(_QWEN3_COMMON, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3_COMMON, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=False),
    "qwen3-14b": dict(_QWEN3_COMMON, hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
                      num_attention_heads=40, tie_word_embeddings=False),
}

# ChatML, as Qwen3's template renders a conversation without tools or thinking blocks.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FORMAT_TOKENS = ["<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>"]
PRETRAIN_STEPS = 150  # see _pretrain
TINY_VOCAB = 1024  # byte-level BPE merges learnt on the demo corpus; small so a random policy hits keywords


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype auto | bf16 | fp32 → the dtype matmuls run in (auto: bf16 on CUDA, fp32 on CPU)."""
    return default_dtype(device) if name == "auto" else DTYPES[name]


def weights_dtype(compute: torch.dtype, full_finetune: bool) -> torch.dtype:
    """The dtype to load the weights in: fp32 master weights when they are trained, else the compute dtype."""
    return torch.float32 if full_finetune else compute


def autocast(device: torch.device, compute: torch.dtype, weights: torch.dtype):
    """bf16 compute over fp32 weights (full fine-tuning in bf16); a no-op context when the weights already are the
    compute dtype. Wraps forwards only (sampling, log-probs), never the optimizer."""
    if compute == weights:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute)


def attention_implementation(device: torch.device) -> str:
    """flash-attn 2 when installed on a CUDA machine (the `gpu` extra), else PyTorch SDPA."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: the demo questions, rubrics and answers, plus the prompt format."""
    from data import bundled_demo_path
    from data.format import SYSTEM_PROMPT
    texts = [SYSTEM_PROMPT]
    for line in bundled_demo_path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            texts += [m["content"] for m in rec["prompt"]] + [r["criterion"] for r in rec["rubrics"]]
            ideal = (rec.get("ideal_completions_data") or {}).get("ideal_completion")
            texts += [ideal] if ideal else []
    # the local judge answers "yes" / "no" with one token each: make sure the toy vocabulary has them
    return texts + ["Is the criterion met? Answer yes or no. yes no yes no"] * 40


def _pretrain(model, tok, corpus: list, *, seed: int, steps: int = PRETRAIN_STEPS, seq_len: int = 48,
              batch: int = 16, lr: float = 3e-3) -> None:
    """A few seconds of next-token training on the demo corpus, so the toy "base model" speaks its vocabulary the way
    a real base model does. A purely random policy almost never writes a whole rubric keyword, every group's reward
    is 0 and GRPO has nothing to compare; after this the samples differ and the judge can tell them apart."""
    ids = torch.tensor(tok("\n".join(corpus), add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq_len] for s in start.tolist()])           # (batch, seq_len)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def build_tiny(cache_dir: str | None = None, seed: int = 0) -> str:
    """Build a tiny Qwen3-architecture model and a byte-level BPE tokenizer locally (no download) and cache them as an
    HF model directory. The cache key hashes the corpus and config, so editing the demo data rebuilds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    corpus = _tiny_corpus()
    key = hashlib.sha256(json.dumps([corpus, SHAPES["tiny"], TINY_VOCAB, PRETRAIN_STEPS, seed, CHAT_TEMPLATE]).encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo-rubric"))
    path = root / f"tiny-qwen3-{key}"
    if (path / "config.json").exists():
        return str(path)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.add_tokens(FORMAT_TOKENS)  # whole tokens, so the tiny policy can learn the answer format in one step each
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **SHAPES["tiny"])
    model = Qwen3ForCausalLM(cfg)
    _pretrain(model, tok, corpus, seed=seed)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(path)  # atomic: a concurrent builder (2 ranks) either wins or finds it done
    except OSError:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


def random_model(shape: str, *, dtype: torch.dtype, device: torch.device, vocab_size: int | None = None):
    """A random-weight Qwen3 of a named shape (for bench/ and memory validation; no download)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    kwargs = dict(SHAPES[shape], **({"vocab_size": vocab_size} if vocab_size else {}))
    cfg = Qwen3Config(**kwargs)
    cfg._attn_implementation = attention_implementation(device)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    return model


def load_tokenizer(name_or_path: str):
    """The tokenizer of a local HF directory, a hub id, or "tiny", as rollouts use it: left padding, a pad token."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(build_tiny() if name_or_path == "tiny" else name_or_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, *, adapter: str | None = None, dtype: torch.dtype | None = None,
               device: torch.device | None = None, trainable_adapter: bool = False):
    """(model, tokenizer) from a local HF directory, a hub id, or "tiny". `adapter`: a PEFT adapter directory to apply."""
    from transformers import AutoModelForCausalLM
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = build_tiny() if name_or_path == "tiny" else name_or_path
    tok = load_tokenizer(path)
    # on a GPU load straight onto it (accelerate's device_map): a 14B model never makes a 30 GB stop in host memory
    placement = {"device_map": {"": device}} if device.type == "cuda" else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention_implementation(device),
                                                 **placement)
    model.to(device)  # no-op when already there
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
    return model, tok


def add_lora(model, *, r: int, alpha: int, dropout: float = 0.0, targets: str = "all-linear"):
    """Wrap the model with a fresh LoRA adapter. "all-linear" = q,k,v,o,gate,up,down of every block (peft excludes
    lm_head), as in the paper. Dropout defaults to 0 so old and new log-probs of the same weights agree exactly."""
    from peft import LoraConfig, get_peft_model
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge_adapter(model, adapter: str):
    """Fold a PEFT adapter (the SFT warm start) into the base weights and return the plain model. A LoRA added after
    this starts exactly at the SFT policy, and switching it off gives the SFT policy, not the pre-SFT base."""
    from peft import PeftModel
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return merged.requires_grad_(True)  # peft froze the base; full fine-tuning trains it, add_lora freezes it again


def continue_adapter(model, adapter: str):
    """The model with a saved PEFT adapter (the SFT output) applied and trainable: GRPO continues it, with its own
    rank, alpha and targets, so a checkpoint's adapter alone is the whole policy (grpo.evaluate --adapter)."""
    from peft import PeftModel
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """The frozen reference policy. With LoRA it is the policy itself under `disable_adapter()` (no memory), or, when
    the LoRA continues a warm-start adapter (`adapter`: its directory), that adapter's frozen copy loaded as a second
    adapter; with full fine-tuning a frozen copy taken at start (small models only). Use as
    `with ref.active() as model: ...`."""

    def __init__(self, policy, keep_copy: bool, adapter: str | None = None):
        self.policy = policy
        self.copy = None
        self.adapter = None
        if keep_copy and not is_peft(policy):
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)
        elif adapter and is_peft(policy):
            policy.load_adapter(adapter, adapter_name="reference", is_trainable=False)
            self.adapter = "reference"

    @contextlib.contextmanager
    def active(self):
        if self.copy is not None:
            yield self.copy
        elif self.adapter is not None:
            trained = self.policy.active_adapter
            # set_adapter also sets requires_grad: the frozen copy on (inference_mode), the trained one off; switching
            # back restores both before any backward, so the optimizer and DDP see what they saw at start
            self.policy.set_adapter(self.adapter, inference_mode=True)
            try:
                yield self.policy
            finally:
                self.policy.set_adapter(trained)
        elif is_peft(self.policy):
            with self.policy.disable_adapter():
                yield self.policy
        else:
            raise RuntimeError("no reference policy: full fine-tuning with beta > 0 needs Reference(keep_copy=True)")


if __name__ == "__main__":
    p = build_tiny()
    m, t = load_model(p, device=torch.device("cpu"))
    print(p, f"{sum(x.numel() for x in m.parameters()):,} params, vocab {len(t)}")
