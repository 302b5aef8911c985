"""grpo.eval_stats against hand-computed values and scipy."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import binomtest

from grpo.eval_stats import (PAPER_WORDS, bootstrap, clipped_mean, criterion_metrics, example_score, group_scores,
                             mcnemar, paper_heuristic, paper_heuristic_credit, pass_rate, tag_scores)


def test_example_score_by_hand():
    # 5 + 3 met of positives 5 + 3 + 2 = 10, pitfall −4 happened: (8 − 4) / 10
    assert example_score([5, 3, 2, -4], [True, True, False, True]) == pytest.approx(0.4)
    assert example_score([5, -4], [False, True]) == pytest.approx(-0.8)  # not clipped per example
    assert example_score([5, 5], [None, True]) == 1.0  # unknown: dropped from both sums
    assert example_score([5, -5], [True, None]) == 1.0 and example_score([5, -5], [None, True]) is None
    assert example_score([-1], [True]) is None
    with pytest.raises(ValueError):
        example_score([1, 2], [True])


def test_clipped_mean_and_pass_rate():
    assert clipped_mean([-0.8, 0.4]) == 0.0 and clipped_mean([1.0, 1.0]) == 1.0
    assert clipped_mean([0.2, 0.6, None]) == pytest.approx(0.4) and math.isnan(clipped_mean([]))
    assert pass_rate([0.5, 0.51, 0.9, -1.0]) == 0.5 and pass_rate([0.6, None]) == 1.0


def test_bootstrap_against_numpy_reference():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, size=200).tolist()
    b = bootstrap(values, n=2000, seed=1)
    assert b["value"] == pytest.approx(np.mean(values))
    assert b["std"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)), rel=0.1)  # std error of mean
    assert b["lo"] < b["value"] < b["hi"] and (b["hi"] - b["lo"]) == pytest.approx(2 * 1.96 * b["std"], rel=0.15)
    assert bootstrap(values, n=100, seed=3) == bootstrap(values, n=100, seed=3)
    nan_some = bootstrap([0.0, 1.0], lambda v: 1.0 if 1.0 in v else math.nan, n=200)  # nan resamples are dropped
    assert nan_some["lo"] == nan_some["hi"] == 1.0
    assert bootstrap([0.7] * 5)["std"] == pytest.approx(0.0, abs=1e-12) and math.isnan(bootstrap([])["value"])


def test_tag_and_group_scores_by_hand():
    ex = [([4, 2, -2], [True, False, True], [("axis:accuracy",), ("axis:completeness",), ("axis:accuracy",)]),
          ([6, 2], [False, True], [("axis:accuracy",), ("axis:completeness",)])]
    # accuracy: ex1 (4 − 2)/4 = 0.5, ex2 0/6 = 0 → 0.25; completeness: ex1 0/2, ex2 2/2 → 0.5
    assert tag_scores(ex, "axis:") == {"accuracy": 0.25, "completeness": 0.5}
    g = group_scores([0.2, 0.8, -0.5], [("heart:hf", "theme:a"), ("heart:hf",), ("heart:af",)], "heart:")
    assert g == {"af": {"n": 1, "score": 0.0}, "hf": {"n": 2, "score": pytest.approx(0.5)}}


def test_criterion_metrics_by_hand():
    ex = [([5, 3, -2], [True, False, True], [(), (), ()]), ([1, -1], [True, None], [(), ()])]
    m = criterion_metrics(ex)  # tp 2 (5, 1), fn 1 (3), fp 1 (−2 happened); −1 is unknown: not counted
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 0)
    assert m["accuracy"] == 0.5 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60))
def test_mcnemar_matches_scipy_exact(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    r = mcnemar(a, b)
    n = r["n01"] + r["n10"]
    expected = 1.0 if n == 0 else binomtest(r["n10"], n, 0.5).pvalue
    assert r["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_by_hand():
    # 1 pair a-only, 7 pairs b-only: p = 2 · (C(8,0) + C(8,1)) / 2^8 = 18/256
    a = [True] + [False] * 7 + [True] * 5
    b = [False] + [True] * 7 + [True] * 5
    assert mcnemar(a, b) == {"n01": 7, "n10": 1, "p_value": pytest.approx(18 / 256)}
    with pytest.raises(ValueError):
        mcnemar([True], [])


def test_healthbench_aggregate_by_hand():
    # three examples scored as simple-evals' calculate_score: Σ met points / Σ positive points, not clipped
    ex = [([10, 5, -5], [True, True, False]),   # (10 + 5) / 15 = 1
          ([4, 4, -8], [True, False, True]),    # (4 − 8) / 8 = −0.5
          ([6, 2], [False, True])]              # 2 / 8 = 0.25
    scores = [example_score(p, m) for p, m in ex]
    assert scores == [1.0, -0.5, 0.25]
    assert clipped_mean(scores) == pytest.approx(0.25)  # (1 − 0.5 + 0.25) / 3, inside [0, 1]
    assert clipped_mean([-0.5, -0.25]) == 0.0 and clipped_mean([1.0, 1.5]) == 1.0  # the mean is clipped, not items


def test_bootstrap_std_is_numpy_std_of_clipped_resample_means():
    # values {−1, 1}: a resample of 2 has mean −1, 0, 1 with probability 1/4, 1/2, 1/4; clipped: 0, 0, 1, so the
    # clipped means are Bernoulli(1/4) and their std is sqrt(1/4 · 3/4) = 0.4330 (their unclipped std would be 0.707)
    b = bootstrap([-1.0, 1.0], n=20000, seed=0)
    assert b["value"] == 0.0 and b["std"] == pytest.approx(math.sqrt(3) / 4, abs=0.01)
    # population std (ddof 0, np.std) of the resampled statistics: two resamples giving 0 and 1 → 0.5 (ddof 1: 0.707)
    calls = iter([0.0, 1.0, 0.5])
    assert bootstrap([0.3, 0.7], lambda v: next(calls), n=2)["std"] == pytest.approx(np.std([0.0, 1.0]))
    assert bootstrap([0.2, 0.9, 0.4], n=10)["value"] == pytest.approx(0.5)  # default stat: the clipped mean


def test_paper_heuristic_credit_by_hand():
    pad = "x" * 95
    assert paper_heuristic_credit(pad + " care") == 0.0  # exactly 100 characters: not over 100
    assert paper_heuristic_credit(pad + " care!") == 0.5  # 101
    assert paper_heuristic_credit(pad + " Recommended") == 0.5  # case-folded substring
    assert paper_heuristic_credit(pad + " healthcare") == 0.5  # "care" inside a word counts (substring match)
    assert paper_heuristic_credit("x" * 500) == 0.0 and paper_heuristic_credit(None) == 0.0
    assert paper_heuristic_credit("You should seek care.") == 0.0  # the words alone, too short
    assert set(PAPER_WORDS) == {"should", "recommend", "important", "seek", "care"}


def test_paper_heuristic_by_hand():
    long_yes = "It is important to rest. " * 5  # 125 characters with "important"
    long_no = "Take two tablets daily with water and food. " * 3  # 132 characters, none of the words
    # items: min(5, 7) + min(5, 3) + min(5, 5) = 13; predicted met: 5 (long_yes) + 0 (short) + 0 (long_no)
    h = paper_heuristic([long_yes, "You should see a doctor.", long_no], [7, 3, 5])
    assert h["items"] == 13 and h["accuracy"] == pytest.approx(5 / 13)
    assert h["precision"] == 1.0 and h["recall"] == pytest.approx(5 / 13)
    assert h["f1"] == pytest.approx(10 / 18)  # 2·tp / (2·tp + fn) = 10 / (10 + 8)
    assert paper_heuristic([long_yes], [2]) == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "items": 2}
    zero = paper_heuristic(["short"], [4])
    assert zero["accuracy"] == 0.0 and zero["f1"] == 0.0 and math.isnan(zero["precision"])
    assert math.isnan(paper_heuristic([], [])["accuracy"])
    with pytest.raises(ValueError):
        paper_heuristic(["a"], [])


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), min_size=1, max_size=30))
def test_paper_heuristic_f1_is_2a_over_1_plus_a(rows):
    answers = [("You should rest. " * 7) if yes else "rest" for yes, _ in rows]
    h = paper_heuristic(answers, [k for _, k in rows])
    if h["items"]:
        a = h["accuracy"]
        assert h["f1"] == pytest.approx(2 * a / (1 + a)) and h["recall"] == a


def test_paper_table_rows_reproduced():
    # the paper's (accuracy, F1) rows — Complexity, base, GPT-OSS-120B: an evaluation set whose heuristic accuracy
    # is the row's A (1000 one-item examples) gives the row's F1 to the printed digits
    for acc, f1 in ((0.502, 0.668), (0.362, 0.532), (0.508, 0.674)):
        hits = round(acc * 1000)
        h = paper_heuristic(["You should rest. " * 7] * hits + ["rest"] * (1000 - hits), [1] * 1000)
        assert h["accuracy"] == pytest.approx(acc) and round(h["f1"], 3) == f1
