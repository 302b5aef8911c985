"""grpo/metrics.py: metric names (the namespaced keys, the old names kept as aliases for one release), the console
line, the demo's summary line (hand-computed means) and the reward-curve figure's series."""
import json
import math

from grpo.metrics import ALIASES, RunLogger, field, format_line, plot_rewards, read_metrics, reward_figure, summary_line

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


def _rows(n: int) -> list:
    # step s: reward s, format_ok s/n, truncated 1 - s/n, healthbench (s - 5)/10 (negative early: clipped to 0)
    return [{"step": s, "reward/mean": float(s), "reward/std": 0.5, "rollout/format_ok": s / n,
             "rollout/truncated_frac": 1 - s / n, "reward/zero_std_frac": 0.25, "reward/healthbench/mean": (s - 5) / 10}
            for s in range(1, n + 1)]


def test_summary_line_hand_computed():
    rows = _rows(30)
    # first 10 steps: reward mean (1+…+10)/10 = 5.5, format_ok 5.5/30 = 0.18, trunc 1 - 0.18 = 0.82,
    # healthbench mean (5.5 - 5)/10 = 0.05; last 10 (21…30): reward 25.5, format_ok 0.85, trunc 0.15, hb 2.05 → 1.00
    line = summary_line(rows, reward="hybrid")
    assert line == ("first 10 → last 10 of 30 steps: reward (hybrid) 5.50 → 25.50 | format_ok 0.18 → 0.85 | "
                    "trunc 0.82 → 0.15 | HealthBench score (keyword toy judge) 0.05 → 1.00")


def test_summary_line_skips_nulls_and_short_runs():
    rows = _rows(4)
    rows[0]["reward/mean"] = None  # a step with no known reward: left out of the mean, not read as 0
    line = summary_line(rows, k=2)
    assert "reward (hybrid) 2.00 → 3.50" in line  # first two: only step 2 counts; last two: (3 + 4)/2
    assert line.startswith("first 2 → last 2 of 4 steps")


def test_format_line_shows_format_ok():
    assert "| trunc 1.00 | format 0.62 | tok/s" in format_line(3, 10, {**ROW, "rollout/format_ok": 0.625})
    assert "| format — |" in format_line(3, 10, {**ROW, "rollout/format_ok": None})  # a skipped step


def test_reward_figure_has_reward_format_and_zero_std_series(tmp_path):
    rows = _rows(12)
    rows[3]["reward/mean"] = None
    fig = reward_figure(rows)
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert {"reward mean", "10-step mean", "format_ok", "frac zero-std groups"} <= set(lines)
    assert list(lines["format_ok"].get_ydata()) == [r["rollout/format_ok"] for r in rows]
    assert list(lines["frac zero-std groups"].get_ydata()) == [0.25] * 12
    reward = list(lines["reward mean"].get_ydata())
    assert math.isnan(reward[3]) and reward[:3] == [1.0, 2.0, 3.0]  # null is a gap, not 0
    trail = list(lines["10-step mean"].get_ydata())
    assert trail[4] == (1 + 2 + 3 + 5) / 4  # the trailing mean skips the gap
    assert list(lines["format_ok"].get_xdata()) == list(range(1, 13))
    # and plot_rewards writes it from a metrics.jsonl
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_rewards(path, tmp_path / "reward_curve.png")
    assert (tmp_path / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
