"""How far the cheap judge mode agrees with HealthBench's grader: per_completion (one call per response, every item
at once) vs per_criterion (one call per item), on the shared HealthBench and RaR-Medicine records.

    python bench/judge_agreement.py                     # simulated judge, a sweep of its batching error (~1 min)
    python bench/judge_agreement.py --limit 5 --slopes 0,0.01
    OPENAI_API_KEY=... python bench/judge_agreement.py --model gpt-4.1-2025-04-14 --limit 20   # a real judge

Both modes run through the real OpenAIJudge and `openai` client. Graded responses: each record's reference answer
(HealthBench's ideal completion, RaR-Medicine's reference answer) and, when longer, the same answer cut to its
first 300 characters, a weaker answer, so scores spread.

With no --model the judge is SIMULATED by the loopback server (tests/loopback.py), no LLM anywhere:
truth = the keyword rule (rewards.judge.keyword_verdict); each (response, criterion) pair has a fixed difficulty
u ∈ [0, 1) from a hash, and a call asking about k items at once flips the truth of every item with u < base +
slope·(k − 1). per_criterion calls have k = 1, so their error is `--base-error`; per_completion calls have k = the
rubric size. Both modes share u, so at slope 0 they agree exactly (a check of prompts, ids and parsing end to
end) and every disagreement comes from the assumed cost of batching. The figure is a consequence of that
assumption, so it is reported over a sweep of slopes; a real judge (--model) gives a measured one.

Reports, per setting: verdict agreement, Cohen's κ, mean |Δ example score|, pass/fail agreement (score > 0.5),
the HealthBench score (clipped mean) of each mode and their difference, and judge calls per mode. Prints a table;
the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import load_samples  # noqa: E402
from grpo import eval_stats as S  # noqa: E402
from rewards.judge import grade_sync, keyword_verdict  # noqa: E402
from rewards.openai_judge import OpenAIJudge  # noqa: E402
from tests.loopback import LoopbackJudgeServer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FILES = ("healthbench_hard_sample.jsonl", "rar_medicine_sample.jsonl")


def difficulty(completion: str, criterion: str) -> float:
    """A fixed u ∈ [0, 1) per (response, criterion), shared by both modes."""
    h = hashlib.sha256(f"{criterion}\x00{completion}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def simulated(base: float, slope: float):
    """The loopback server's grader: keyword truth, flipped where u < base + slope·(k − 1) for k items in the call."""
    def verdicts(completion: str, items: list[tuple], mode: str) -> dict[int, bool]:
        err = base + slope * (len(items) - 1)
        return {i: bool(keyword_verdict(t, completion)) != (difficulty(completion, t) < err) for i, _, t in items}
    return verdicts


def agreement(points: list[list[float]], a: list[list], b: list[list]) -> dict:
    """Agreement of verdict lists `a` (reference: per_criterion) and `b` over criteria both know, and of the
    example scores S.example_score they give."""
    pairs = [(x, y) for va, vb in zip(a, b) for x, y in zip(va, vb) if x is not None and y is not None]
    n = len(pairs)
    po = sum(x == y for x, y in pairs) / n if n else math.nan
    pa, pb = (sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n) if n else (math.nan, math.nan)
    pe = pa * pb + (1 - pa) * (1 - pb)
    kappa = (po - pe) / (1 - pe) if n and pe < 1 else math.nan  # Cohen's κ: agreement beyond chance
    sa = [S.example_score(p, v) for p, v in zip(points, a)]
    sb = [S.example_score(p, v) for p, v in zip(points, b)]
    both = [(x, y) for x, y in zip(sa, sb) if x is not None and y is not None]
    return {"criteria": n, "verdict_agreement": po, "kappa": kappa,
            "mean_abs_score_diff": sum(abs(x - y) for x, y in both) / len(both) if both else math.nan,
            "pass_agreement": sum((x > 0.5) == (y > 0.5) for x, y in both) / len(both) if both else math.nan,
            "score_per_criterion": S.clipped_mean(sa), "score_per_completion": S.clipped_mean(sb),
            "score_diff": S.clipped_mean(sb) - S.clipped_mean(sa)}


