"""grpo.evaluate end to end: tiny model, a keyword judge, resume from a partial results file, summary, compare."""
import asyncio
import json
import re
from pathlib import Path

import pytest

from data import bundled_demo_path, load_samples
from grpo import eval_stats as S
from grpo.evaluate import ApiResponder, compare, markdown, run, select, summarize

try:
    from rewards.judge import make_judge
except ImportError:  # rewards.judge lands separately; the evaluator only needs grade_many
    make_judge = None


class WordJudge:
    """Criterion met when its longest word occurs in the completion: deterministic, independent of rewards.judge."""

    def __init__(self):
        self.calls = 0

    async def grade_many(self, items):
        self.calls += len(items)
        return [[max(re.findall(r"\w+", c.text.lower()), key=len) in comp.lower() for c in rubric]
                for _, comp, rubric in items]


def _judge():
    return make_judge("keyword") if make_judge else WordJudge()


@pytest.fixture(scope="module")
def tiny_path():
    from grpo.model import build_tiny
    return build_tiny()  # the shared cache (GRPO_CACHE): built once for the whole suite


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from grpo.evaluate import PolicyResponder
    return PolicyResponder(tiny_path, max_new_tokens=12, temperature=1.0, seed=0)


def test_end_to_end_tiny_with_resume(tiny, tmp_path):
    samples = load_samples(bundled_demo_path())[:4]
    judge = _judge()
    first = asyncio.run(run(samples[:2], tiny, judge, tmp_path, batch_size=2, progress=False))
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:25])  # an interrupted run: second line torn
    recs = asyncio.run(run(samples, tiny, judge, tmp_path, batch_size=2, progress=False))
    assert [r["id"] for r in recs] == [s.id for s in samples] and recs[0] == first[0]
    assert recs[1]["response"] == first[1]["response"]  # the redone example got the same sampled text
    assert len([json.loads(x) for x in path.read_text().splitlines() if x.startswith("{") and x.endswith("}")]) == 4  # 1 kept + 3 new; torn line ignored
    for r, s in zip(recs, samples):
        assert len(r["verdicts"]) == len(s.rubric) and r["points"] == [c.points for c in s.rubric]
        assert r["score"] == S.example_score(r["points"], r["verdicts"])
    summary = summarize(recs, n_boot=50)
    assert summary["n"] == 4 and 0 <= summary["format_compliance"] <= 1
    assert summary["healthbench_score"]["value"] == S.clipped_mean([r["score"] for r in recs])
    assert set(summary["heart_theme"]) <= {t.split(":")[1] for s in samples for t in s.tags if t.startswith("heart:")}
    assert "HealthBench score" in markdown(summary, "t")


def test_summary_by_hand(tmp_path):
    """Two examples whose numbers are worked out by hand."""
    recs = [{"id": "a", "tags": ["theme:x", "heart:hypertension"], "well_formed": True, "truncated": False,
             "solution": "It is important to rest. " * 5, "points": [5, 5, -5], "verdicts": [True, False, False],
             "criterion_tags": [["axis:accuracy"], ["axis:completeness"], ["axis:accuracy"]], "score": 0.5},
            {"id": "b", "tags": ["theme:x"], "well_formed": False, "truncated": True,
             "points": [2, -1], "verdicts": [True, None], "criterion_tags": [["axis:accuracy"], []], "score": 1.0}]
    s = summarize(recs, n_boot=200)
    assert s["healthbench_score"]["value"] == 0.75 and s["pass_rate"]["value"] == 0.5
    assert s["criteria"]["tp"] == 2 and s["criteria"]["fn"] == 1 and s["criteria"]["tn"] == 1  # b's −1 is unknown
    assert s["axis"] == {"accuracy": 1.0, "completeness": 0.0}  # accuracy: a 5/5, b 2/2; completeness: a 0/5
    assert s["format_compliance"] == 0.5 and s["unknown_verdicts"] == 0.2
    assert s["heart_theme"] == {"hypertension": {"n": 1, "score": 0.5}}
    # paper heuristic: a's 125-character answer with "important" → its 3 items predicted met; b (no answer) → its 2
    # not: A = 3/5, F1 = 2A/(1+A) = 0.75; labelled as a heuristic, beside (not instead of) the score
    assert s["paper_heuristic"]["accuracy"]["value"] == pytest.approx(0.6)
    assert s["paper_heuristic"]["f1"]["value"] == pytest.approx(0.75) and "not a grade" in s["paper_heuristic"]["note"]
    md = markdown(s, "t")
    assert md.index("HealthBench score") < md.index("pass rate") < md.index("Paper heuristic")
    for k, v in enumerate(recs):
        v["score"] = [0.6, 0.2][k]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    recs[0]["score"], recs[1]["score"] = 0.1, 0.9
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = compare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], tmp_path / "cmp")
    assert out["n_common"] == 2 and out["mcnemar_vs_first"][str(tmp_path / "b.jsonl")] == {
        "n01": 1, "n10": 1, "p_value": 1.0}
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_select_is_deterministic():
    samples = load_samples(bundled_demo_path())
    a, b = select(samples, n=10, seed=3), select(samples, n=10, seed=3)
    assert [s.id for s in a] == [s.id for s in b] and len(a) == 10
    assert [s.id for s in a] == sorted(s.id for s in a)  # file order kept
    assert len(select(samples, heart_only=True)) == len(samples)


