"""Judges: the keyword toy grader, grade_sync/make_judge, and the OpenAI judge driven through a loopback server.

    python -m pytest tests/test_judge.py
"""
import asyncio

import pytest

from rewards import Criterion, Rubric
from rewards.judge import KeywordJudge, grade_sync, keyword_verdict, keywords, make_judge

Q = [{"role": "user", "content": "I have crushing chest pain. What should I do?"}]


# ---- keyword judge: hand-computed tables ----
@pytest.mark.parametrize("criterion,want", [
    ("Advises calling emergency services immediately", ("calling", "emergency", "services", "immediately")),
    ("Mentions possible heart attack", ("possible", "heart", "attack")),
    ("Mentions stress test or ECG", ("stress", "test")),                  # "ECG" has 3 letters
    ("States that the response should explain it", ()),                  # only stopwords and rubric verbs
    ("Heart, HEART and heart's rhythm", ("heart", "rhythm")),            # lowercased, deduplicated, "'s" split off
    ("Mentions 12-lead ECGs at 100/min", ("lead", "ecgs")),               # digits split words
    ("Erwähnt Brustschmerzen", ("erwähnt", "brustschmerzen")),            # letters of any script
])
def test_keywords(criterion, want):
    assert keywords(criterion) == want


@pytest.mark.parametrize("criterion,completion,want", [
    # 4 keywords: need ceil(4/2) = 2
    ("Advises calling emergency services immediately", "Call EMERGENCY services now.", True),
    ("Advises calling emergency services immediately", "This is an emergency.", False),
    # 3 keywords: need 2
    ("Mentions possible heart attack", "It could be a heart attack.", True),
    ("Mentions possible heart attack", "Your heart is fine.", False),
    ("Mentions possible heart attack", "heartattack possibly", False),   # whole words only
    ("Mentions possible heart attack", "Heart-attack!", True),            # punctuation is a boundary
    # 1 keyword: need 1
    ("Mentions aspirin", "Take aspirin.", True),
    ("Mentions aspirin", "Take aspirins.", False),
    # no keywords: unknown
    ("States the answer", "anything", None),
])
def test_keyword_verdict(criterion, completion, want):
    assert keyword_verdict(criterion, completion) is want


def test_keyword_judge_pitfalls_same_rule_and_stats():
    rubric = Rubric([Criterion("Mentions possible heart attack", 5), Criterion("Suggests waiting for pain to pass", -8),
                     Criterion("Explains it", 1)])
    judge = KeywordJudge()
    got = grade_sync(judge, [(Q, "Probably a heart attack; do not wait for the pain to pass.", rubric)] * 3)
    # pitfall keywords (waiting, pain, pass): "pain" and "pass" occur ⇒ 2 ≥ ceil(3/2) ⇒ the pitfall "happened"
    assert got == [[True, True, None]] * 3
    s = judge.stats()
    assert s["judge/calls"] == 1 and s["judge/duplicates"] == 2       # identical items graded once
    assert s["judge/criteria"] == 3 and s["judge/unknown"] == 1
    assert all(k.startswith("judge/") for k in s)


def test_grade_sync_reuses_one_loop_and_works_inside_a_running_loop():
    judge = KeywordJudge()
    rubric = Rubric([Criterion("Mentions aspirin", 1)])
    assert grade_sync(judge, [(Q, "aspirin", rubric)]) == [[True]]
    assert grade_sync(judge, [(Q, "nothing", rubric)]) == [[False]]

    async def inside():  # e.g. a notebook: grade_sync must not try to re-enter the running loop
        return grade_sync(judge, [(Q, "aspirin", rubric)])
    assert asyncio.run(inside()) == [[True]]


def test_make_judge_errors():
    assert isinstance(make_judge("keyword"), KeywordJudge)
    with pytest.raises(ValueError, match="unknown judge 'gpt'.*keyword"):
        make_judge("gpt")
    with pytest.raises(ValueError, match="no options"):
        make_judge("keyword", model="x")


def test_keyword_judge_on_bundled_demo():
    from data import bundled_demo_path, load_samples
    sample = load_samples(bundled_demo_path())[0]
    ideal = "Call emergency services now: this may be a heart attack. Chew an aspirin while waiting; don't drive yourself to hospital."
    met = grade_sync(make_judge("keyword"), [(sample.prompt, ideal, sample.rubric)])[0]
    want = [keyword_verdict(c.text, ideal) for c in sample.rubric]
    assert met == want and any(met) and not all(v is True for v in met)
