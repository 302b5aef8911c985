"""Every `torchrun grpo/train.py|grpo/sft.py` command the docs show runs (README, docs/*.md, module docstrings:
tests/doc_commands.py collects them), with tiny overrides appended (later flags win) and the files they name made
from the bundled sample.

    python -m pytest tests/test_commands.py

One-process commands run in-process through the entry point's main() (what `torchrun --nproc_per_node=1` runs);
multi-process ones through torch.distributed.run with 2 gloo processes (the FSDP2 example's 8 GPUs become 2 CPU
processes). Skipped for the reason tests/doc_commands.py's SKIP gives: the paper preset (a 14B hub model on a GPU),
`--judge openai` (an API key), `--rollout server` (a vLLM server). `...` stands for the user's own flags and is
dropped. Every other documented command runs in tests/test_doc_commands.py.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import grpo.sft
import grpo.train
from data import bundled_demo_path
from tests import doc_commands

ROOT = Path(__file__).resolve().parents[1]
TINY = {"grpo/train.py": ["--steps=1", "--prompts_per_step=2", "--num_generations=2", "--max_new_tokens=8",
                          "--plot=false"],
        "grpo/sft.py": ["--steps=1", "--batch_size=2", "--max_len=32", "--lora_r=4"]}
ENTRY = {"grpo/train.py": grpo.train.main, "grpo/sft.py": grpo.sft.main}


def documented() -> list[tuple[str, str]]:
    """The torchrun grpo/train.py|grpo/sft.py lines of every doc (tests/doc_commands.py collects them)."""
    return [(w, c) for w, c in doc_commands.documented()
            if re.match(r"(\w+=\S*\s+)*torchrun\s", c) and re.search(r"\bgrpo/(train|sft)\.py\b", c)]


def _split(cmd: str) -> tuple[int, str, list]:
    """'torchrun [launcher flags] SCRIPT args' → (processes, script, args)."""
    tokens = [t for t in shlex.split(cmd, comments=True) if t != "..."]
    while re.fullmatch(r"\w+=\S*", tokens[0]):  # an environment assignment before the launcher
        tokens = tokens[1:]
    assert tokens[0] == "torchrun", cmd
    i = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    launcher = dict(t[2:].split("=", 1) if "=" in t else (t[2:], "") for t in tokens[1:i])
    return int(launcher.get("nproc_per_node", 1)), tokens[i], tokens[i + 1:]


RAN: dict = {}  # (processes, script, flags) of each command run so far -> the command


def _flags(args: list) -> frozenset:
    """The flags as the parser keeps them: `--key value` = `--key=value`, dashes = underscores, the last one wins."""
    out, i = {}, 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        out[key.lstrip("-").replace("-", "_")] = value
        i += 1
    return frozenset(out.items())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the commands name, made from the bundled heart sample: SFT data and reasoning traces."""
    d = tmp_path_factory.mktemp("commands")
    demo = bundled_demo_path().read_text(encoding="utf-8")
    ids = [json.loads(line)["prompt_id"] if "prompt_id" in json.loads(line) else None
           for line in demo.splitlines() if line.strip()]
    for sub in (d, d / "runs" / "data"):
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "sft.jsonl").write_text(demo, encoding="utf-8")
        (sub / "traces.jsonl").write_text("".join(json.dumps({"id": i, "reasoning": "Check the heart first."}) + "\n"
                                                  for i in ids if i), encoding="utf-8")
    return d


def test_the_docs_show_the_commands_this_test_expects():
    cmds = [c for _, c in documented()]
    assert any("grpo/sft.py" in c for c in cmds) and any("--init_adapter" in c for c in cmds)
    assert any("--nproc_per_node=2" in c for c in cmds) and any("--help" in c for c in cmds)
    assert "torchrun --standalone --nproc_per_node=2 grpo/train.py --steps 4" in cmds   # grpo/dist.py's docstring
    assert "torchrun grpo/train.py --steps 0" in cmds                                    # README, Reliability
    assert "torchrun grpo/train.py --judge local" in cmds                                # rewards/local_judge.py
    assert doc_commands.expected_errors()["torchrun grpo/train.py --steps 0"] == "error: --steps must be >= 1, got 0"


@pytest.mark.slow
@pytest.mark.parametrize("where, cmd", documented(), ids=[c for _, c in documented()])
def test_documented_command_runs(where, cmd, workdir, monkeypatch, capsys):
    n, script, args = _split(cmd)
    if reason := doc_commands.skip_reason(cmd):
        pytest.skip(reason)
    extra = TINY[script] + (["--steps=2"] if "--resume" in " ".join(args) else [])
    monkeypatch.chdir(workdir)
    errors = doc_commands.expected_errors()
    if cmd in errors:  # what `python grpo/train.py` runs: cli(), its exit code and stderr, not main()'s exception
        rc = grpo.train.cli(args)  # (the same command in a real process: test_reliability.py, one-line exit-2 test)
        out, err = capsys.readouterr()
        assert (rc, err.strip()) == (2, errors[cmd]), (rc, err[-2000:])
        return
    if "--help" in args:
        with pytest.raises(SystemExit) as done:
            ENTRY[script](args)
        assert done.value.code == 0 and "usage: torchrun " + script in capsys.readouterr().out
        return
    run = (n, script, _flags(args + extra))
    if run in RAN:  # e.g. dist.py's `--steps 4` is README's 2-process line once `--steps=1` is appended
        pytest.skip(f"the same run, after the tiny overrides, as {RAN[run]!r}")
    RAN[run] = cmd
    if n == 1:
        ENTRY[script](args + extra)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                  f"--master_port={port}", str(ROOT / script)]
        done = subprocess.run(launch + args + extra, cwd=workdir, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
    pairs = dict(zip(args, args[1:]))
    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), pairs.get("--out"))
    run_dir = workdir / (run_dir or ("runs/demo" if script == "grpo/train.py" else "runs/sft"))
    if script == "grpo/train.py":
        assert (run_dir / "metrics.jsonl").read_text().strip()
    else:
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()

