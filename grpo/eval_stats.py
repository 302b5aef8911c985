"""Evaluation statistics, pure functions over per-example verdicts (used by `python -m grpo.evaluate`).

    python -m grpo.evaluate --compare runs/eval-base/results.jsonl runs/eval-grpo/results.jsonl

An example is (points: list[float], met: list[bool | None], tags: list[tuple]) — one entry per rubric criterion.
HealthBench's official score, exactly as simple-evals aggregates it (`healthbench_eval.py`: `calculate_score`,
`_compute_clipped_stats`), for N examples with points p_ji and verdicts met_ji:

    s_j     = Σ_i p_ji · [met_ji] / Σ_i max(p_ji, 0)        per example, not clipped (a met pitfall subtracts)
    score   = clip((1/N) Σ_j s_j, 0, 1)
    std     = sqrt((1/B) Σ_b (m_b − m̄)²),  m_b = clip(mean of N draws of s with replacement, 0, 1),  B = 1000

(std is numpy's np.std, ddof 0, of the B resampled clipped means; m̄ their mean). Per-axis scores apply the same
formula to each example's criteria carrying that tag. One departure, forced by a bounded judge: an unknown verdict
(None: the judge gave no valid boolean after its retries; simple-evals retries without bound) is dropped from
numerator and denominator alike, as in `rewards.functions.healthbench` — counting it as "not met" would punish a
desirable behaviour and forgive a pitfall; the share of unknowns is reported next to the score.
The paper's metrics: an example *passes* when its score is > 0.5; accuracy / precision / recall / F1 are over
criteria, reading each criterion as a label an ideal response gets right (positive criteria met, pitfalls not met)
and the judge's verdict as the response's prediction — precision: share of the behaviours shown that are desirable,
recall: share of the desirable behaviours shown. `paper_heuristic` is the paper's released keyword evaluator,
kept only so runs can sit next to the paper's table (see its docstring for how it departs from a grade).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence


def example_score(points: Sequence[float], met: Sequence[bool | None]) -> float | None:
    """Σ points of met criteria / Σ positive points over the known verdicts; None when no known criterion has
    positive points."""
    if len(points) != len(met):
        raise ValueError(f"{len(points)} criteria but {len(met)} verdicts")
    points, met = [p for p, m in zip(points, met) if m is not None], [m for m in met if m is not None]
    total = sum(p for p in points if p > 0)
    if total <= 0:
        return None
    return sum(p for p, m in zip(points, met) if m is True) / total


def clipped_mean(values: Sequence[float]) -> float:
    """The official aggregate: mean over examples, clipped to [0, 1] (nan for no examples)."""
    values = [v for v in values if v is not None]
    return min(1.0, max(0.0, sum(values) / len(values))) if values else math.nan


def bootstrap(values: Sequence[float], stat=clipped_mean, *, n: int = 1000, seed: int = 0,
              alpha: float = 0.05) -> dict:
    """{"value", "std", "lo", "hi"}: the statistic, its bootstrap std (simple-evals': the population std, ddof 0, of
    the `n` resampled statistics) and the percentile (1-alpha) interval, from `n` resamples of the values with
    replacement (a fixed seed, so reruns print the same numbers)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"value": math.nan, "std": math.nan, "lo": math.nan, "hi": math.nan}
    rng = random.Random(seed)
    draws = (stat(rng.choices(values, k=len(values))) for _ in range(n))
    stats = sorted(s for s in draws if not math.isnan(s))  # e.g. precision of a resample with nothing predicted
    if not stats:
        return {"value": stat(values), "std": math.nan, "lo": math.nan, "hi": math.nan}
    n = len(stats)
    mean = sum(stats) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in stats) / n)  # np.std, ddof 0, as simple-evals
    lo, hi = stats[int(math.floor(alpha / 2 * (n - 1)))], stats[int(math.ceil((1 - alpha / 2) * (n - 1)))]
    return {"value": stat(values), "std": std, "lo": lo, "hi": hi}


def tag_scores(examples: Sequence[tuple], prefix: str) -> dict[str, float]:
    """Per criterion tag (e.g. prefix "axis:"): each example scored on only its criteria with that tag, then the
    clipped mean over the examples that have such a criterion with positive points (simple-evals' per-axis scores)."""
    per_tag: dict[str, list] = {}
    for points, met, tags in examples:
        for tag in sorted({t for ts in tags for t in ts if t.startswith(prefix)}):
            idx = [i for i, ts in enumerate(tags) if tag in ts]
            s = example_score([points[i] for i in idx], [met[i] for i in idx])
            if s is not None:
                per_tag.setdefault(tag[len(prefix):], []).append(s)
    return {tag: clipped_mean(v) for tag, v in sorted(per_tag.items())}