def test_api_responder_with_fake_client(tmp_path):
    from types import SimpleNamespace

    async def create(**kw):
        if "FAIL" in kw["messages"][-1]["content"]:
            raise RuntimeError("boom")
        msg = SimpleNamespace(content="<start_working_out>x<end_working_out><SOLUTION>call 911</SOLUTION>")
        return SimpleNamespace(choices=[SimpleNamespace(message=msg, finish_reason="length")])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    samples = load_samples(bundled_demo_path())[:2]
    bad = samples[1].__class__(samples[1].id, [{"role": "user", "content": "FAIL"}], samples[1].rubric)
    out = asyncio.run(ApiResponder("m", client=client)([samples[0], bad], [0, 1]))
    assert out == [("<start_working_out>x<end_working_out><SOLUTION>call 911</SOLUTION>", True), None]

    class Judge:
        async def grade_many(self, items):
            return [[True] * len(r) for _, _, r in items]
    results = asyncio.run(run([samples[0], bad], ApiResponder("m", client=client), Judge(), tmp_path, progress=False))
    assert [r["id"] for r in results] == [samples[0].id]  # the failed call left no record: a rerun retries it


def test_cli_writes_every_output(tiny_path, tmp_path, monkeypatch):
    import sys
    import types

    from grpo.evaluate import main
    if make_judge is None:  # stand in for rewards.judge until it lands
        monkeypatch.setitem(sys.modules, "rewards.judge", types.SimpleNamespace(make_judge=lambda name, **kw: WordJudge()))
    model = tiny_path
    out = tmp_path / "eval"
    args = ["--model", model, "--limit", "3", "--max-new-tokens", "8", "--out", str(out), "--bootstrap", "20",
            "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["config"]["limit"] == 3
    assert all((out / f).stat().st_size > 0 for f in ("results.jsonl", "summary.md", "scores.png", "themes.png"))
    assert main(args) == 0 and len((out / "results.jsonl").read_text().splitlines()) == 3  # resumed: nothing redone


def _docstring_commands() -> list[list[str]]:
    """The `python -m grpo.evaluate ...` commands of the module docstring, continuation lines joined, comments cut."""
    import shlex

    import grpo.evaluate
    text = re.sub(r"\\\n\s*", " ", grpo.evaluate.__doc__)
    lines = [ln.split("  #")[0].strip() for ln in text.splitlines()]
    return [shlex.split(ln)[3:] for ln in lines if ln.startswith("python -m grpo.evaluate")]


def test_every_docstring_command_runs(tiny_path, tmp_path, monkeypatch):
    """Each command of grpo/evaluate.py's docstring, in order, from a fresh directory: the offline ones exactly as
    written; the others with the loopback server standing in for api.openai.com (OPENAI_BASE_URL) and for
    localhost:8000, the tiny model for the hub ids (its answers cut to 16 tokens: CPU time), a 2-example
    healthbench.jsonl."""
    from grpo.model import add_lora, load_model
    from rewards.openai_judge import HEALTHBENCH_GRADER
    from tests.loopback import LoopbackJudgeServer
    monkeypatch.chdir(tmp_path)
    demo = bundled_demo_path().read_text(encoding="utf-8").splitlines()
    (tmp_path / "healthbench.jsonl").write_text("\n".join(demo[:2]) + "\n", encoding="utf-8")
    n_criteria = sum(len(s.rubric) for s in load_samples(tmp_path / "healthbench.jsonl"))
    model, _ = load_model(tiny_path)
    add_lora(model, r=4, alpha=8).save_pretrained(tmp_path / "runs" / "grpo" / "adapter")
    with LoopbackJudgeServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        stand_in = {"Qwen/Qwen3-14B": tiny_path, "Qwen/Qwen3-32B": tiny_path, "http://localhost:8000/v1": server.url}
        commands = _docstring_commands()
        assert len(commands) == 7
        for argv in commands:
            before = sum(server.attempts.values())
            if any(a in stand_in for a in argv):
                argv = [stand_in.get(a, a) for a in argv] + ["--max-new-tokens", "16"]
            assert main_quiet(argv) == 0, argv
            out = Path(argv[argv.index("--out") + 1])
            calls = sum(server.attempts.values()) - before
            if "--compare" in argv:
                assert json.loads((out / "compare.json").read_text())["n_common"] == 2
                continue
            summary = json.loads((out / "summary.json").read_text())
            n = summary["n"]
            assert n == (2 if "--preset" in argv else 3) and summary["unknown_verdicts"] == 0
            assert "accuracy" in summary["paper_heuristic"] and "healthbench_score" in summary
            if "openai" in argv:  # HealthBench's grader: one request per criterion, to its default model
                assert summary["config"]["judge_model"] is None and summary["config"]["judge_mode"] == "per_criterion"
                assert calls == n_criteria + (n if "--api-model" in argv else 0)
                assert summary["grader"] == f"{HEALTHBENCH_GRADER}, per criterion (HealthBench's grader)"
            else:
                assert calls == 0 and "not" in summary["grader"]
        assert server.models >= {HEALTHBENCH_GRADER, "gpt-oss-120b"}
    recs = read_jsonl(tmp_path / "runs" / "eval-oss" / "results.jsonl")
    from tests.loopback import POLICY_REPLY
    assert [r["response"] for r in recs] == [POLICY_REPLY] * 2


def main_quiet(argv):
    from grpo.evaluate import main
    return main(argv + ["--no-progress"])


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_local_judge_reuses_the_policy_or_loads_its_own(tiny_path, tmp_path):
    import argparse

    from grpo.evaluate import PolicyResponder, build_judge
    from rewards.local_judge import LocalJudge
    policy = PolicyResponder(tiny_path, max_new_tokens=4)
    args = argparse.Namespace(judge="local", judge_model=None, judge_base_url=None)
    judge = build_judge(args, policy)
    assert isinstance(judge, LocalJudge) and judge.model is policy.model and judge.tokenizer is policy.tok
    own = build_judge(argparse.Namespace(judge="local", judge_model=tiny_path, judge_base_url=None), policy)
    assert own.model is not policy.model
    with pytest.raises(SystemExit, match="--judge-model"):
        build_judge(args, ApiResponder("m", client=object()))
    with pytest.raises(SystemExit, match="--judge openai or local"):
        build_judge(argparse.Namespace(judge="keyword", judge_model="gpt-4.1", judge_base_url=None), policy)


def test_consecutive_runs_split_at_gaps():
    from grpo.evaluate import consecutive_runs
    assert consecutive_runs([3, 4, 5, 9, 10]) == [[0, 1, 2], [3, 4]]
    assert consecutive_runs([0]) == [[0]] and consecutive_runs([]) == []
    assert consecutive_runs([7, 5, 6]) == [[0], [1, 2]]


def test_policy_decodes_a_batch_at_once_with_the_tokens_of_one_row_at_a_time(tiny):
    """Evaluation decodes each batch through the static engine in one call (runs of consecutive rows); every row
    must still get the text the eager reference gives it alone, keyed by its own index (a resumed run's gaps too)."""
    from grpo.evaluate import to_messages
    from grpo.rollout import make_engine
    samples = load_samples(bundled_demo_path())[:5]
    offsets = [0, 1, 2, 6, 7]  # rows 3-5 already written: two runs
    calls = []
    engine_generate = tiny.engine.generate
    tiny.engine.generate = lambda *a, **kw: calls.append(len(a[2])) or engine_generate(*a, **kw)
    try:
        got = asyncio.run(tiny(samples, offsets))
    finally:
        del tiny.engine.generate
    assert calls == [3, 2]
    eager = make_engine("eager")
    for s, i, (text, cut) in zip(samples, offsets, got):
        r = eager.generate(tiny.model, tiny.tok, [to_messages(s)], seq_offset=i, **tiny.kw)
        assert (text, cut) == (r.texts[0], bool(r.truncated[0])), i
