"""Reward functions: hypothesis invariants, agreement with a slow exact reference, hand-computed tables.

    python -m pytest tests/test_reward_invariants.py                      # derandomized `ci` profile
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_reward_invariants.py
"""
import math
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rewards import REWARDS, Criterion, Rubric, rar_category, rar_implicit
from rewards.functions import complexity, hybrid

RANGES = {"hybrid": (0.0, 20.0), "complexity": (0.0, 25.0), "rar_explicit": (0.0, 1.0)}

# ---- strategies: 1–30 criteria, mixed / all-positive / all-negative, integer, fractional and zero points,
# duplicated texts and duplicated criteria, optional RaR category tags; verdicts with unknowns ----
int_points = st.integers(-10, 10).map(float)
frac_points = st.sampled_from([0.0, 0.25, 0.5, -0.5, 1.5, -2.75, 0.1, -0.3, 3.3])
any_points = st.one_of(int_points, frac_points, st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 3)))


@st.composite
def rubrics(draw, min_size=1, max_size=30):
    sign = draw(st.sampled_from(["mixed", "positive", "negative"]))
    n = draw(st.integers(min_size, max_size))
    crits = []
    for _ in range(n):
        p = draw(any_points)
        p = abs(p) if sign == "positive" else -abs(p) if sign == "negative" else p
        text = draw(st.sampled_from(["Mentions aspirin", "Advises rest", "Recommends ECG", "x"]))  # duplicates
        tags = (f"category:{rar_category(p)}",) if draw(st.booleans()) else ()
        crits.append(Criterion(text, p, tags))
        if draw(st.integers(0, 9)) == 0:
            crits.append(crits[-1])  # an exact duplicate criterion
    return Rubric(crits[:max_size])


@st.composite
def graded(draw, verdict=st.sampled_from([True, False, None])):
    rubric = draw(rubrics())
    return rubric, draw(st.lists(verdict, min_size=len(rubric), max_size=len(rubric)))


# ---- the slow reference: exact rationals, one explicit loop, written from the formulas ----
def reference(name, rubric, met):
    p_max = p_met = n_max = n_hit = Fraction(0)
    known = 0
    perfect = True
    w_sum = wc_sum = Fraction(0)
    hb_num = Fraction(0)
    for crit, verdict in zip(rubric.criteria, met):
        if verdict is None:
            continue
        known += 1
        pts = Fraction(crit.points)
        if pts > 0:
            p_max += pts
            if verdict:
                p_met += pts
            else:
                perfect = False
        elif pts < 0:
            n_max += -pts
            if verdict:
                n_hit += -pts
                perfect = False
        if verdict:
            hb_num += pts
        cat = None
        for tag in crit.tags:
            if tag.startswith("category:"):
                cat = tag[len("category:"):]
        w = {"essential": Fraction(1), "important": Fraction(7, 10), "optional": Fraction(3, 10),
             "pitfall": Fraction(9, 10)}.get(cat, abs(pts))
        is_pitfall = cat == "pitfall" or pts < 0
        satisfied = (not verdict) if is_pitfall else verdict
        w_sum += w
        if satisfied:
            wc_sum += w
    if known == 0:
        return None
    s = p_met / (p_max if p_max > 1 else 1)
    rho = n_hit / (n_max if n_max > 1 else 1) if n_max > 0 else Fraction(0)
    if name == "hybrid":
        base = 15 * s - Fraction(9, 2) * rho
        return float((base if base > 0 else 0) + (5 if perfect else 0))
    if name == "complexity":
        core = s - rho / 2
        if core <= 0:
            return 0.0
        value = 20 * float(core) ** 1.2 * (1 + 0.2 * math.log(1 + len(rubric.criteria)) / math.log(26))
        return min(value, 25.0)
    if name == "rar_explicit":
        return float(wc_sum / w_sum) if w_sum > 0 else None
    if name == "healthbench":
        return float(hb_num / p_max) if p_max > 0 else None
    raise KeyError(name)


