"""data.format: the SFT target parses back, malformed output never raises, messages carry the system prompt, and
--malformed wrong grades a malformed completion as the empty answer."""
import pytest
from hypothesis import given, strategies as st

from data import Sample
from data.format import SYSTEM_PROMPT, TAGS, format_target, graded_answer, parse, to_messages
from rewards import REWARDS
from rewards.judge import make_judge
from rewards.judge_base import grade_sync
from rewards.rubric import Criterion, Rubric


def test_target_roundtrip():
    p = parse(format_target("  BP 190/120 with headache  ", "Call emergency services."))
    assert p == (p.__class__("BP 190/120 with headache", "Call emergency services.", True))


@given(st.text(), st.text())
def test_target_roundtrip_any_text(reasoning, answer):
    tagless = all(t not in reasoning + answer for t in TAGS)
    p = parse(format_target(reasoning, answer))
    if tagless:
        assert (p.reasoning, p.solution) == (reasoning.strip(), answer.strip())
        assert p.well_formed == bool(answer.strip())


@given(st.lists(st.sampled_from(list(TAGS) + ["x", " ", "\n", "answer", "<", "SOLUTION>"]), max_size=12).map("".join)
       | st.text())
def test_parse_never_raises(text):
    p = parse(text)
    assert isinstance(p.reasoning, str) and isinstance(p.solution, str)
    assert all(t not in p.reasoning + p.solution for t in TAGS)
    if p.well_formed:
        assert all(text.count(t) == 1 for t in TAGS) and p.solution


def test_malformed_cases():
    assert parse("just an answer") == parse("just an answer").__class__("", "just an answer", False)
    unclosed = parse("<start_working_out>thinking<end_working_out><SOLUTION>see a doctor")
    assert (unclosed.reasoning, unclosed.solution, unclosed.well_formed) == ("thinking", "see a doctor", False)
    no_solution_tag = parse("<start_working_out>hmm<end_working_out> Take aspirin.")
    assert (no_solution_tag.reasoning, no_solution_tag.solution) == ("hmm", "Take aspirin.")
    only_end = parse("thoughts<end_working_out>answer")
    assert (only_end.reasoning, only_end.solution, only_end.well_formed) == ("thoughts", "answer", False)
    twice = parse("<start_working_out>a<end_working_out><SOLUTION>x</SOLUTION><SOLUTION>y</SOLUTION>")
    assert twice.solution == "y" and not twice.well_formed
    trailing = parse("<start_working_out>a<end_working_out><SOLUTION>x</SOLUTION> and more")
    assert trailing.solution == "x" and not trailing.well_formed
    assert parse("<start_working_out>a<end_working_out><SOLUTION> </SOLUTION>").well_formed is False
    assert parse(None) == parse("")


def test_to_messages():
    rub = Rubric([Criterion("x", 1.0)])
    s = Sample("1", [{"role": "user", "content": "q"}], rub)
    assert to_messages(s) == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "q"}]
    s2 = Sample("2", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}], rub)
    msgs = to_messages(s2)
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT + "\n\nBe brief."} and len(msgs) == 4
    assert s2.prompt[0]["role"] == "system"  # the sample is not modified
    assert all(t in SYSTEM_PROMPT for t in TAGS)


def test_graded_answer():
    good = parse(format_target("chest pain at rest", "Call emergency services."))
    bad = parse("Call emergency services. <SOLUTION>take aspirin")  # unclosed: malformed, best effort "take aspirin"
    assert graded_answer(good, "graded") == graded_answer(good, "wrong") == "Call emergency services."
    assert graded_answer(bad, "graded") == "take aspirin" and graded_answer(bad) == "take aspirin"  # default: graded
    assert graded_answer(bad, "wrong") == ""
    with pytest.raises(ValueError, match="graded | wrong"):
        graded_answer(good, "strict")


# two positive criteria (5 + 3 points) and one pitfall (-4); the keyword judge reads their keywords
RUBRIC = Rubric([Criterion("Advises calling emergency services immediately", 5.0),
                 Criterion("Recommends chewing aspirin", 3.0),
                 Criterion("Suggests waiting at home to see whether the pain passes", -4.0)])
MALFORMED = "emergency services immediately, chewing aspirin, waiting home pain passes"  # every keyword, no tags


@pytest.mark.parametrize("name, graded, wrong", [
    # graded: both positives met and the pitfall triggered: s = 8/8, ρ = 4/4 → max(0, 15 − 4.5) = 10.5, no bonus
    # wrong: nothing met, no pitfall: s = 0, ρ = 0 → 0, no bonus (a positive criterion is unmet)
    ("hybrid", 10.5, 0.0),
    # graded: (5 + 3 − 4) / 8 = 0.5; wrong: 0 / 8 = 0
    ("healthbench", 0.5, 0.0),
])
def test_malformed_completion_scores_as_the_empty_answer(name, graded, wrong):
    """Through the keyword judge and the reward registry: under `wrong` a malformed completion's reward is the
    empty answer's (hand-computed), whatever keywords it holds; under `graded` it is its best-effort answer's."""
    judge, parsed = make_judge("keyword"), parse(MALFORMED)
    assert not parsed.well_formed

    def reward(answer):
        return REWARDS[name](RUBRIC, grade_sync(judge, [("q", answer, RUBRIC)])[0])
    assert reward(graded_answer(parsed, "graded")) == pytest.approx(graded)
    assert reward(graded_answer(parsed, "wrong")) == reward("") == pytest.approx(wrong)
    # a well-formed completion with the same words is graded as it is under either setting
    ok = parse(format_target("", MALFORMED))
    assert reward(graded_answer(ok, "wrong")) == reward(graded_answer(ok, "graded")) == pytest.approx(graded)
