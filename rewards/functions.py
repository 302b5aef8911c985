"""Rubric reward functions: pure maps from (rubric, verdicts) to a float the GRPO loop learns from.

    python -c "from rewards import REWARDS, Rubric, Criterion; print(REWARDS['hybrid'](Rubric([Criterion('x', 5)]), [True]))"

Notation (every function): `met[i]` is the judge's verdict on criterion i — True / False / None (unknown); for a
negative-points criterion True means the pitfall *happened* (HealthBench convention). Unknown verdicts are dropped
from every sum, numerators and denominators alike; when no verdict is known the reward is None and the loop masks
the sample (a failed judge call must never read as a bad answer). Over the known criteria:

    P_max = Σ positive points          P_met = Σ points of met positive criteria
    N_max = Σ |negative points|        N_hit = Σ |points| of triggered pitfalls
    s = P_met / max(P_max, 1)          ρ = N_hit / max(N_max, 1)  (0 when N_max = 0)
    n = len(rubric)  (the rubric's size, a property of the question, so unknown verdicts do not change it)

Zero-point criteria count in none of the sums. Sums use math.fsum (correctly rounded), so every reward is exactly
invariant to the order of the criteria. Constants are keyword parameters whose defaults are the paper's.

Registry: `REWARDS` maps a name to fn(rubric, verdicts) (the judge's grade mode, one verdict per criterion);
`RATING_REWARDS` maps a name to fn(rating) (its rate mode, one 1–10 Likert number per response: rar_implicit).
`needs(name)` says which judge output a reward consumes and `score(...)` computes any of them, so the loop and the
config ask the registry instead of comparing names.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from rewards.rubric import Rubric

Verdicts = Sequence["bool | None"]

RAR_WEIGHTS = {"essential": 1.0, "important": 0.7, "optional": 0.3, "pitfall": 0.9}


def _known(rubric: Rubric, met: Verdicts) -> list:
    """[(criterion, verdict)] for the known verdicts; a length mismatch is a caller bug, so it raises."""
    if len(met) != len(rubric):
        raise ValueError(f"{len(met)} verdicts for a rubric of {len(rubric)} criteria")
    return [(c, bool(m)) for c, m in zip(rubric, met) if m is not None]


def _sums(known: list) -> tuple[float, float, float, float]:
    """(P_met, P_max, N_hit, N_max) over the known verdicts."""
    p_max = math.fsum(c.points for c, _ in known if c.points > 0)
    p_met = math.fsum(c.points for c, m in known if c.points > 0 and m)
    n_max = math.fsum(-c.points for c, _ in known if c.points < 0)
    n_hit = math.fsum(-c.points for c, m in known if c.points < 0 and m)
    return p_met, p_max, n_hit, n_max


def _s_rho(known: list) -> tuple[float, float]:
    p_met, p_max, n_hit, n_max = _sums(known)
    s = p_met / max(p_max, 1.0)
    rho = n_hit / max(n_max, 1.0) if n_max > 0 else 0.0
    return s, rho


def hybrid(rubric: Rubric, met: Verdicts, *, w_pos: float = 15.0, w_neg: float = 4.5, bonus: float = 5.0) -> float | None:
    """Hybrid: max(0, 15·s − 4.5·ρ) + 5·[every known positive criterion met and no known pitfall triggered].

    Range [0, 20]. The bonus separates a perfect answer from a nearly perfect one, which keeps a group of strong
    samples from collapsing to zero variance. A rubric whose known criteria are all pitfalls, none triggered,
    is perfect (vacuously) and gets the bonus.
    """
    known = _known(rubric, met)
    if not known:
        return None
    s, rho = _s_rho(known)
    perfect = all(m for c, m in known if c.points > 0) and not any(m for c, m in known if c.points < 0)
    return max(0.0, w_pos * s - w_neg * rho) + (bonus if perfect else 0.0)


def complexity(rubric: Rubric, met: Verdicts, *, scale: float = 20.0, w_neg: float = 0.5, power: float = 1.2,
               gain: float = 0.2, ref_n: int = 25, cap: float = 25.0) -> float | None:
    """Complexity-aware: clip(20 · max(0, s − 0.5·ρ)^1.2 · (1 + 0.2·ln(1+n)/ln(26)), 0, 25), n = len(rubric).

    The power > 1 spreads high scores apart; the log factor pays more for satisfying long rubrics (n = 25 gives
    ×1.2), since meeting 90% of 30 criteria is harder than 90% of 3.
    """
    known = _known(rubric, met)
    if not known:
        return None
    s, rho = _s_rho(known)
    core = max(0.0, s - w_neg * rho) ** power
    factor = 1.0 + gain * math.log1p(len(rubric)) / math.log1p(ref_n)
    return min(cap, max(0.0, scale * core * factor))


def rar_explicit(rubric: Rubric, met: Verdicts, *, weights: dict | None = None) -> float | None:
    """Rubrics as Rewards, explicit aggregation: Σ w_j·c_j / Σ w_j over known criteria, range [0, 1].

    w_j is the category weight (Essential 1.0, Important 0.7, Optional 0.3, Pitfall 0.9; from the `category:` tag),
    or |points| when the criterion has no category. c_j = 1 when a positive criterion is met or a pitfall is
    avoided, else 0; a criterion is a pitfall when its category is "pitfall" or it has negative points.
    None when no verdict is known or every known weight is 0.
    """
    weights = RAR_WEIGHTS if weights is None else weights
    known = _known(rubric, met)
    if not known:
        return None
    w, wc = [], []
    for c, m in known:
        cat = c.category
        wj = weights[cat] if cat in weights else abs(c.points)
        pitfall = cat == "pitfall" or c.points < 0
        w.append(wj)
        wc.append(wj if m != pitfall else 0.0)  # c_j = met xor pitfall
    total = math.fsum(w)
    return math.fsum(wc) / total if total > 0 else None


def rar_implicit(rating: float | None, *, low: float = 1.0, high: float = 10.0) -> float | None:
    """Rubrics as Rewards, implicit aggregation: the judge rates the whole response against the rubric on a 1–10
    Likert scale; reward (rating − 1)/9 in [0, 1]. None for a missing, non-finite or out-of-range rating (the
    rating is model output: a bad one is unknown, not a crash)."""
    if rating is None or isinstance(rating, bool) or not isinstance(rating, (int, float)):
        return None
    if not math.isfinite(rating) or not low <= rating <= high:
        return None
    return (rating - low) / (high - low)


def healthbench(rubric: Rubric, met: Verdicts) -> float | None:
    """HealthBench per-example score: Σ points of met criteria (pitfalls subtract) / P_max. Not clipped, so it may be
    negative; ≤ 1. None when no positive criterion has a known verdict (P_max = 0), as in simple-evals."""
    known = _known(rubric, met)
    p_max = math.fsum(c.points for c, _ in known if c.points > 0)
    if p_max <= 0:
        return None
    return math.fsum(c.points for c, m in known if m) / p_max


REWARDS: dict[str, Callable[[Rubric, Verdicts], "float | None"]] = {
    "hybrid": hybrid,
    "complexity": complexity,
    "rar_explicit": rar_explicit,
    "healthbench": healthbench,
}

RATING_REWARDS: dict[str, Callable[[float | None], "float | None"]] = {
    "rar_implicit": rar_implicit,
}


def known_rewards() -> list[str]:
    """Every reward the trainer can use, verdict-based then rating-based."""
    return sorted(REWARDS) + sorted(RATING_REWARDS)


def needs(name: str) -> str:
    """The judge output reward `name` consumes: "verdicts" (judge.grade) or "rating" (judge.rate)."""
    if name in RATING_REWARDS:
        return "rating"
    if name in REWARDS:
        return "verdicts"
    raise ValueError(f"reward {name!r} unknown; choose from {known_rewards()}")


def score(name: str, rubric: Rubric, verdicts: Verdicts | None, rating: float | None) -> float | None:
    """Reward `name` of one response from the judge output it consumes (the other may be None)."""
    # looked up at call time, so a test that swaps REWARDS[name] is heard
    return RATING_REWARDS[name](rating) if needs(name) == "rating" else REWARDS[name](rubric, verdicts)