def close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12))


@pytest.mark.parametrize("name", sorted(REWARDS))
@given(case=graded())
def test_matches_slow_reference(name, case):
    rubric, met = case
    assert close(REWARDS[name](rubric, met), reference(name, rubric, met))


@given(case=graded())
def test_range_and_finiteness(case):
    rubric, met = case
    for name, fn in REWARDS.items():
        r = fn(rubric, met)
        assert r is None or (isinstance(r, float) and math.isfinite(r)), (name, r)
        if r is not None and name in RANGES:
            lo, hi = RANGES[name]
            assert lo <= r <= hi, (name, r)
    hb = REWARDS["healthbench"](rubric, met)
    assert hb is None or hb <= 1.0 + 1e-12


@given(case=graded())
def test_none_exactly_when_nothing_known(case):
    rubric, met = case
    known = [(c, m) for c, m in zip(rubric, met) if m is not None]
    assert (hybrid(rubric, met) is None) == (not known)
    assert (complexity(rubric, met) is None) == (not known)
    # rar_explicit also needs some weight, healthbench some positive points, among the known criteria
    weighted = [c for c, _ in known if c.category or c.points != 0]
    assert (REWARDS["rar_explicit"](rubric, met) is None) == (not weighted)
    assert (REWARDS["healthbench"](rubric, met) is None) == (not any(c.points > 0 for c, _ in known))


def _flip(met, i, value):
    out = list(met)
    out[i] = value
    return out


@given(case=graded(), data=st.data())
def test_monotone_in_met_positives_and_triggered_pitfalls(case, data):
    rubric, met = case
    pos = [i for i, c in enumerate(rubric) if c.points > 0 and met[i] is not True]
    neg = [i for i, c in enumerate(rubric) if c.points < 0 and met[i] is not True]
    assume(pos or neg)
    for name, fn in REWARDS.items():
        before = fn(rubric, met)
        if pos:  # meeting one more positive criterion (from unmet or unknown) never lowers the reward
            i = data.draw(st.sampled_from(pos))
            after = fn(rubric, _flip(met, i, True))
            if before is not None:
                assert after is not None and after >= before - 1e-12, (name, before, after)
        if neg:  # triggering one more pitfall never raises it
            i = data.draw(st.sampled_from(neg))
            after = fn(rubric, _flip(met, i, True))
            if before is not None and after is not None:
                assert after <= before + 1e-12, (name, before, after)


@given(case=graded(), perm=st.randoms(use_true_random=False))
def test_permutation_invariant(case, perm):
    rubric, met = case
    order = list(range(len(rubric)))
    perm.shuffle(order)
    shuffled = Rubric([rubric.criteria[i] for i in order])
    for name, fn in REWARDS.items():
        assert fn(rubric, met) == fn(shuffled, [met[i] for i in order]), name  # fsum: exactly equal


@given(case=graded())
def test_hybrid_bonus_exactly_for_perfect(case):
    rubric, met = case
    known = [(c, m) for c, m in zip(rubric, met) if m is not None]
    assume(known)
    perfect = all(m for c, m in known if c.points > 0) and not any(m for c, m in known if c.points < 0)
    assert hybrid(rubric, met) - hybrid(rubric, met, bonus=0.0) == (5.0 if perfect else 0.0)


@given(case=graded(), extra=st.integers(1, 20))
def test_complexity_grows_with_n_at_fixed_s_rho(case, extra):
    rubric, met = case
    base = complexity(rubric, met)
    assume(base is not None)
    # unknown-verdict criteria raise n and leave s and ρ alone
    bigger = Rubric(rubric.criteria + [Criterion("padding", 3.0)] * extra)
    grown = complexity(bigger, list(met) + [None] * extra)
    assert grown >= base
    if 0 < base < 25.0:
        assert grown > base


