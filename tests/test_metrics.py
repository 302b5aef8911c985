"""Metric names: the namespaced keys, the old names kept as aliases for one release, the console line."""
import json

from grpo.metrics import ALIASES, RunLogger, field, format_line, plot_rewards, read_metrics

# the documented keys of the last release and the namespaced key that replaces each: both are in metrics.jsonl
OLD_NAMES = {
    "loss": "loss/total", "entropy": "actor/entropy", "kl": "actor/kl", "lr": "actor/lr",
    "grad_norm": "actor/grad_norm", "frac_reward_zero_std": "reward/zero_std_frac",
    "completion_len": "rollout/completion_len", "truncated_frac": "rollout/truncated_frac",
    "format_ok": "rollout/format_ok", "skipped_steps": "skipped/steps", "peak_mem_gb": "memory/peak_gb",
    "prompts_seen": "data/prompts_seen",
}

ROW = {"reward/mean": 7.41, "reward/std": 3.1, "reward/zero_std_frac": 0.25, "loss/total": -0.0123,
       "loss/clip_frac_low": 0.0, "loss/clip_frac_high": 0.05, "actor/entropy": 1.5, "rollout/completion_len": 12.0,
       "rollout/truncated_frac": 1.0, "tok_per_s/rollout": 1234.0, "tok_per_s/train": 99.0, "time/rollout": 1.25,
       "time/judge": 0.5, "time/train": 0.75, "memory/peak_gb": 1.0}


def test_alias_map_is_the_documented_one():
    assert {old: new for new, old in ALIASES.items()} == OLD_NAMES
    assert all("/" in new for new in ALIASES)


def test_both_names_are_written_to_metrics_jsonl(tmp_path):
    log = RunLogger(tmp_path, total_steps=1, plot=False)
    log.log(1, {**ROW, "actor/kl": 0.002, "actor/lr": 1e-3})
    log.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    for old, new in OLD_NAMES.items():
        assert (old in row) == (new in row), old
        if new in row:
            assert row[old] == row[new]
    assert row["kl"] == 0.002 and row["loss"] == -0.0123 and row["frac_reward_zero_std"] == 0.25


def test_console_line_leaves_out_what_the_run_does_not_have():
    at_beta0 = format_line(3, 10, ROW)  # no actor/kl key: beta = 0, no reference pass
    assert "kl" not in at_beta0
    assert at_beta0 == ("step 00003/00010 | reward 7.41 ± 3.10 | zero-std 0.25 | loss -0.0123 | clip 0.00/0.05 | "
                        "ent 1.50 | len 12 | trunc 1.00 | tok/s 1,234/99 | t 1.2+0.5+0.8s | mem 1.0GB")
    skipped = format_line(4, 10, {**ROW, "actor/kl": None, "loss/total": None, "tok_per_s/train": None,
                                  "skipped/reason": "no_signal"})
    assert "| kl — | loss — |" in skipped and "tok/s 1,234/— |" in skipped and skipped.endswith("SKIPPED (no_signal)")
    assert "| kl 0.0020 |" in format_line(5, 10, {**ROW, "actor/kl": 0.002})


def test_plot_and_readers_take_either_name(tmp_path):
    path = tmp_path / "metrics.jsonl"
    old_rows = [{"step": s, "reward/mean": 0.1 * s, "reward/std": 0.1, "frac_reward_zero_std": 0.5} for s in (1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old_rows))  # a run logged before the rename
    rows = read_metrics(path)
    assert [field(r, "reward/zero_std_frac") for r in rows] == [0.5, 0.5]
    assert field({"reward/zero_std_frac": 0.0, "frac_reward_zero_std": 9.0}, "reward/zero_std_frac") == 0.0
    plot_rewards(path, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