def group_scores(scores: Sequence[float | None], groups: Sequence[Sequence[str]], prefix: str) -> dict[str, dict]:
    """Per example tag (e.g. "theme:" or "heart:"): {"n", "score"} with the clipped mean of the group's scores."""
    out: dict[str, list] = {}
    for s, tags in zip(scores, groups):
        for t in tags:
            if t.startswith(prefix) and s is not None:
                out.setdefault(t[len(prefix):], []).append(s)
    return {k: {"n": len(v), "score": clipped_mean(v)} for k, v in sorted(out.items())}


def criterion_metrics(examples: Sequence[tuple]) -> dict:
    """Accuracy, precision, recall, F1 over all criteria with a known verdict (see module docstring)."""
    tp = fp = fn = tn = 0
    for points, met, _ in examples:
        for p, m in ((p, m) for p, m in zip(points, met) if m is not None):
            want, got = p > 0, m is True
            tp += want and got
            fp += got and not want
            fn += want and not got
            tn += not want and not got
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else (0.0 if n else math.nan)
    return {"accuracy": (tp + tn) / n if n else math.nan, "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def pass_rate(scores: Sequence[float | None], threshold: float = 0.5) -> float:
    """The paper's per-example pass: share of examples with normalised score > threshold."""
    scores = [s for s in scores if s is not None]
    return sum(s > threshold for s in scores) / len(scores) if scores else math.nan


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test on paired outcomes (the same examples under two systems): two-sided binomial test of the
    discordant pairs, n01 = a failed & b passed, n10 = a passed & b failed, against p = 1/2."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    n01 = sum((not x) and y for x, y in zip(a, b))
    n10 = sum(x and (not y) for x, y in zip(a, b))
    n = n01 + n10
    k = min(n01, n10)
    # P(X <= k) for X ~ Binomial(n, 1/2), doubled (the distribution is symmetric), capped at 1
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)
    return {"n01": n01, "n10": n10, "p_value": p}


# ---- the paper's released evaluator: a keyword heuristic, not a grade ----
PAPER_WORDS = ("should", "recommend", "important", "seek", "care")


def paper_heuristic_credit(answer: str) -> float:
    """The credit the paper's evaluator gives each of an answer's first rubric items: half points (0.5) when the
    answer is over 100 characters and contains one of PAPER_WORDS (lowercased substring: "recommended", "healthcare"
    count), else 0."""
    text = answer or ""
    return 0.5 if len(text) > 100 and any(w in text.lower() for w in PAPER_WORDS) else 0.0


def paper_heuristic(answers: Sequence[str], n_criteria: Sequence[int], first: int = 5) -> dict:
    """The paper's table metric: each example's first `first` rubric items get paper_heuristic_credit(answer),
    binarised at 0.5 (credit ≥ 0.5 → predicted met), and are scored against an all-positive label (every item
    "should be met", pitfalls included). Over all those items: accuracy A = share predicted met, precision = 1
    (nothing is labelled negative), recall = A, hence F1 = 2A / (1 + A) in every case.

    How it departs from an LLM grade: it never reads the criterion (every item of an answer gets the same
    prediction), ignores items after the fifth, counts a pitfall as a behaviour to show, and rewards length and
    advice words — "You should seek care." padded past 100 characters scores A = 1 on any question.
    Returns {"accuracy", "precision", "recall", "f1", "items"}."""
    if len(answers) != len(n_criteria):
        raise ValueError(f"{len(answers)} answers but {len(n_criteria)} criterion counts")
    items = predicted = 0
    for answer, k in zip(answers, n_criteria):
        m = min(first, k)
        items += m
        predicted += m * (paper_heuristic_credit(answer) >= 0.5)
    if not items:
        return {"accuracy": math.nan, "precision": math.nan, "recall": math.nan, "f1": math.nan, "items": 0}
    tp, fn = predicted, items - predicted  # every label is positive: no fp, no tn
    precision = tp / tp if tp else math.nan
    recall = tp / items
    f1 = 2 * tp / (2 * tp + fn)  # = 2PR / (P + R) with P = 1; 0 when nothing is predicted
    return {"accuracy": tp / items, "precision": precision, "recall": recall, "f1": f1, "items": items}
