"""Which reward keeps GRPO's within-group spread alive? Simulated judges on real rubrics.

    python bench/reward_variance.py                       # ../shared/data rubrics (else the bundled demo), ~5 s on CPU
    python bench/reward_variance.py --G 16 --groups 8 --pass-rates 0.2,0.5,0.8,0.95 --png variance.png

For every rubric and every simulated judge pass rate q, sample `groups` groups of G completions: each positive
criterion is met with probability q, each pitfall triggered with probability (1 − q)·pitfall_scale, each verdict
unknown with probability `unknown`. Per reward function it reports the mean within-group std (raw, and divided by
the reward's range so rewards on different scales compare), the fraction of zero-variance groups (GRPO learns
nothing from those), and the Spearman rank correlation with the HealthBench score over all samples.
`rar_implicit*` simulates a Likert judge as 1 + round(9·clip(HealthBench, 0, 1)): it shows what rating
quantisation does to the spread. Prints a table, saves a PNG, and prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import bundled_demo_path, load_samples  # noqa: E402
from rewards import REWARDS, rar_implicit  # noqa: E402

RANGE = {"hybrid": 20.0, "complexity": 25.0, "rar_explicit": 1.0, "healthbench": 1.0, "rar_implicit*": 1.0}


def default_paths() -> list[Path]:
    shared = ROOT.parent / "shared" / "data"
    found = sorted(shared.glob("*.jsonl")) if shared.is_dir() else []
    return found or [bundled_demo_path()]


def simulate(rubrics, pass_rates, G, groups, pitfall_scale, unknown, seed):
    """{q: {reward: (n_groups, G) array, NaN = None}} for every pass rate q."""
    rng = np.random.default_rng(seed)
    out = {}
    for q in pass_rates:
        rows = {name: [] for name in RANGE}
        for rubric in rubrics:
            pts = np.array([c.points for c in rubric])  # (n,)
            p_true = np.where(pts < 0, (1 - q) * pitfall_scale, q)  # (n,)
            for _ in range(groups):
                hit = rng.random((G, len(pts))) < p_true  # (G, n)
                lost = rng.random((G, len(pts))) < unknown  # (G, n)
                met = [[None if lost[g, i] else bool(hit[g, i]) for i in range(len(pts))] for g in range(G)]
                for name, fn in REWARDS.items():
                    rows[name].append([np.nan if (r := fn(rubric, m)) is None else r for m in met])
                hb = rows["healthbench"][-1]
                rows["rar_implicit*"].append([np.nan if np.isnan(h) else rar_implicit(1 + round(9 * min(max(h, 0.0), 1.0)))
                                              for h in hb])
        out[q] = {name: np.array(v, dtype=np.float64) for name, v in rows.items()}  # (n_groups, G)
    return out


def summarise(r: np.ndarray, hb: np.ndarray) -> dict:
    """r, hb: (n_groups, G). Within-group population std over the known samples; zero-variance = < 2 known
    samples or all known equal."""
    stds, zero = [], 0
    for row in r:
        known = row[~np.isnan(row)]
        if len(known) < 2 or np.ptp(known) == 0:
            zero += 1
        if len(known) >= 1:
            stds.append(known.std())
    both = ~np.isnan(r) & ~np.isnan(hb)
    rho = spearmanr(r[both], hb[both]).statistic if both.sum() > 2 and np.ptp(r[both]) > 0 and np.ptp(hb[both]) > 0 else float("nan")
    return {"mean_std": float(np.mean(stds)) if stds else float("nan"), "frac_zero_std": zero / len(r),
            "spearman_hb": float(rho)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="*", default=None, help="JSONL files with rubrics (default: ../shared/data, else demo)")
    ap.add_argument("--max-rubrics", type=int, default=60, help="rubrics used per file, at most")
    ap.add_argument("--G", type=int, default=8, help="completions per group")
    ap.add_argument("--groups", type=int, default=3, help="groups per rubric per pass rate")
    ap.add_argument("--pass-rates", default="0.1,0.3,0.5,0.7,0.9,0.97", help="simulated per-criterion pass rates")
    ap.add_argument("--pitfall-scale", type=float, default=0.5, help="pitfall probability = (1 − q) × this")
    ap.add_argument("--unknown", type=float, default=0.02, help="probability a verdict is unknown")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="runs/reward_variance.png", help="plot path ('' = no plot)")
    args = ap.parse_args(argv)

    paths = [Path(p) for p in args.data] if args.data else default_paths()
    rubrics = [s.rubric for p in paths for s in load_samples(p, heart=False)[: args.max_rubrics] if len(s.rubric)]
    pass_rates = [float(x) for x in args.pass_rates.split(",")]
    sims = simulate(rubrics, pass_rates, args.G, args.groups, args.pitfall_scale, args.unknown, args.seed)

    per_q = {q: {name: summarise(r, sims[q]["healthbench"]) for name, r in sims[q].items()} for q in pass_rates}
    overall = {}
    for name in RANGE:
        r = np.concatenate([sims[q][name] for q in pass_rates])
        hb = np.concatenate([sims[q]["healthbench"] for q in pass_rates])
        overall[name] = summarise(r, hb) | {"std_over_range": summarise(r, hb)["mean_std"] / RANGE[name]}

    print(f"{len(rubrics)} rubrics from {', '.join(p.name for p in paths)} | G={args.G} | {args.groups} groups/rubric/rate"
          f" | pass rates {pass_rates} | unknown {args.unknown}")
    print(f"{'reward':<15}{'range':>7}{'std':>9}{'std/range':>11}{'zero-var':>10}{'ρ vs HB':>9}   zero-var by pass rate")
    for name, o in overall.items():
        by_q = " ".join(f"{per_q[q][name]['frac_zero_std']:.2f}" for q in pass_rates)
        print(f"{name:<15}{RANGE[name]:>7g}{o['mean_std']:>9.3f}{o['std_over_range']:>11.3f}{o['frac_zero_std']:>10.3f}"
              f"{o['spearman_hb']:>9.3f}   {by_q}")

    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for name in RANGE:
            a.plot(pass_rates, [per_q[q][name]["frac_zero_std"] for q in pass_rates], marker="o", label=name)
            b.plot(pass_rates, [per_q[q][name]["mean_std"] / RANGE[name] for q in pass_rates], marker="o", label=name)
        a.set(xlabel="simulated per-criterion pass rate", ylabel="fraction of zero-variance groups")
        b.set(xlabel="simulated per-criterion pass rate", ylabel="mean within-group std / reward range")
        a.legend(fontsize=8)
        fig.suptitle(f"Reward spread inside GRPO groups (G={args.G}, {len(rubrics)} rubrics)")
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")

    result = {"rubrics": len(rubrics), "G": args.G, "groups": args.groups, "pass_rates": pass_rates,
              "overall": overall, "frac_zero_std_by_pass_rate": {str(q): {n: per_q[q][n]["frac_zero_std"] for n in RANGE}
                                                                 for q in pass_rates}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
