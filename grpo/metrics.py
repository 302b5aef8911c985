"""Run logging on rank 0: one console line per step, metrics.jsonl, optional TensorBoard, a reward-curve PNG.

    python -m grpo.metrics runs/demo/metrics.jsonl     # (re)draws runs/demo/reward_curve.png

Other ranks get a logger whose methods do nothing, so the loop never branches on rank to log.
metrics.jsonl is standard JSON: a NaN / ±inf value is written as null (the reason is in another key, e.g.
`reward/unknown_frac`). A resumed run first cuts the file back to the checkpoint's step, so no step appears twice;
a torn last line (a kill mid-write) is dropped there and skipped by `read_metrics`.
"""
from __future__ import annotations

import json
import math
import re
import resource
import sys
from pathlib import Path

import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated bytes on the GPU, or the process's peak RSS on CPU (maxrss is in KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# namespaced key → the documented key it replaced; both are written to metrics.jsonl for one release (then the old
# names go). Keys not listed (reward/…, judge/…, time/…, tok_per_s/…, skipped/…, loss/clip_frac_…) kept their names.
ALIASES = {
    "loss/total": "loss",
    "actor/entropy": "entropy",
    "actor/kl": "kl",
    "actor/lr": "lr",
    "actor/grad_norm": "grad_norm",
    "reward/zero_std_frac": "frac_reward_zero_std",
    "rollout/completion_len": "completion_len",
    "rollout/truncated_frac": "truncated_frac",
    "rollout/format_ok": "format_ok",
    "skipped/steps": "skipped_steps",
    "memory/peak_gb": "peak_mem_gb",
    "data/prompts_seen": "prompts_seen",
}


def with_aliases(metrics: dict) -> dict:
    """`metrics` plus, for each namespaced key present, its old name with the same value."""
    return {**metrics, **{old: metrics[new] for new, old in ALIASES.items() if new in metrics}}


def field(row: dict, key: str):
    """row[key] under its namespaced name, or under the old one (metrics.jsonl written before the rename)."""
    return row[key] if key in row else row.get(ALIASES.get(key, key))


# the console line, in order: (label, keys, formats); a field whose keys are all absent from a run's metrics is left
# out (no `kl` at beta = 0: no reference pass); a present key without a value (a skipped step) prints —
CONSOLE = [
    ("reward", ("reward/mean", "reward/std"), ("{:.2f}", " ± {:.2f}")),
    ("zero-std", ("reward/zero_std_frac",), ("{:.2f}",)),
    ("kl", ("actor/kl",), ("{:.4f}",)),
    ("loss", ("loss/total",), ("{:+.4f}",)),
    ("clip", ("loss/clip_frac_low", "loss/clip_frac_high"), ("{:.2f}", "/{:.2f}")),
    ("ent", ("actor/entropy",), ("{:.2f}",)),
    ("len", ("rollout/completion_len",), ("{:.0f}",)),
    ("trunc", ("rollout/truncated_frac",), ("{:.2f}",)),
    ("format", ("rollout/format_ok",), ("{:.2f}",)),
    ("tok/s", ("tok_per_s/rollout", "tok_per_s/train"), ("{:,.0f}", "/{:,.0f}")),
    ("t", ("time/rollout", "time/judge", "time/train"), ("{:.1f}", "+{:.1f}", "+{:.1f}s")),
    ("mem", ("memory/peak_gb",), ("{:.1f}GB",)),
]


def format_line(step: int, total: int, m: dict) -> str:
    """nanochat-style: `step 00042/00120 | reward 7.41 ± 3.10 | zero-std 0.25 | kl 0.003 | ...`."""
    def g(key, fmt):  # no value: — in place of the number, the rest of fmt (" ± ", "GB") kept
        v = field(m, key)
        return re.sub(r"\{[^}]*\}", "—", fmt) if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
    parts = [f"step {step:05d}/{total:05d}"]
    for label, keys, fmts in CONSOLE:
        if any(k in m or ALIASES.get(k) in m for k in keys):
            parts.append(f"{label} " + "".join(g(k, f) for k, f in zip(keys, fmts)))
    if m.get("reward/unknown_frac") or m.get("judge/step_errors"):
        parts.append(f"judge unknown {g('reward/unknown_frac', '{:.2f}')} errors {g('judge/step_errors', '{:.0f}')}")
    if m.get("skipped/reason"):
        parts.append(f"SKIPPED ({m['skipped/reason']})")
    return " | ".join(parts)


