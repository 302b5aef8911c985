"""Rewards on real HealthBench / RaR-Medicine records, rubric converters, and the variance report (so it cannot rot).

    python -m pytest tests/test_rewards.py
"""
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import REWARDS, Criterion, Rubric, from_healthbench, from_rar

ROOT = Path(__file__).resolve().parents[1]
WEIGHT = {"Essential": 1.0, "Important": 0.7, "Optional": 0.3, "Pitfall": 0.9}


def records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_healthbench_score_equals_simple_evals_formula(shared_data):
    rng = random.Random(0)
    recs = records(shared_data / "healthbench_hard_sample.jsonl")
    assert len(recs) > 100
    for rec in recs:
        met = [rng.random() < 0.5 for _ in rec["rubrics"]]
        # simple-evals calculate_score: achieved = Σ points of met items; total = Σ positive points
        achieved = sum(item["points"] for item, m in zip(rec["rubrics"], met) if m)
        total = sum(item["points"] for item in rec["rubrics"] if item["points"] > 0)
        got = REWARDS["healthbench"](from_healthbench(rec["rubrics"]), met)
        assert math.isclose(got, achieved / total, rel_tol=1e-12, abs_tol=1e-15)


def test_all_rewards_defined_and_in_range_on_real_rubrics(shared_data):
    rng = random.Random(1)
    rubrics = [from_healthbench(r["rubrics"]) for r in records(shared_data / "healthbench_hard_sample.jsonl")]
    rubrics += [from_rar(r["rubric"], r.get("rubric_list")) for r in records(shared_data / "rar_medicine_sample.jsonl")]
    for rubric in rubrics:
        met = [rng.choice([True, False, None]) for _ in rubric]
        for name, fn in REWARDS.items():
            r = fn(rubric, met)
            assert r is None or math.isfinite(r)
        perfect = [c.points > 0 for c in rubric]  # every positive met, every pitfall avoided
        assert REWARDS["hybrid"](rubric, perfect) == 20.0
        assert REWARDS["rar_explicit"](rubric, perfect) == 1.0
        worst = [c.points < 0 for c in rubric]
        assert REWARDS["hybrid"](rubric, worst) == 0.0 and REWARDS["rar_explicit"](rubric, worst) == 0.0


def test_rar_explicit_on_real_records_uses_listed_categories(shared_data):
    rng = random.Random(2)
    for rec in records(shared_data / "rar_medicine_sample.jsonl"):
        met = [rng.random() < 0.5 for _ in rec["rubric"]]
        # independent: category from the "<Category> Criteria:" prefix, c = met for positives, not met for pitfalls
        num = den = 0.0
        for listed, m in zip(rec["rubric_list"], met):
            cat = listed.split(" Criteria:")[0].strip()
            w = WEIGHT[cat]
            den += w
            num += w * ((not m) if cat == "Pitfall" else m)
        got = REWARDS["rar_explicit"](from_rar(rec["rubric"], rec["rubric_list"]), met)
        assert math.isclose(got, num / den, rel_tol=1e-12)


def test_converters_reject_malformed_items_by_index():
    with pytest.raises(ValueError, match="rubric item 1"):
        from_healthbench([{"criterion": "ok", "points": 3}, {"criterion": "bad", "points": "many"}])
    with pytest.raises(ValueError, match="rubric item 0"):
        from_rar([{"title": "no description", "weight": 5}])
    r = from_rar([{"description": "Avoids X", "title": "Pitfall Criteria: X", "weight": -2}])
    assert r.criteria[0] == Criterion("Avoids X", -2.0, ("category:pitfall",))


def test_rewards_registry_signature():
    rubric = Rubric([Criterion("a", 3), Criterion("b", -1)])
    assert set(REWARDS) >= {"hybrid", "complexity", "rar_explicit", "healthbench"}
    for fn in REWARDS.values():
        assert fn(rubric, [None, None]) is None
        assert isinstance(fn(rubric, [True, False]), float)


def test_reward_variance_bench_runs(tmp_path):
    png = tmp_path / "variance.png"
    demo = ROOT / "data" / "samples" / "heart_demo.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_variance.py"), "--data", str(demo),
                          "--max-rubrics", "12", "--groups", "2", "--G", "4", "--pass-rates", "0.2,0.9,1.0",
                          "--png", str(png)], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "zero-var" in out.stdout and png.stat().st_size > 1000
    assert result["rubrics"] == 12 and set(result["overall"]) >= set(REWARDS)
    overall = result["overall"]
    assert overall["healthbench"]["spearman_hb"] == pytest.approx(1.0)
    # the Likert judge is a function of the HealthBench score: whenever HB has no spread, neither has it
    for by_rate in result["frac_zero_std_by_pass_rate"].values():
        assert by_rate["rar_implicit*"] >= by_rate["healthbench"]
        assert all(0.0 <= v <= 1.0 for v in by_rate.values())
    # pass rate 1.0 ⇒ no pitfall ever triggered: every sample is perfect on what is known, no group has spread
    assert set(result["frac_zero_std_by_pass_rate"]["1.0"].values()) == {1.0}


def test_registry_says_what_judge_output_each_reward_consumes():
    from rewards import RATING_REWARDS, needs, known_rewards, score
    assert {n: needs(n) for n in known_rewards()} == {"complexity": "verdicts", "healthbench": "verdicts",
                                                     "hybrid": "verdicts", "rar_explicit": "verdicts",
                                                     "rar_implicit": "rating"}
    assert set(RATING_REWARDS).isdisjoint(REWARDS)
    rubric = Rubric([Criterion("a", 5), Criterion("b", 3), Criterion("harm", -2)])
    assert score("healthbench", rubric, [True, False, False], None) == 5 / 8  # verdicts read, rating ignored
    assert score("rar_implicit", rubric, None, 7) == 6 / 9                   # rating read, verdicts ignored
    with pytest.raises(ValueError, match="reward 'nope' unknown"):
        needs("nope")