def responses(paths: list[Path], limit: int | None) -> list[tuple]:
    """(question, response, rubric) items: each record's reference answer, and that answer cut to 300 characters."""
    items = []
    for path in paths:
        for s in [s for s in load_samples(path) if s.reference][:limit]:
            items.append((s.prompt, s.reference, s.rubric))
            if len(s.reference) > 300:  # a shorter answer would be graded twice as the same text
                items.append((s.prompt, s.reference[:300], s.rubric))
    return items


def grade(items, mode: str, *, url: str | None, model: str, concurrency: int) -> tuple[list, int]:
    judge = OpenAIJudge(model, base_url=url, mode=mode, concurrency=concurrency, timeout=120, max_retries=3,
                        **({"api_key": "sim"} if url else {}))
    verdicts = grade_sync(judge, items)
    return verdicts, int(judge.stats()["judge/calls"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="per_completion vs per_criterion judge agreement (see docstring)")
    ap.add_argument("--data", nargs="+", default=None, help=f"record files (default: ../shared/data/{{{','.join(FILES)}}})")
    ap.add_argument("--limit", type=int, default=None, help="records per file")
    ap.add_argument("--model", default=None, help="a real judge model (OPENAI_BASE_URL / OPENAI_API_KEY); "
                                                  "default: the simulated judge")
    ap.add_argument("--base-error", type=float, default=0.05, help="simulated: error rate of a one-item call")
    ap.add_argument("--slopes", default="0,0.0025,0.005,0.01", help="simulated: extra error per extra item in a call")
    ap.add_argument("--concurrency", type=int, default=32, help="judge requests in flight")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.data] if args.data else [SHARED / f for f in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no record file at {', '.join(missing)}: pass --data FILE ...")
    items = responses(paths, args.limit)
    points = [[c.points for c in r] for _, _, r in items]
    n_crit = sum(map(len, points))
    settings = [None] if args.model else [float(x) for x in args.slopes.split(",")]
    rows = []
    ref = None
    for slope in settings:
        if args.model:
            ref, ref_calls = grade(items, "per_criterion", url=None, model=args.model, concurrency=args.concurrency)
            got, calls = grade(items, "per_completion", url=None, model=args.model, concurrency=args.concurrency)
        else:
            with LoopbackJudgeServer(verdicts=simulated(args.base_error, slope)) as server:
                if ref is None:  # per_criterion calls have k = 1: the slope does not touch them
                    ref, ref_calls = grade(items, "per_criterion", url=server.url, model="sim", concurrency=args.concurrency)
                got, calls = grade(items, "per_completion", url=server.url, model="sim", concurrency=args.concurrency)
        rows.append({"slope": slope, **agreement(points, ref, got), "calls_per_criterion": ref_calls,
                     "calls_per_completion": calls})
    judge = args.model or f"simulated (base error {args.base_error:g}, error + slope per extra item)"
    print(f"{len(items)} responses to {len({repr(q) for q, _, _ in items})} questions, {n_crit} criteria; judge: {judge}")
    print("slope   | verdict agree | kappa | mean |Δscore| | pass agree | score crit | score compl | Δscore | calls crit / compl")
    for r in rows:
        slope = "real" if r["slope"] is None else f"{r['slope']:.4f}"
        print(f"{slope:7} | {r['verdict_agreement']:13.3f} | {r['kappa']:5.3f} | {r['mean_abs_score_diff']:13.3f} | "
              f"{r['pass_agreement']:10.3f} | {r['score_per_criterion']:10.3f} | {r['score_per_completion']:11.3f} | "
              f"{r['score_diff']:+6.3f} | {r['calls_per_criterion']:,} / {r['calls_per_completion']:,}")
    out = {"responses": len(items), "criteria": n_crit, "judge": judge, "base_error": args.base_error, "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
