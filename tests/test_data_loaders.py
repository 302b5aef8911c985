"""data.loaders: real HealthBench / RaR-Medicine records, the bundled demo, the heart JSONL shape, malformed input."""
import json
import re

import pytest
from hypothesis import given, strategies as st

from data import bundled_demo_path, from_record, iter_samples, load_samples, write_samples

HB = "healthbench_hard_sample.jsonl"
RAR = "rar_medicine_sample.jsonl"


def _raw(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_healthbench_real_records(shared_data):
    raw = _raw(shared_data / HB)
    samples = load_samples(shared_data / HB)
    assert len(samples) == 120 and [s.id for s in samples] == [r["prompt_id"] for r in raw]
    assert sum(len(s.rubric) for s in samples) == 1430  # the data README's count
    for s, r in zip(samples, raw):
        assert s.prompt == r["prompt"] and s.prompt[-1]["role"] == "user"
        assert [c.points for c in s.rubric] == [float(x["points"]) for x in r["rubrics"]]
        assert [c.tags for c in s.rubric] == [tuple(x["tags"]) for x in r["rubrics"]]
        assert set(r["example_tags"]) <= set(s.tags)
        ideal = r["ideal_completions_data"]
        assert s.reference == (ideal["ideal_completion"] if ideal else None)
    assert sum(s.reference is None for s in samples) == 9  # README: null in 9 of the 120 Hard records


def test_rar_real_records_categories(shared_data):
    samples = load_samples(shared_data / RAR)
    assert len(samples) == 99 and len({s.id for s in samples}) == 99
    cats = {}
    for s in samples:
        for c in s.rubric:
            cats[c.category] = cats.get(c.category, 0) + 1
    # the data README: 944 items, 335 Important, 261 Optional, 206 Essential, 142 Pitfall
    assert cats == {"important": 335, "optional": 261, "essential": 206, "pitfall": 142}
    assert all(c.points < 0 for s in samples for c in s.rubric if c.category == "pitfall")
    assert all(s.reference and s.prompt[0]["role"] == "user" for s in samples)
    assert all(t.startswith(("source:", "heart:")) for s in samples for t in s.tags)


def test_roundtrip_through_healthbench_shape(shared_data, tmp_path):
    samples = load_samples(shared_data / RAR) + load_samples(shared_data / HB)
    write_samples(tmp_path / "all.jsonl", samples)
    assert load_samples(tmp_path / "all.jsonl") == samples


def test_bundled_demo():
    path = bundled_demo_path()
    assert path.name == "heart_demo.jsonl" and path.is_file()
    samples = load_samples(path)
    assert 36 <= len(samples) <= 48
    stop = {"with", "from", "that", "this", "your", "when", "what", "have", "been", "does", "into", "over", "than",
            "only", "more", "most", "some", "such", "very", "will", "would", "could", "should", "about", "after",
            "before", "then", "they", "them", "their", "while", "which", "also", "just"}
    verbs = {"advises", "mentions", "suggests", "recommends", "explains", "asks", "says", "claims", "tells",
             "promises", "dismisses", "warns", "assumes"}
    for s in samples:
        assert len(s.prompt) == 1 and s.prompt[0]["role"] == "user"
        assert len(s.prompt[0]["content"].split()) <= 40
        assert 4 <= len(s.rubric) <= 8
        assert sum(c.points < 0 for c in s.rubric) == 1, s.id  # one pitfall per question
        assert all(1 <= c.points <= 10 for c in s.rubric if c.points > 0)
        assert any(t.startswith("theme:") for t in s.tags) and any(t.startswith("heart:") for t in s.tags)
        assert s.reference and len(s.reference.split()) <= 60
        for c in s.rubric:  # short criteria of concrete words, so a keyword judge can learn them
            words = [w for w in re.findall(r"[a-z]+", c.text.lower()) if len(w) >= 4 and w not in stop | verbs]
            assert 1 <= len(words) <= 4, c.text


def test_heart_jsonl_shape(tmp_path):
    rec = {"question": "What dose of apixaban after AF ablation?", "reference_answer": "5 mg twice daily.",
           "rubric": [{"description": "States 5 mg twice daily", "title": "Dose", "weight": 5},
                      {"description": "Claims no anticoagulation needed", "title": "Pitfall", "weight": -2}],
           "rubric_list": ["Essential Criteria: States 5 mg twice daily", "Pitfall Criteria: Claims no anticoagulation"],
           "heart_related": True, "heart_theme": "Cardiac Medications", "heart_keywords": ["apixaban"],
           "synthetic_reasoning": "Apixaban is a DOAC."}
    s = from_record(rec)
    assert s.tags == ("heart:cardiac_medications",) and s.reasoning == "Apixaban is a DOAC."
    assert [c.category for c in s.rubric] == ["essential", "pitfall"] and s.reference == "5 mg twice daily."
    assert s.id == from_record(dict(rec)).id  # the id of an id-less row is a stable hash of its question


def _write(tmp_path, lines):
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = json.dumps({"prompt_id": "a", "prompt": [{"role": "user", "content": "hi"}],
                   "rubrics": [{"criterion": "says hello", "points": 1, "tags": []}], "example_tags": []})


@pytest.mark.parametrize("bad, why", [
    ("{not json", "invalid JSON"),
    (json.dumps({"prompt_id": "b", "prompt": [{"role": "user", "content": "x"}]}), "unknown format"),
    (json.dumps({"prompt_id": "b", "prompt": [{"role": "robot", "content": "x"}], "rubrics": [
        {"criterion": "c", "points": 1}]}), "prompt[0]"),
    (json.dumps({"prompt_id": "b", "prompt": [{"role": "user", "content": "x"}], "rubrics": []}), "empty rubric"),
    (json.dumps({"prompt_id": "b", "prompt": [{"role": "user", "content": "x"}], "rubrics": [
        {"criterion": "c", "points": "ten"}]}), "points"),
    (json.dumps({"prompt_id": "b", "prompt": [{"role": "assistant", "content": "x"}], "rubrics": [
        {"criterion": "c", "points": 1}]}), "user turn"),
    (json.dumps({"question": "", "rubric": []}), "question"),
    ("[1, 2]", "JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, why):
    path = _write(tmp_path, [GOOD, bad, GOOD.replace('"a"', '"c"')])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: .*{re.escape(why)}"):
        load_samples(path)
    errors = []
    assert [s.id for s in load_samples(path, skip_bad=True, errors=errors)] == ["a", "c"]
    assert len(errors) == 1 and f"{path}:2" in errors[0]


def test_duplicate_ids_and_missing_file(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(ValueError, match="duplicate sample id 'a'"):
        load_samples(path)
    assert len(load_samples(path, skip_bad=True)) == 1
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_samples(tmp_path / "missing.jsonl")


def test_parquet_without_pyarrow_says_how_to_fix(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow installed")
    except ImportError:
        pass
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_samples(tmp_path / "x.parquet")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                               st.sampled_from(["prompt_id", "prompt", "rubrics", "role", "content", "criterion",
                                                "points", "question", "rubric", "description", "weight", "tags"]),
                               kids, max_size=5), max_leaves=12)


@given(json_values)
def test_untrusted_records_give_a_sample_or_a_valueerror(value):
    """Any JSON value: a Sample or a ValueError naming the record — never another exception."""
    try:
        from_record(value, "f.jsonl:7")
    except ValueError as e:
        assert str(e).startswith("f.jsonl:7")


def test_iter_samples_streams(tmp_path):
    path = _write(tmp_path, [GOOD, "{broken"])
    it = iter_samples(path)
    assert next(it).id == "a"  # the first record arrives before the bad line is read
    with pytest.raises(ValueError):
        next(it)


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no samples \(the file is empty\)"):
        load_samples(empty)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    """Bytes that are not UTF-8 are an error at their line, not silently replaced by U+FFFD."""
    good = json.dumps({"prompt_id": "a", "prompt": "Chest pain?", "rubrics": [{"criterion": "Aspirin", "points": 5}]})
    bad = good.replace("Chest pain?", "Chest pain\\u00e9?").encode().replace(b"\\u00e9", b"\xe9")  # latin-1 é
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good.encode() + b"\n" + bad + b"\n")
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8 \(byte 0xe9"):
        load_samples(path)
    errors = []
    assert [s.id for s in load_samples(path, skip_bad=True, errors=errors)] == ["a"] and len(errors) == 1
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n")  # a UTF-8 byte-order mark is fine
    assert load_samples(bom)[0].id == "a"


def test_rubric_with_only_zero_points_is_rejected_and_counted(tmp_path):
    rec = lambda i, pts: json.dumps({"prompt_id": f"p{i}", "prompt": "Chest pain?",
                                     "rubrics": [{"criterion": "Aspirin", "points": p} for p in pts]})
    path = tmp_path / "zero.jsonl"
    path.write_text("\n".join([rec(1, [0, 0]), rec(2, [5, 0]), rec(3, [0])]) + "\n")
    with pytest.raises(ValueError, match=r"zero\.jsonl:1: every rubric criterion has 0 points"):
        load_samples(path)
    errors = []
    assert [s.id for s in load_samples(path, skip_bad=True, errors=errors)] == ["p2"] and len(errors) == 2
    only_zero = tmp_path / "only_zero.jsonl"
    only_zero.write_text(rec(1, [0]) + "\n")
    with pytest.raises(ValueError, match=r"no samples \(1 bad lines skipped, first: .*0 points"):
        load_samples(only_zero, skip_bad=True)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from grpo.model import build_tiny
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(build_tiny())


def test_clip_messages_keeps_the_last_tokens_like_the_policy(tiny_tokenizer):
    from data.loaders import clip_messages
    tok = tiny_tokenizer
    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Chest pain at rest?"}]
    assert clip_messages(short, tok, 1000) == short  # under budget: unchanged (the judge cache keys stay the same)
    long = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "pain " * 5000 + "What now?"}]
    clipped = clip_messages(long, tok, 50)
    assert [m["role"] for m in clipped] == ["user"]  # the oldest turn goes first, as the policy's left-truncation
    text = clipped[0]["content"]
    assert text.startswith("…") and text.endswith("What now?") and n_tokens(text[1:]) <= 51
    last = n_tokens(short[1]["content"])
    two = clip_messages(short, tok, last + 2)  # the user turn whole, the start of the system turn cut
    cut = two[0]["content"]
    assert two[1] == short[1] and cut.startswith("…") and "Be brief.".endswith(cut[1:]) and 0 < n_tokens(cut[1:]) <= 2
