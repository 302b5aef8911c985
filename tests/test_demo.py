"""The demo's SFT warm-start cache (grpo/demo.py): a cached warm start is reused only when everything its result
depends on is the same; the warm start honours the LoRA flags GRPO then trains with."""
import json
import os
import shutil

import pytest
import torch

from grpo.config import SFTConfig
from grpo.demo import cache_dir, model_fingerprint
from grpo.model import build_tiny, load_tokenizer

CPU = torch.device("cpu")


@pytest.fixture()
def tiny_copy(tmp_path):
    """A copy of the tiny model dir, so a test may touch its files."""
    path = tmp_path / "model"
    shutil.copytree(build_tiny(), path)
    return path


def test_the_key_is_stable_and_follows_every_input(tiny_copy, tmp_path):
    sft = SFTConfig(model=str(tiny_copy), steps=3)
    tok = load_tokenizer(str(tiny_copy))
    key = cache_dir(sft, tok, 1, CPU)
    assert cache_dir(SFTConfig(model=str(tiny_copy), steps=3, out="elsewhere"), load_tokenizer(str(tiny_copy)), 1,
                     CPU) == key                                      # same inputs (out aside): the same warm start
    assert cache_dir(sft, tok, 2, CPU) != key                         # 2 ranks reduce gradients in another order
    assert cache_dir(sft, tok, 1, torch.device("meta")) != key        # another device type: other kernels
    for change in (dict(steps=4), dict(lora_targets="q_proj,v_proj"), dict(max_len=16), dict(dtype="bf16")):
        assert cache_dir(SFTConfig(**{"model": str(tiny_copy), "steps": 3, **change}), tok, 1, CPU) != key, change

    # the encoded pairs: another chat template (same data bytes, same model files' names) is another SFT
    other = load_tokenizer(str(tiny_copy))
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert cache_dir(sft, other, 1, CPU) != key

    # the reasoning traces are part of the targets
    traces = tmp_path / "traces.jsonl"
    from data import bundled_demo_path, load_samples
    first = next(s for s in load_samples(bundled_demo_path()) if s.reference)
    traces.write_text(json.dumps({"id": first.id, "reasoning": "Think about the heart."}) + "\n")
    assert cache_dir(SFTConfig(model=str(tiny_copy), steps=3, reasoning=str(traces)), tok, 1, CPU) != key

    # the model's files: rewritten weights (here: only their mtime moves) are another base model
    weights = tiny_copy / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_dir(sft, tok, 1, CPU) != key


def test_a_hub_id_is_keyed_by_its_cached_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"
    for commit in ("abc123", "def456"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    first = model_fingerprint("org/model")
    (repo / "refs" / "main").write_text("def456")  # the hub copy was updated
    assert first.endswith("abc123") and model_fingerprint("org/model").endswith("def456")
    assert model_fingerprint("org/not-downloaded") == "org/not-downloaded"  # nothing cached: the id is all we know


def test_the_lora_warm_start_trains_the_targets_grpo_was_given(tmp_path):
    """--lora_targets reaches the SFT warm start (it used to train all-linear whatever the flag said), and GRPO
    continues that adapter."""
    from grpo import checkpoint
    from grpo.train import main
    main([f"--out={tmp_path / 'run'}", "--full_finetune=false", "--lora_targets=q_proj,v_proj", "--sft_steps=1",
          "--steps=1", "--prompts_per_step=2", "--num_generations=2", "--max_new_tokens=8", "--plot=false",
          "--save_every=1"])
    for adapter in (tmp_path / "run" / "sft" / "adapter", checkpoint.latest(tmp_path / "run") / "adapter"):
        targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
        assert sorted(targets) == ["q_proj", "v_proj"], (adapter, targets)
