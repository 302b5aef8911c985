"""SFT warm start: prompt tokens are masked, the NLL of the target falls, and GRPO starts from the saved adapter."""
import json

import pytest
import torch

from grpo.sft import collate, encode, main as sft_main
from grpo.train import main as train_main


def test_collate_masks_prompt_and_padding():
    pairs = [(torch.tensor([5, 6, 7]), torch.tensor([8, 9])), (torch.tensor([5]), torch.tensor([8, 9, 10, 2]))]
    ids, attn, cmask = collate(pairs, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 0, 0], [0, 0, 5, 8, 9, 10, 2]]   # prompts left-padded, targets right
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert cmask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]                   # loss only on target tokens


def test_encode_appends_eos_and_uses_the_chat_template():
    from grpo.model import build_tiny, load_model
    _, tok = load_model(build_tiny(), device=torch.device("cpu"))
    messages = [{"role": "user", "content": "Is aspirin a blood thinner?"}]
    p, t = encode(tok, messages, "<SOLUTION>yes</SOLUTION>", max_len=64)
    assert t[-1].item() == tok.eos_token_id
    assert tok.decode(p).endswith("<|im_start|>assistant\n")
    assert tok.decode(t[:-1]) == "<SOLUTION>yes</SOLUTION>"


def test_sft_lowers_nll_and_grpo_starts_from_its_adapter(tmp_path, capsys):
    sft_main([f"--out={tmp_path / 'sft'}", "--steps=25", "--batch_size=4", "--lr=3e-3", "--max_len=64"])
    adapter = tmp_path / "sft" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    final_nll = float(capsys.readouterr().out.split("final nll ")[1].split(")")[0])
    # the NLL of an untrained model on these targets: compute it independently with the same encoding
    from data import bundled_demo_path, load_samples
    from data.format import format_target, to_messages
    from grpo.model import build_tiny, load_model
    from grpo.sft import collate
    model, tok = load_model(build_tiny(), device=torch.device("cpu"))
    samples = [s for s in load_samples(bundled_demo_path()) if s.reference][:8]
    ids, attn, cmask = collate([encode(tok, to_messages(s), format_target("", s.reference), 64) for s in samples],
                               tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    T = cmask.shape[1]
    nll = torch.nn.functional.cross_entropy(logits[:, -T - 1:-1].reshape(-1, logits.shape[-1]),
                                            ids[:, -T:].reshape(-1), reduction="none").view_as(cmask.float())
    base_nll = float((nll * cmask).sum() / cmask.sum())
    assert final_nll < 0.8 * base_nll, (final_nll, base_nll)

    train_main(["--steps=1", "--prompts_per_step=2", "--num_generations=2", "--max_new_tokens=8", "--plot=false",
                "--full_finetune=false", f"--init_adapter={adapter}", f"--out={tmp_path / 'grpo'}"])
    cfg = json.loads((tmp_path / "grpo" / "config.json").read_text())
    assert cfg["init_adapter"] == str(adapter)
    assert (tmp_path / "grpo" / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors").exists()


def test_a_truncated_target_does_not_end_in_eos():
    """max_len cuts the target: the kept tokens must not be followed by EOS (that teaches stopping mid-answer)."""
    from grpo.model import build_tiny, load_model
    _, tok = load_model(build_tiny(), device=torch.device("cpu"))
    messages = [{"role": "user", "content": "Is aspirin a blood thinner?"}]
    target = "<SOLUTION>Yes: aspirin inhibits platelet aggregation, so it thins the blood.</SOLUTION>"
    full = tok(target, add_special_tokens=False)["input_ids"]
    _, cut = encode(tok, messages, target, max_len=5)
    assert cut.tolist() == full[:5] and tok.eos_token_id not in cut.tolist()
    _, whole = encode(tok, messages, target, max_len=len(full) + 1)   # exactly fits with its EOS
    assert whole.tolist() == full + [tok.eos_token_id]
    _, just_short = encode(tok, messages, target, max_len=len(full))  # the target fits, its EOS does not
    assert just_short.tolist() == full


def test_sft_flags_parse_like_train_flags():
    """Its own docstring's space-separated form and the --key=value form give the same config; unknown flags name
    the close match; --help lists every field."""
    from grpo.config import parse_args
    from grpo.sft import SFTConfig
    a = parse_args(["--data", "x.jsonl", "--out", "runs/sft", "--steps", "3"], SFTConfig)
    b = parse_args(["--data=x.jsonl", "--out=runs/sft", "--steps=3"], SFTConfig)
    assert a == b and a.data == "x.jsonl" and a.steps == 3
    with pytest.raises(ValueError, match="did you mean --steps"):
        parse_args(["--step=3"], SFTConfig)
    with pytest.raises(ValueError, match=r"--reasoning=nope.jsonl: no such file"):  # before any model loads
        parse_args(["--reasoning=nope.jsonl"], SFTConfig)


def _torchrun_sft(n: int, args: list, out) -> float:
    """Run grpo/sft.py under torchrun with n gloo processes; returns the final NLL it prints (rank 0)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(root / "grpo" / "sft.py"), *args, f"--out={out}"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return float(done.stdout.split("final nll ")[1].split(")")[0])


@pytest.mark.slow
def test_two_process_sft_equals_one_process(tmp_path):
    """The NLL is the token mean of the global batch: 2 ranks (whose targets have different token counts) report the
    1-process NLL on the same batch and end at its adapter. (The adapter alone barely tells: Adam's first updates are
    ~lr·sign(g), blind to how the ranks are weighted; the NLL after two updates is not.)"""
    from safetensors.torch import load_file
    args = ["--steps=3", "--batch_size=4", "--max_len=48", "--lr=3e-3", "--lora_r=4"]
    nll = {n: _torchrun_sft(n, args, tmp_path / str(n)) for n in (1, 2)}
    assert nll[2] == pytest.approx(nll[1], rel=1e-4)
    w1 = load_file(tmp_path / "1" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "2" / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


def test_train_sft_in_process_returns_the_adapter(tmp_path):
    """The callable the demo's warm start uses: runs in this process (no torchrun) and returns out/adapter."""
    from grpo.sft import SFTConfig, train_sft
    adapter = train_sft(SFTConfig(out=str(tmp_path / "sft"), steps=1, batch_size=2, max_len=16, lora_r=4),
                        progress=False)
    assert adapter == tmp_path / "sft" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
