"""Every command the docs show (tests/doc_commands.py collects them) is run or skipped for a stated reason.

    python -m pytest tests/test_doc_commands.py

`torchrun grpo/train.py|grpo/sft.py` lines run in tests/test_commands.py; every other command runs here, in-process
(runpy: `python -m MOD` as __main__, `python SCRIPT`, `python -c CODE`) from a scratch directory holding the files
the command names, with tiny overrides appended (argparse: the later flag wins) so each takes a second or two, and a
check of what it prints or writes. `test_every_command_is_run_or_skipped` fails when a command is added to a doc
without a row in RUN or tests/doc_commands.py's SKIP.
"""
from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from data import bundled_demo_path, load_samples
from tests.doc_commands import ROOT, SKIP, commands, documented, skip_reason

TORCHRUN = r"^(\w+=\S*\s+)*torchrun (--\S+ )*grpo/(train|sft)\.py\b"
TINY_MODEL = "<tiny>"  # stands for grpo.model.build_tiny()'s directory (built once per suite, GRPO_CACHE)


def flag(argv: list[str], name: str, default: str = "") -> str:
    """The value of the last `name VALUE` in argv (what argparse keeps)."""
    return next((argv[i + 1] for i in range(len(argv) - 2, -1, -1) if argv[i] == name), default)


def last_json(out: str, cwd: Path, argv: list[str]) -> dict:
    """The last printed line, which bench scripts promise is one JSON object."""
    return json.loads(out.strip().splitlines()[-1])


def files(*names: str) -> Callable:
    def check(out: str, cwd: Path, argv: list[str]) -> None:
        for name in names:
            assert (cwd / name).is_file() and (cwd / name).stat().st_size > 0, name
    return check


def both(*checks: Callable) -> Callable:
    return lambda *a: [c(*a) for c in checks]


def printed(pattern: str) -> Callable:
    def check(out: str, cwd: Path, argv: list[str]) -> None:
        assert re.search(pattern, out, flags=re.S | re.M), f"{pattern!r} not in {out[-1500:]!r}"
    return check


def check_build(out: str, cwd: Path, argv: list[str]) -> None:
    """The lexicon keeps only, and most of, the synthetic heart questions, split four ways by id hash."""
    d = cwd / flag(argv, "--out")
    kept = [s.id for split in ("sft", "grpo", "val", "test") for s in load_samples(d / f"{split}.jsonl")]
    heart = {r["id"] for r in SYNTHETIC if r["related"]}
    assert len(kept) == len(set(kept)) == json.loads((d / "build.json").read_text())["kept"]
    assert len(set(kept) & heart) >= 0.8 * len(kept) > 0, (len(kept), len(set(kept) & heart))


def check_compare(out: str, cwd: Path, argv: list[str]) -> None:
    """Base passes 2 of 6, trained 5 of 6, 4 gained and 1 lost: exact McNemar p = 2·(C(5,0)+C(5,1))/2⁵ = 0.375."""
    got = json.loads((cwd / flag(argv, "--out", "runs/eval") / "compare.json").read_text())
    (test,) = got["mcnemar_vs_first"].values()
    assert got["n_common"] == 6 and (test["n01"], test["n10"]) == (4, 1)
    assert test["p_value"] == pytest.approx(0.375, abs=1e-12)


@dataclass
class Run:
    extra: tuple = ()                       # flags appended (they win over the documented ones)
    check: Callable = last_json             # (stdout, cwd, argv) -> raises when the output is wrong
    subst: dict = field(default_factory=dict)  # token -> replacement (placeholders, hub ids, absolute paths)
    shared_data: bool = False               # reads ../shared/data: skipped when it is absent


THROUGHPUT = ("--steps", "1", "--warmup", "0", "--prompts", "1", "--G", "2", "--prompt-len", "8",
              "--completion-len", "4", "--out", "runs/throughput")
DECODE = ("--shape", "tiny", "--rows", "2", "--prompt-len", "4", "--new-tokens", "4")
JUDGE = ("--latency", "0.01", "--calls", "16", "--single-calls", "2", "--concurrency", "1,4")
AGREE = ("--data", str(bundled_demo_path()), "--limit", "2")
VARIANCE = ("--max-rubrics", "4", "--groups", "1")

