"""grpo/metrics.py: the demo's summary line (hand-computed means) and the reward-curve figure's series."""
import json
import math

from grpo.metrics import format_line, plot_rewards, reward_figure, summary_line


def _rows(n: int) -> list:
    # step s: reward s, format_ok s/n, truncated 1 - s/n, healthbench (s - 5)/10 (negative early: clipped to 0)
    return [{"step": s, "reward/mean": float(s), "reward/std": 0.5, "format_ok": s / n, "truncated_frac": 1 - s / n,
             "frac_reward_zero_std": 0.25, "reward/healthbench/mean": (s - 5) / 10} for s in range(1, n + 1)]


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
    assert "| format 0.62 |" in format_line(3, 10, {"format_ok": 0.625, "reward/mean": 1.0})
    assert "| format — |" in format_line(3, 10, {})


def test_reward_figure_has_reward_format_and_zero_std_series(tmp_path):
    rows = _rows(12)
    rows[3]["reward/mean"] = None
    fig = reward_figure(rows)
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert {"reward mean", "10-step mean", "format_ok", "frac zero-std groups"} <= set(lines)
    assert list(lines["format_ok"].get_ydata()) == [r["format_ok"] for r in rows]
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
