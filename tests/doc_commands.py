"""The command lines the docs show, collected once for tests/test_doc_commands.py and tests/test_commands.py.

    python -m pytest tests/test_doc_commands.py tests/test_commands.py

A command is an indented line (4+ spaces) of README.md, docs/*.md or a module docstring of grpo/, data/, rewards/ or
bench/ that starts with a launcher (`python`, `python -m`, `torchrun`, `make`, `bash`, `vllm`, `pytest`), optionally
after environment assignments (`OPENAI_API_KEY=... python ...`); backslash continuations are joined and a trailing
`# comment` is cut. The same command shown in two places is one command (the first place is kept).
"""
from __future__ import annotations

import ast
import functools
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo", "data", "rewards", "bench")
LAUNCH = re.compile(r"(\w+=\S*\s+)*(python3?|torchrun|make|bash|vllm|pytest)(\s|$)")


@functools.cache
def sources() -> dict[str, str]:
    """{where: text}: README.md, docs/*.md, then each module docstring of PACKAGES, in path order."""
    out = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    out |= {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            out[path.relative_to(ROOT).as_posix()] = doc or ""
    return out


def commands(text: str) -> list[str]:
    """The command lines of one text, each re-joined from its shell tokens (so comments and spacing are gone)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        if line.startswith("    ") and LAUNCH.match(line.strip()):
            out.append(_cut_comment(line.strip()))
    return out


def _cut_comment(line: str) -> str:
    """The line without its trailing `# comment` (a `#` inside quotes is kept) and with single spaces, as written
    otherwise."""
    tokens = shlex.split(line, comments=True)
    cut = next((line[:m.start()] for m in re.finditer(r"\s#", line) if shlex.split(line[:m.start()]) == tokens), line)
    spaced = re.sub(r"\s+", " ", cut.strip())
    return spaced if shlex.split(spaced) == tokens else cut.strip()


@functools.cache
def documented() -> list[tuple[str, str]]:
    """[(where first shown, command)] over every source, each command once."""
    seen, out = set(), []
    for where, text in sources().items():
        for cmd in commands(text):
            if cmd not in seen:
                seen.add(cmd)
                out.append((where, cmd))
    return out


def expected_errors() -> dict[str, str]:
    """Commands the docs show failing: a torchrun line, then an indented `error: ...` line (what the user sees)."""
    found = {}
    for text in sources().values():
        for cmd, err in re.findall(r"^ {4}(torchrun [^\n]*)\n {4}(error: [^#\n]*?)\s*(?:#.*)?$", text, flags=re.M):
            found[shlex.join(shlex.split(cmd, comments=True))] = err
    return found


# Commands that are not run, and why. A command may match several (the first reason is reported); it must not
# also match tests/test_doc_commands.py's RUN table. Patterns are re.search'ed against the re-joined command.
SKIP = {
    r"^make (demo|install)\b": "make: builds .venv first (minutes); what `make demo` runs, `torchrun grpo/train.py`, "
                               "runs in tests/test_commands.py",
    r"^make test\b": "the test suite itself",
    r"^python -m pytest ": "pytest: the suite runs these files (test_pytest_commands_name_real_tests checks them)",
    r"\bvllm serve\b": "a vLLM server: GPU and a hub model (tests/test_rollout_server.py serves the tiny model)",
    r"qwen3-14b-rtx6000|--preset paper|Qwen/Qwen3-14B|bench/(throughput|bench_decode)\.py --shape qwen3-14b":
        "a 14B model (hub weights or a 14B-shaped step): GPU only",
    r"--rollout[= ]server": "a served rollout needs a running vLLM server (tests/test_rollout_server.py runs one)",
    r"--judge[= ]openai|OPENAI_API_KEY=|--classifier llm|^python -m data\.augment ":
        "an OpenAI-compatible model and key (the same code runs against tests/loopback.py in test_train.py, "
        "test_judge.py, test_build.py, test_augment.py, test_evaluate.py)",
    r"^bash bench/gpu_session\.sh$": "the GPU session itself (needs CUDA)",
    r"^bash bench/gpu_session\.sh --dry-run$": "runs in tests/test_gpu_session.py::test_every_part_runs_and_the_"
                                               "summary_is_written (~2 min: every part)",
    r"^python bench/bench_trl\.py": "needs TRL (extra `bench`, not in the dev install) and ≥ 1 min even tiny",
}
# Docstrings whose every command another test runs (that test collects them itself): checked before SKIP.
RUN_ELSEWHERE = {"grpo/evaluate.py": "runs in tests/test_evaluate.py::test_every_docstring_command_runs (the tiny model "
                                     "for hub ids, tests/loopback.py for the API, as that test says)"}


@functools.cache
def skip_reason(cmd: str) -> str:
    for where, why in RUN_ELSEWHERE.items():
        if cmd in commands(sources()[where]):
            return why
    return next((why for pattern, why in SKIP.items() if re.search(pattern, cmd)), "")
