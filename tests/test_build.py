"""data.build: the lexicon build, and `--classifier llm` end to end through the loopback OpenAI-compatible server
(the real `openai` client): what is kept, calls made, the cache on rerun, unknowns on failures, resume after a kill."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data import load_samples
from data.build import UNKNOWN_EXIT, main
from data.heart import PREFILTER, THEMES, classify, llm_messages
from tests.loopback import LoopbackJudgeServer

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "data" / "samples" / "heart_synthetic_labels.jsonl"
SYNTHETIC = [json.loads(line) for line in LABELS.read_text().splitlines()]
BY_TEXT = {r["text"]: r for r in SYNTHETIC}
TRUE = {r["id"] for r in SYNTHETIC if r["related"]}
CANDIDATES = {r["id"] for r in SYNTHETIC if classify(r["text"]).score >= PREFILTER}


@pytest.fixture
def rar_file(tmp_path):
    """The synthetic labelled questions as RaR-Medicine rows (our own text), 4 criteria each."""
    path = tmp_path / "rar.jsonl"
    rubric = [{"description": f"Mentions point {i}", "title": f"p{i}", "weight": 5 - i} for i in range(4)]
    with open(path, "w") as f:
        for r in SYNTHETIC:
            row = {"id": r["id"], "question": r["text"], "reference_answer": "-", "rubric": rubric}
            f.write(json.dumps(row) + "\n")
    return path


def oracle(messages, hallucinate=()):
    """A classifier that knows the labels: the true answer with one keyword from the question (or, for ids in
    `hallucinate`, a positive with an invented keyword). The question is read back from between the markers."""
    question = messages[1]["content"].split("\n", 1)[1].rsplit("\n", 1)[0]
    row = BY_TEXT[question]
    if row["id"] in hallucinate:  # says "heart" whatever the truth, citing a word that is not in the question
        return json.dumps({"heart_related": True, "theme": "CAD", "keywords": ["zzz-not-in-text"]}), question
    keyword = max(question.split(), key=len)
    reply = {"heart_related": row["related"], "theme": THEMES.get(row["theme"]), "keywords": [keyword]}
    return json.dumps(reply), question


def build(rar, out, url, *extra):
    return main(["--rar", str(rar), "--out", str(out), "--classifier", "llm", "--judge-model", "m",
                 "--judge-base-url", url, "--judge-retries", "0", *extra])


def kept(out):
    return {s.id: s for name in ("sft", "grpo", "val", "test") for s in load_samples(out / f"{name}.jsonl")}


def test_lexicon_build(rar_file, tmp_path):
    assert main(["--rar", str(rar_file), "--out", str(tmp_path / "o")]) == 0
    got = kept(tmp_path / "o")
    assert set(got) == {r["id"] for r in SYNTHETIC if classify(r["text"]).related}
    summary = json.loads((tmp_path / "o" / "build.json").read_text())
    assert summary["read"] == 90 and summary["kept"] == len(got) and "classifier" not in summary


def test_llm_build_keeps_verified_positives_and_reruns_free(rar_file, tmp_path):
    out = tmp_path / "o"
    with LoopbackJudgeServer(answer=oracle) as server:
        assert build(rar_file, out, server.url) == 0
        assert {q for q in server.completions} == {r["text"] for r in SYNTHETIC if r["id"] in CANDIDATES}
        assert sum(server.attempts.values()) == len(CANDIDATES) < 90  # the lexicon pre-filter spared the rest
    got = kept(out)
    assert set(got) == TRUE & CANDIDATES == TRUE  # every true positive reached the LLM (lexicon recall 1 here)
    for s in got.values():  # the LLM's theme, not the lexicon's
        assert [t for t in s.tags if t.startswith("heart:")] == [f"heart:{BY_TEXT[s.prompt[0]['content']]['theme']}"]
    summary = json.loads((out / "build.json").read_text())
    assert summary["heart_unknown"] == 0 and summary["classifier"]["candidates"] == len(CANDIDATES)
    assert (out / "heart_unknown.jsonl").read_text() == ""
    with LoopbackJudgeServer(answer=oracle) as again:  # same command again: all answers come from the cache
        assert build(rar_file, out, again.url) == 0
        assert sum(again.attempts.values()) == 0
    assert set(kept(out)) == TRUE


def test_llm_build_rejects_hallucinated_keywords(rar_file, tmp_path):
    liar = {"syn-041", "syn-019"}  # a true positive and a true negative (incidental comorbidities), both candidates
    assert liar <= CANDIDATES and "syn-041" in TRUE and "syn-019" not in TRUE
    with LoopbackJudgeServer(answer=lambda m: oracle(m, hallucinate=liar)) as server:
        assert build(rar_file, tmp_path / "o", server.url) == 0
    assert set(kept(tmp_path / "o")) == TRUE - {"syn-041"}


def test_llm_build_failures_are_unknown_then_resumed(rar_file, tmp_path):
    out = tmp_path / "o"
    failing = {r["id"]: r["text"] for r in SYNTHETIC if r["id"] in ("syn-041", "syn-056", "syn-019")}
    # the loopback server keys a request by its two messages: these three always get HTTP 500
    bad = {hashlib.sha256(json.dumps(llm_messages(q)).encode()).hexdigest() for q in failing.values()}

    def faults(key, attempt):  # every other item first gets a reply that is not JSON, so it is re-asked once
        return "500" if key in bad else ("prose" if attempt == 0 else None)

    with LoopbackJudgeServer(answer=oracle, faults=faults) as server:
        assert build(rar_file, out, server.url) == UNKNOWN_EXIT
        assert server.served["prose"] == len(CANDIDATES) - 3 and server.served["500"] == 3  # retries = 0
    unknown = {json.loads(line)["id"] for line in (out / "heart_unknown.jsonl").read_text().splitlines()}
    assert unknown == set(failing)
    assert json.loads((out / "build.json").read_text())["heart_unknown"] == 3
    assert set(kept(out)) == TRUE - unknown  # unknown is left out and reported, never silently "not heart"
    with LoopbackJudgeServer(answer=oracle) as server:  # the judge is back: only the three unknowns are asked
        assert build(rar_file, out, server.url) == 0
        assert sorted(server.completions) == sorted(failing.values())
    assert set(kept(out)) == TRUE


def test_llm_build_concurrency(rar_file, tmp_path):
    with LoopbackJudgeServer(answer=oracle, latency=0.05) as server:
        assert build(rar_file, tmp_path / "o", server.url, "--judge-concurrency", "4") == 0
        assert 2 <= server.max_in_flight <= 4


def test_llm_build_resumes_after_kill(rar_file, tmp_path):
    """Kill the build mid-run (SIGKILL: no cleanup); the rerun asks only what had not been answered."""
    out = tmp_path / "o"
    with LoopbackJudgeServer(answer=oracle, latency=0.1) as server:
        cmd = [sys.executable, "-m", "data.build", "--rar", str(rar_file), "--out", str(out), "--classifier", "llm",
               "--judge-model", "m", "--judge-base-url", server.url, "--judge-concurrency", "1"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while sum(server.answered.values()) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = sum(server.answered.values())
        assert 5 <= first < len(CANDIDATES)
    with LoopbackJudgeServer(answer=oracle) as server:
        assert build(rar_file, out, server.url) == 0
        # answers received before the kill were committed; at most the one in flight at the kill is asked again
        assert len(CANDIDATES) - first <= sum(server.attempts.values()) <= len(CANDIDATES) - first + 1
    assert set(kept(out)) == TRUE


def test_llm_build_user_errors(rar_file, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--rar", str(rar_file), "--out", str(tmp_path / "o"), "--classifier", "llm"])
    assert e.value.code == 2 and "--judge-model" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["--rar", str(rar_file), "--out", str(tmp_path / "o"), "--classifier", "llm", "--judge-model", "m"])
    assert e.value.code == 2 and "OPENAI_API_KEY" in capsys.readouterr().err
    with LoopbackJudgeServer(answer=oracle, faults=lambda k, a: "401") as server:
        with pytest.raises(SystemExit) as e:
            build(rar_file, tmp_path / "o", server.url)
    assert "refused model 'm'" in str(e.value.code)
