"""data.format: the SFT target parses back, malformed output never raises, messages carry the system prompt."""
from hypothesis import given, strategies as st

from data import Sample
from data.format import SYSTEM_PROMPT, TAGS, format_target, parse, to_messages
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
