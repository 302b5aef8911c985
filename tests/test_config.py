"""Config: presets, flag parsing, errors that name the fix, and the LR schedule."""
import json

import pytest

from grpo.config import PRESETS, Config, parse_args, to_json


def test_defaults_are_the_tiny_demo():
    cfg = parse_args([])
    assert cfg.preset == "tiny" and cfg.model == "tiny" and cfg.data == "demo"


def test_paper_preset_matches_the_paper():
    cfg = parse_args(["--preset", "qwen3-14b-rtx6000", "--data=x.jsonl"])
    assert (cfg.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets) == ("Qwen/Qwen3-14B", 16, 32, "all-linear")
    assert (cfg.num_generations, cfg.max_new_tokens, cfg.lr, cfg.warmup_ratio) == (6, 1024, 5e-6, 0.1)
    assert (cfg.temperature, cfg.min_p, cfg.grad_checkpointing, cfg.schedule) == (1.0, 0.1, True, "linear")


def test_flags_override_preset_and_coerce_types():
    cfg = parse_args(["--steps=7", "--lr", "1e-4", "--dynamic-sampling", "--beta=0.04", "--plot=false"])
    assert (cfg.steps, cfg.lr, cfg.dynamic_sampling, cfg.beta, cfg.plot) == (7, 1e-4, True, 0.04, False)


@pytest.mark.parametrize("argv, message", [
    (["--stpes=3"], "did you mean --steps"),
    (["--steps=three"], "expects int"),
    (["--loss=ppo"], "choose one of"),
    (["--reward=nope"], "reward 'nope' unknown"),
    (["--num_generations=1"], ">= 2"),
    (["--preset=huge"], "unknown preset"),
    (["--preset=qwen3-14b-rtx6000"], "--data is required"),
])
def test_bad_flags_name_the_fix(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_config_round_trips_through_json():
    cfg = parse_args(["--steps=3"])
    assert Config(**json.loads(to_json(cfg))) == cfg
    assert "api_key" not in to_json(cfg)


def test_every_preset_key_is_a_field():
    names = set(Config.__dataclass_fields__)
    for preset in PRESETS.values():
        assert set(preset) <= names


def test_lr_schedule_warmup_then_linear_decay():
    from grpo.train import lr_lambda
    cfg = parse_args(["--warmup_ratio=0.1", "--schedule=linear"])
    f = lr_lambda(cfg, 100)  # warmup 10 updates
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [f(10), f(55), f(100)] == pytest.approx([1.0, 0.5, 0.0])
    cfg.schedule = "cosine"
    assert lr_lambda(cfg, 100)(55) == pytest.approx(0.5)