# pattern (re.search on the collected command) -> how it runs. torchrun lines: tests/test_commands.py.
RUN: dict[str, Run | str] = {
    TORCHRUN: "tests/test_commands.py::test_documented_command_runs",
    r"^python -m data\.build --rar \S+ --out \S+$": Run(check=check_build,
                                                         subst={"PATH": "rar.jsonl", "DIR": "runs/data"}),
    r"^python -m data\.heart [\"']": Run(check=printed(r"HeartLabel\(related=True.*warfarin")),
    r"^python -m data\.heart --eval( --errors)?$": Run(check=printed(r"real/dev.*synthetic/all"),
                                                       shared_data=True),
    r"^python -m data\.format ": Run(check=printed(r"Parsed\(reasoning='why', solution='answer', "
                                                         r"well_formed=True\)")),
    r"^python -m data\.loaders PATH": Run(check=printed(r"^\d+ samples, 0 skipped"),
                                          subst={"PATH": str(bundled_demo_path())}),
    r"^python -m grpo\.evaluate --help$": Run(check=printed(r"usage: python -m grpo\.evaluate")),
    r"^python -m grpo\.evaluate --compare runs/eval-base(/results\.jsonl)? runs/eval-grpo": Run(check=check_compare),
    r"^python -m grpo\.metrics runs/demo/metrics\.jsonl$": Run(check=files("runs/demo/reward_curve.png")),
    r"^python -m grpo\.model$": Run(check=printed(r"tiny.* [\d,]+ params, vocab \d+")),
    r"^python -c .*REWARDS\['hybrid'\]": Run(check=printed(r"^20\.0$")),  # s = 1, no pitfall: 15·1 + 5 bonus
    r"^python -c .*grade_sync\(make_judge\('keyword'\)": Run(check=printed(r"^\[\[(True|False|None)")),
    r"^python -c .*STAT_KEYS": Run(check=printed(r"\('calls', 'criteria', 'unknown'")),
    r"^python -c .*VerdictCache": Run(check=printed(r"^0$"), subst={"/tmp/c.sqlite": "c.sqlite"}),
    r"^python -c .*grading_messages": Run(check=printed(r"hi")),
    r"^python bench/memory\.py --shape qwen3-14b --budget-gb 96$": Run(
        check=both(printed(r"fits: planned peak .* vs budget 96\.0 GB"), last_json)),
    r"^python bench/memory\.py --shape tiny ": Run(check=both(printed(r"logprobs=reference"), last_json)),
    r"^python bench/throughput\.py --shape tiny": Run(extra=THROUGHPUT),
    r"^python bench/throughput\.py --model Qwen/Qwen3-0\.6B": Run(extra=THROUGHPUT, subst={"Qwen/Qwen3-0.6B":
                                                                                          TINY_MODEL}),
    r"^python bench/bench_kernels\.py( --n 1024 --h 64 --v 4096 --reps 3)?$": Run(extra=("--n", "64", "--reps", "1")),
    r"^python bench/bench_kernels\.py --sampler$": Run(extra=("--n", "4", "--v", "256", "--reps", "1")),
    r"^python bench/bench_decode\.py( --engines static --lora-r 16| --amp)?$": Run(extra=DECODE),
    r"^python bench/bench_judge\.py": Run(extra=JUDGE),
    r"^python bench/judge_agreement\.py( --limit 5 --slopes 0,0\.01)?$": Run(extra=AGREE),
    r"^python bench/reward_variance\.py$": Run(extra=VARIANCE + ("--png", "")),
    r"^python bench/reward_variance\.py --G 16 .*--png variance\.png$": Run(
        extra=VARIANCE, check=both(files("variance.png"), last_json)),
}
SYNTHETIC = [json.loads(line) for line in (ROOT / "data" / "samples" / "heart_synthetic_labels.jsonl")
             .read_text().splitlines()]


def runner(cmd: str) -> list[str]:
    return [p for p in RUN if re.search(p, cmd)]


def uncovered(cmds: list[tuple[str, str]]) -> list[str]:
    """The commands matched by no RUN row and no SKIP reason, or by both, or by two RUN rows."""
    bad = []
    for where, cmd in cmds:
        runs, why = runner(cmd), skip_reason(cmd)
        if why:  # tests/test_commands.py runs every torchrun line that SKIP does not name
            runs = [p for p in runs if p != TORCHRUN]
        if len(runs) + bool(why) != 1:
            bad.append(f"{where}: {cmd!r}: RUN rows {runs}, skip {why!r}")
    return bad


def test_every_command_is_run_or_skipped():
    """Exactly one of: one RUN row, or a SKIP reason (a command shown without either fails here, with its place)."""
    bad = uncovered(documented())
    assert not bad, "\n".join(bad)
    new = [("grpo/x.py", "python -m grpo.x --y 1"), ("bench/x.py", "python bench/memory.py --shape qwen3-8b"),
           ("README.md", "make demo --what"), ("data/x.py", "torchrun grpo/train.py --steps 2")]
    assert [b.split(":")[0] for b in uncovered(new)] == ["grpo/x.py", "bench/x.py"]  # a new command fails the suite
    unused = [p for p in RUN if not any(re.search(p, c) for _, c in documented())]
    unused += [p for p in SKIP if not any(re.search(p, c) for _, c in documented())]
    assert not unused, f"rows that match no documented command (stale): {unused}"


