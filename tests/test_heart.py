"""data.heart: lexicon matching rules, the hand-labelled development set, the LLM classifier's keyword check."""
import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from data import classify, load_samples
from data.heart import THEMES, llm_classify, parse_llm_label, sample_text

LABELS = Path(__file__).resolve().parents[1] / "data" / "samples" / "heart_dev_labels.jsonl"


def test_matching_rules():
    assert classify("I take warfarin for atrial fibrillation").theme in ("arrhythmia", "cardiac_medications")
    assert classify("Had an MI last year").related and not classify("mi casa es su casa").related  # case-sensitive
    assert classify("my BP is 150/95").theme == "hypertension"
    assert not classify("ICD-10 code for a tibial fracture").related  # a billing code, not a defibrillator
    assert not classify("heartburn after spicy food").related  # word boundaries
    assert classify("are statins safe?").terms == ("statins",)
    assert not classify("my heart").related and classify("my heart").score == 0.5  # one weak word is not enough
    assert classify("heart attack").terms == ("heart attack",)  # the longer term claims the text, "heart" not counted
    assert classify("").related is False and classify(None).terms == ()
    label = classify("Chest pain and troponin rise, then ST elevation on the ECG")
    assert label.related and label.score == 4.0 and label.theme in THEMES


def _dev_set(shared_data):
    labels = [json.loads(line) for line in LABELS.read_text().splitlines()]
    samples = {s.id: s for f in {lab["file"] for lab in labels} for s in load_samples(shared_data / f, heart=False)}
    return labels, samples


def test_dev_set_precision_recall(shared_data):
    """The numbers in docs/data.md: 219 hand-labelled records (16 heart-related). Update the table if this changes."""
    labels, samples = _dev_set(shared_data)
    assert len(labels) == 219 and set(samples) == {lab["id"] for lab in labels}
    tp = fp = fn = theme_agree = 0
    for lab in labels:
        pred = classify(sample_text(samples[lab["id"]]))
        tp += pred.related and lab["related"]
        fp += pred.related and not lab["related"]
        fn += lab["related"] and not pred.related
        theme_agree += pred.related and lab["related"] and pred.theme == lab["theme"]
    assert (tp, fp, fn, theme_agree) == (12, 10, 4, 7)
    assert abs(tp / (tp + fp) - 0.545) < 1e-3 and tp / (tp + fn) == 0.75


def test_loader_tags_heart_theme(shared_data):
    labels, samples = _dev_set(shared_data)
    tagged = load_samples(shared_data / "healthbench_hard_sample.jsonl")
    for s in tagged:
        pred = classify(sample_text(s))
        assert (f"heart:{pred.theme}" in s.tags) == pred.related


def test_llm_label_keyword_verification():
    text = "My doctor started me on apixaban for an irregular heartbeat."
    ok = parse_llm_label('```json\n{"heart_related": true, "theme": "Arrhythmia", "keywords": ["apixaban"]}\n```', text)
    assert ok.related and ok.theme == "arrhythmia" and ok.terms == ("apixaban",)
    made_up = parse_llm_label('{"heart_related": true, "theme": "Arrhythmia", "keywords": ["warfarin"]}', text)
    assert not made_up.related and made_up.theme is None  # keyword not in the text: rejected, as in the paper
    for junk in ["", "no", "{", '{"heart_related": "yes"}', "[1]", '{"keywords": 3, "heart_related": true}']:
        assert parse_llm_label(junk, text).related is False


def test_llm_classify_caches():
    calls = []

    async def create(**kw):
        calls.append(kw)
        msg = SimpleNamespace(content='{"heart_related": true, "theme": "Hypertension", "keywords": ["blood pressure"]}')
        return SimpleNamespace(choices=[SimpleNamespace(message=msg)])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    cache = {}
    text = "Is 150/95 high blood pressure?"
    a = asyncio.run(llm_classify(client, "m", text, cache=cache))
    b = asyncio.run(llm_classify(client, "m", text, cache=cache))
    assert a == b and a.theme == "hypertension" and len(calls) == 1 and text in calls[0]["messages"][0]["content"]