# ---- hand-computed tables ----
HB = Rubric([Criterion("a", 7), Criterion("b", 5), Criterion("c", 10), Criterion("d", -6)])
F5 = 1 + 0.2 * math.log(5) / math.log(26)  # complexity factor for n = 4
T, F, U = True, False, None

HAND = [  # rubric, met, hybrid, complexity, rar_explicit, healthbench
    # HealthBench's own example: (7 + 10 − 6) / 22; s = 17/22, ρ = 6/6
    (HB, [T, F, T, T], 15 * 17 / 22 - 4.5, 20 * (17 / 22 - 0.5) ** 1.2 * F5, 17 / 28, 11 / 22),
    (HB, [T, T, T, F], 15 + 5, 20 * F5, 1.0, 1.0),                 # perfect
    (HB, [F, F, F, T], 0.0, 0.0, 0.0, -6 / 22),                    # only the pitfall: clipped at 0, HB negative
    (HB, [U, T, U, F], 20.0, 20 * F5, 1.0, 1.0),                   # unknowns dropped: perfect on what is known
    (HB, [U, U, U, U], None, None, None, None),
    (HB, [U, U, U, T], 0.0, 0.0, 0.0, None),                       # no positive known: HB undefined
    # fractional points: s = 0.5 / max(0.5, 1) = 0.5, yet perfect ⇒ bonus
    (Rubric([Criterion("a", 0.5)]), [T], 7.5 + 5, 20 * 0.5 ** 1.2 * (1 + 0.2 * math.log(2) / math.log(26)), 1.0, 1.0),
    # all-negative rubric: nothing to earn; avoiding every pitfall is perfect
    (Rubric([Criterion("a", -5), Criterion("b", -3)]), [F, F], 5.0, 0.0, 1.0, None),
    (Rubric([Criterion("a", -5), Criterion("b", -3)]), [T, F], 0.0, 0.0, 3 / 8, None),
]


@pytest.mark.parametrize("rubric,met,hyb,cx,rar,hb", HAND)
def test_hand_table(rubric, met, hyb, cx, rar, hb):
    got = [REWARDS[k](rubric, met) for k in ("hybrid", "complexity", "rar_explicit", "healthbench")]
    for g, want in zip(got, [hyb, cx, rar, hb]):
        assert close(g, want), (got, [hyb, cx, rar, hb])


def test_rar_explicit_category_weights():
    rubric = Rubric([Criterion("e", 5, ("category:essential",)), Criterion("i", 3, ("category:important",)),
                     Criterion("o", 1, ("category:optional",)), Criterion("p", -2, ("category:pitfall",))])
    assert math.isclose(REWARDS["rar_explicit"](rubric, [T, F, T, T]), (1.0 + 0.3) / 2.9)       # pitfall hit
    assert math.isclose(REWARDS["rar_explicit"](rubric, [T, F, T, F]), (1.0 + 0.3 + 0.9) / 2.9)  # pitfall avoided


def test_complexity_hand_values():
    r25 = Rubric([Criterion(str(i), 1) for i in range(25)])
    assert math.isclose(complexity(r25, [T] * 25), 20 * 1.2)       # n = 25 ⇒ factor exactly 1.2
    assert math.isclose(complexity(r25, [T] * 20 + [F] * 5), 20 * 0.8 ** 1.2 * 1.2)
    r100 = Rubric([Criterion(str(i), 1) for i in range(100)])
    assert complexity(r100, [T] * 100) == 25.0                   # 20 · 1.28 clipped to 25


@pytest.mark.parametrize("rating,want", [(1, 0.0), (10, 1.0), (5.5, 0.5), (7, 6 / 9), (None, None), (0, None),
                                         (11, None), (float("nan"), None), (float("inf"), None), (True, None),
                                         ("7", None)])
def test_rar_implicit_table(rating, want):
    assert close(rar_implicit(rating), want)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="3 verdicts for a rubric of 4"):
        hybrid(HB, [T, T, T])