def test_the_collector_finds_what_the_docs_show():
    """Independent spot checks, one per kind of source: the collector is not silently finding nothing."""
    cmds = [c for _, c in documented()]
    assert len(cmds) >= 90
    for expected in ("make demo", "python -m data.heart --eval --errors",                       # README, docs/data.md
                     'python -m data.heart "I take warfarin for atrial fibrillation"',          # data/ docstring
                     "python bench/reward_variance.py --G 16 --groups 8 --pass-rates 0.2,0.5,0.8,0.95 --png variance.png",
                     "torchrun grpo/train.py --judge local",                                   # rewards/ docstring
                     "python -m grpo.evaluate --preset paper --data healthbench.jsonl --model Qwen/Qwen3-14B "
                     "--adapter runs/grpo/adapter --judge openai --out runs/eval-hybrid"):    # README = docstring
        assert cmds.count(expected) == 1, expected
    assert not [c for c in cmds if "#" in c and "python -c" not in c], "comments are cut"
    assert commands("    python -m x \\\n        --a 1   # why\n  python -m y\n") == ["python -m x --a 1"]


def test_pytest_commands_name_real_tests():
    """The skipped `python -m pytest ...` lines point at files (and -k selections) that exist."""
    for _, cmd in documented():
        if not cmd.startswith("python -m pytest "):
            continue
        args = shlex.split(cmd)[3:]
        k = args[args.index("-k") + 1] if "-k" in args else None
        for name in (a for a in args if a.endswith(".py")):
            text = (ROOT / name).read_text(encoding="utf-8")
            assert re.search(rf"^def test_\w*{k or ''}", text, flags=re.M), (cmd, name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """What the commands name, made from our own files: RaR-shaped rows of the synthetic labelled questions, a
    metrics.jsonl, two evaluation result sets with a hand-computed McNemar."""
    d = tmp_path_factory.mktemp("doc_commands")
    rubric = [{"description": f"Mentions point {i}", "title": f"p{i}", "weight": 5 - i} for i in range(4)]
    rows = "".join(json.dumps({"id": r["id"], "question": r["text"], "reference_answer": "-", "rubric": rubric}) + "\n"
                   for r in SYNTHETIC)
    for name in ("rar.jsonl", "train.jsonl", "rar_medicine_train.jsonl"):
        (d / name).write_text(rows, encoding="utf-8")
    (d / "runs" / "demo").mkdir(parents=True)
    (d / "runs" / "demo" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward/mean": 0.5 * s, "reward/std": 0.1, "reward/zero_std_frac": 0.25}) + "\n"
        for s in (1, 2, 3)), encoding="utf-8")
    for run, passed in (("eval-base", "110000"), ("eval-grpo", "101111")):
        (d / "runs" / run).mkdir(parents=True)
        (d / "runs" / run / "results.jsonl").write_text("".join(json.dumps(
            {"id": f"q{i}", "tags": [], "response": "", "solution": "", "well_formed": True, "truncated": False,
             "criteria": ["x"], "points": [1.0], "criterion_tags": [[]], "verdicts": [p == "1"],
             "score": float(p == "1")}) + "\n" for i, p in enumerate(passed)), encoding="utf-8")
    return d


def _run(tokens: list[str], monkeypatch, capsys) -> str:
    """One `python ...` command in this process, as __main__; returns what it printed (exit status must be 0)."""
    assert tokens[0] == "python", tokens
    try:
        if tokens[1] == "-c":
            monkeypatch.setattr(sys, "argv", ["-c"])
            exec(compile(tokens[2], "<-c>", "exec"), {"__name__": "__main__"})
        elif tokens[1] == "-m":
            monkeypatch.setattr(sys, "argv", [tokens[2], *tokens[3:]])
            runpy.run_module(tokens[2], run_name="__main__", alter_sys=False)
        else:
            monkeypatch.setattr(sys, "argv", [str(ROOT / tokens[1]), *tokens[2:]])
            runpy.run_path(str(ROOT / tokens[1]), run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None), f"exit {done.code}: {capsys.readouterr().err[-2000:]}"
    return capsys.readouterr().out


RUN_HERE = [(w, c) for w, c in documented() if not skip_reason(c) and not re.search(TORCHRUN, c)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy: "found in sys.modules ... prior to execution"
@pytest.mark.parametrize("where, cmd", RUN_HERE, ids=[c[:90] for _, c in RUN_HERE])
def test_documented_command_runs(where, cmd, workdir, monkeypatch, capsys, request):
    (row,) = [RUN[p] for p in runner(cmd)]
    if row.shared_data:
        request.getfixturevalue("shared_data")  # skips without ../shared/data
    subst = dict(row.subst)
    if TINY_MODEL in subst.values():
        from grpo.model import build_tiny
        subst = {k: build_tiny() if v == TINY_MODEL else v for k, v in subst.items()}
    tokens = [subst.get(t, t) for t in shlex.split(cmd)]
    tokens = [t for t in tokens if not (t.startswith("[") or t.endswith("]"))]  # `[--optional flags]` left out
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = _run(tokens + list(row.extra), monkeypatch, capsys)
    row.check(out, workdir, tokens + list(row.extra))
