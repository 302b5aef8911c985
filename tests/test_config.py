"""Config: presets, flag parsing, errors that name the fix, and the LR schedule."""
import json

import pytest

from grpo.config import PRESETS, Config, parse_args, to_json


def test_defaults_are_the_tiny_demo():
    cfg = parse_args([])
    assert cfg.preset == "tiny" and cfg.model == "tiny" and cfg.data == "demo"


def test_paper_preset_matches_the_paper(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the preset grades with the openai judge: key and model checked
    cfg = parse_args(["--preset", "qwen3-14b-rtx6000", "--data=x.jsonl", "--judge_model=gpt-4.1-mini"])
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
    (["--preset=qwen3-14b-rtx6000", "--judge_model=m", "--judge_base_url=http://h/v1"], "--data is required"),
    (["--steps=0"], "--steps must be >= 1, got 0"),
    (["--save_every=0"], "--save_every must be >= 1"),
    (["--prompts_per_step=0"], "--prompts_per_step must be >= 1"),
    (["--keep_last=0"], "--keep_last must be >= 1"),
    (["--judge_concurrency=0"], "--judge_concurrency must be >= 1"),
    (["--lr=-1"], "--lr must be a finite number > 0"),
    (["--lr=nan"], "--lr must be a finite number > 0"),
    (["--lr=inf"], "--lr must be a finite number > 0"),
    (["--temperature=0"], "--temperature must be a finite number > 0"),
    (["--judge_timeout=0"], "--judge_timeout must be a finite number > 0"),
    (["--max_unknown_steps=-1"], "--max_unknown_steps must be >= 0"),
    (["--judge=openai", "--judge_base_url=http://localhost:8000/v1"], "needs --judge_model"),
])
def test_bad_flags_name_the_fix(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_openai_judge_key_is_checked_in_config(monkeypatch):
    """The key (or a local server's URL) must be there before anything loads; the key itself is never in the config."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="set OPENAI_API_KEY"):
        parse_args(["--judge=openai", "--judge_model=gpt-4.1-mini"])
    assert parse_args(["--judge=openai", "--judge_model=m", "--judge_base_url=http://127.0.0.1:1/v1"]).judge == "openai"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    cfg = parse_args(["--judge=openai", "--judge_model=gpt-4.1-mini", "--judge_timeout=5", "--max_unknown_steps=0"])
    assert (cfg.judge_timeout, cfg.max_unknown_steps) == (5.0, 0) and "sk-secret-value" not in to_json(cfg)


def test_reliability_defaults():
    cfg = parse_args([])
    assert (cfg.judge_timeout, cfg.max_unknown_steps, cfg.debug) == (30.0, 3, False)
    assert parse_args(["--debug"]).debug is True


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


def test_reward_names_parse_log_rewards_once_trained_reward_first():
    from grpo.config import reward_names
    cfg = parse_args(["--reward=rar_explicit", "--log_rewards=healthbench, hybrid,,rar_explicit,healthbench"])
    assert reward_names(cfg) == ("rar_explicit", "healthbench", "hybrid")  # blanks and repeats dropped, order kept
    assert reward_names(parse_args(["--log_rewards="])) == ("hybrid",)


@pytest.mark.parametrize("argv, message", [
    (["--log_rewards=healthbench,nope"], r"reward 'nope' unknown; choose from \[.*'rar_implicit'\]"),
    (["--reward=rar_implicit"], "rar_implicit needs a rating judge: use --judge=openai"),
    (["--log_rewards=rar_implicit", "--judge=local"], "rar_implicit needs a rating judge"),
])
def test_rewards_are_checked_through_the_registry(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)
