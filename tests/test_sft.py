"""SFT warm start: prompt tokens are masked, the NLL of the target falls, and GRPO starts from the saved adapter."""
import json

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
