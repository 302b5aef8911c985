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
    (["--judge=gpt"], "--judge=gpt must be keyword | openai | local"),  # the same check as EvalConfig's, below
    (["--judge_mode=fast"], "--judge_mode=fast must be per_criterion | per_completion"),
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


# ---- one parser for every entry point (train, sft, evaluate) ----
from grpo.config import ENTRY_POINTS, EVAL_PRESETS, EvalConfig, SFTConfig, TrainConfig, cli, help_text  # noqa: E402


@pytest.mark.parametrize("cls, usage", [(TrainConfig, "usage: torchrun grpo/train.py"),
                                        (SFTConfig, "usage: torchrun grpo/sft.py"),
                                        (EvalConfig, "usage: python -m grpo.evaluate")])
def test_every_entry_point_has_the_same_help_format(cls, usage, capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"], cls)
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.strip() == help_text(cls) and out.startswith(usage)
    from dataclasses import fields
    lines = [line for line in out.splitlines() if line.startswith("  --")]
    assert [line.split()[0] for line in lines] == [f"--{f.name}" for f in fields(cls)]
    defaults = cls()  # each line: the field's help text, then its default as the dataclass builds it
    assert all(line.endswith(f"(default {getattr(defaults, f.name)!r})") and f.metadata["help"] in line
               for line, f in zip(lines, fields(cls)))


def test_eval_flags_parse_both_forms_with_dashes_and_lists():
    a = parse_args(["--max-new-tokens", "64", "--limit", "3", "--no-progress", "--compare", "runs/a", "runs/b",
                    "--out", "runs/c"], EvalConfig)
    b = parse_args(["--max_new_tokens=64", "--limit=3", "--no_progress", "--compare=runs/a,runs/b", "--out=runs/c"],
                   EvalConfig)
    assert a == b and (a.max_new_tokens, a.limit, a.no_progress, a.compare, a.out) == (64, 3, True, ["runs/a", "runs/b"],
                                                                                      "runs/c")
    assert parse_args([], EvalConfig).compare == [] and parse_args([], EvalConfig) == EvalConfig()


def test_eval_preset_is_a_plain_dict_and_flags_win():
    paper = parse_args(["--preset", "paper"], EvalConfig)
    assert (paper.heart_only, paper.n, paper.seed) == (True, 500, 0) == tuple(EVAL_PRESETS["paper"].values())
    assert parse_args(["--preset=paper", "--n=20"], EvalConfig).n == 20
    assert ENTRY_POINTS[SFTConfig].presets is None  # sft has no presets: --preset is an unknown flag there
    with pytest.raises(ValueError, match="unknown flag --preset"):
        parse_args(["--preset=paper"], SFTConfig)


@pytest.mark.parametrize("cls, argv, message", [
    (EvalConfig, ["--preset=huge"], "unknown preset 'huge'; choose one of \\['paper'\\]"),
    (EvalConfig, ["--judeg=openai"], "did you mean --judge"),
    (EvalConfig, ["--judge=gpt"], "--judge=gpt must be keyword | openai | local"),
    (EvalConfig, ["--judge-mode=fast"], "--judge_mode=fast must be per_criterion | per_completion"),
    (EvalConfig, ["--batch-size=0"], "--batch_size must be >= 1, got 0"),
    (EvalConfig, ["--limit=-1"], "--limit must be >= 0"),
    (EvalConfig, ["--temperature=-0.5"], "--temperature must be a finite number >= 0"),
    (EvalConfig, ["--compare"], "--compare needs one or more values"),
    (EvalConfig, ["--n=ten"], "--n expects int, got 'ten'"),
    (SFTConfig, ["--dtype=fp16"], "--dtype=fp16 must be auto | bf16 | fp32"),
    (SFTConfig, ["--batch_size=0"], "--batch_size must be >= 1"),
    (SFTConfig, ["--lr=0"], "--lr must be a finite number > 0"),
    (SFTConfig, ["--max_len=0"], "--max_len must be >= 1"),
])
def test_each_entry_point_validates_its_own_flags(cls, argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv, cls)


def test_cli_prints_one_error_line_and_exits_2(capsys):
    import grpo.evaluate
    import grpo.sft
    for main in (grpo.evaluate.main, grpo.sft.main):
        assert cli(main, ["--stpes=3" if main is grpo.sft.main else "--limt=3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: unknown flag --") and "did you mean" in err

    def boom(argv):
        raise FileNotFoundError("data.jsonl: no such file")
    assert cli(boom, []) == 2 and capsys.readouterr().err == "error: data.jsonl: no such file\n"
    with pytest.raises(FileNotFoundError):
        cli(boom, ["--debug"])
    assert cli(lambda argv: None, []) == 0 and cli(lambda argv: 3, []) == 3
