"""grpo.eval_stats against hand-computed values and scipy."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import binomtest

from grpo.eval_stats import (bootstrap, clipped_mean, criterion_metrics, example_score, group_scores, mcnemar,
                             pass_rate, tag_scores)


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