def finite_or_none(metrics: dict) -> dict:
    """NaN / ±inf floats → None, so json.dumps writes null instead of the non-standard NaN / Infinity."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line that does not parse (torn by a kill mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep only the rows of steps ≤ `step` (the checkpoint a run resumes from), rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


class NullLogger:
    def log(self, step: int, metrics: dict) -> None: ...
    def write(self, text: str) -> None: ...
    def close(self) -> None: ...


class RunLogger(NullLogger):
    def __init__(self, out_dir: str | Path, total_steps: int, start_step: int = 0, tensorboard: bool = False,
                 plot: bool = True):
        from tqdm import tqdm
        self.out = Path(out_dir)
        self.total, self.plot = total_steps, plot
        # a resumed run appends after the checkpoint's step; a fresh run in an old directory starts the file over
        if start_step:
            truncate_metrics(self.out / "metrics.jsonl", start_step)
        self.jsonl = open(self.out / "metrics.jsonl", "a" if start_step else "w", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="grpo", unit="step", file=sys.stderr,
                        dynamic_ncols=True)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                self.write("tensorboard not installed: `pip install tensorboard` to enable --tensorboard")

    def log(self, step: int, metrics: dict) -> None:
        metrics = finite_or_none(with_aliases(metrics))
        self.jsonl.write(json.dumps({"step": step, **metrics}, allow_nan=False) + "\n")
        self.jsonl.flush()
        self.bar.write(format_line(step, self.total, metrics))
        self.bar.update(1)
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.plot:
            plot_rewards(self.out / "metrics.jsonl", self.out / "reward_curve.png")


def _mean(rows: list, key: str) -> float:
    vals = [v for v in (field(r, key) for r in rows) if isinstance(v, (int, float))]  # null (skipped) left out
    return sum(vals) / len(vals) if vals else float("nan")


def summary_line(rows: list[dict], reward: str = "hybrid", k: int = 10) -> str:
    """One line: the first k → last k steps' mean of the trained reward, format_ok, the truncated fraction and the
    HealthBench-style score (mean of the per-sample `healthbench` reward, clipped to [0, 1] as simple-evals clips
    its overall score), each a mean over the steps that report it."""
    first, last = rows[:k], rows[-k:]

    def arrow(key, fmt="{:.2f}", clip=False):
        a, b = _mean(first, key), _mean(last, key)
        if clip:
            a, b = (min(max(v, 0.0), 1.0) if v == v else v for v in (a, b))
        return f"{fmt.format(a)} → {fmt.format(b)}"
    return (f"first {len(first)} → last {len(last)} of {len(rows)} steps: reward ({reward}) "
            f"{arrow('reward/mean')} | format_ok {arrow('rollout/format_ok')} | trunc {arrow('rollout/truncated_frac')} | "
            f"HealthBench score (keyword toy judge) {arrow('reward/healthbench/mean', clip=True)}")


def reward_figure(rows: list[dict]):
    """The figure plot_rewards saves: reward mean ± std and its 10-step trailing mean (left axis); format_ok and the
    fraction of zero-variance groups (right axis, 0–1). Null values are gaps (NaN)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nan = float("nan")

    def series(key):  # null (no known value, a skipped step) is a gap
        return [nan if field(r, key) is None else field(r, key) for r in rows]
    steps, mean = [r["step"] for r in rows], series("reward/mean")
    std = [field(r, "reward/std") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, mean, label="reward mean", alpha=0.5)
    k = 10  # trailing 10-step average: the trend through per-step noise
    trail = [[m for m in mean[max(0, i - k + 1):i + 1] if m == m] for i in range(len(mean))]
    ax.plot(steps, [sum(t) / len(t) if t else nan for t in trail], color="tab:blue", linewidth=2,
            label=f"{k}-step mean")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax2 = ax.twinx()
    ax2.plot(steps, series("rollout/format_ok"), color="tab:green", alpha=0.7, label="format_ok")
    ax2.plot(steps, series("reward/zero_std_frac"), color="tab:red", alpha=0.5, label="frac zero-std groups")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("fraction (format_ok, zero-variance groups)")
    fig.legend(loc="upper center", ncol=4, fontsize="small", frameon=False)  # above the axes: hides no curve
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def plot_rewards(metrics_path: str | Path, png_path: str | Path) -> None:
    """reward_figure over a metrics.jsonl (the last row per step), saved as a PNG."""
    rows = list({r["step"]: r for r in read_metrics(metrics_path)}.values())
    if not rows:
        return
    fig = reward_figure(rows)
    import matplotlib.pyplot as plt
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    plot_rewards(src, src.with_name("reward_curve.png"))
