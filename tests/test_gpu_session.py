"""bench/gpu_session.sh's orchestration on a CPU, so a typo cannot waste the one GPU call a session gets.

    python -m pytest tests/test_gpu_session.py
    bash bench/gpu_session.sh --dry-run      # by hand before a GPU call: the real parts with tiny shapes (~2-4 min)

The script is run with a stand-in interpreter (PY=) that records its arguments and answers as each part's real
command does (a JSON last line), so the test checks what the script itself decides: every part runs with its
arguments, each under its own timeout capped by the budget left, a hung part is cut off and reported, and
summary.json / results.md are written from whatever came back."""
import json
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"

FAKE_PY = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "-c "*) echo "torch 0 transformers 0 triton none" ;;
  "-") cat > "$FAKE_LOG.summary.py"; exec "$REAL_PY" "$FAKE_LOG.summary.py" ;;
  "-m pytest"*) echo "3 passed in 0.1s" ;;
  *bench_decode.py*) sleep "${FAKE_SLEEP:-0}"; echo '[{"engine": "eager", "decode_ms_per_step": 20.0, "ratio_to_floor": 3.0, "floor_ms_per_step": 6.5}, {"engine": "static", "decode_ms_per_step": 7.5, "ratio_to_floor": 1.15, "floor_ms_per_step": 6.5}]' ;;
  *) echo '{"device": "fake", "step": 1.5}' ;;
esac
"""


def _run(tmp_path, **env):
    fake = tmp_path / "py"
    fake.write_text(FAKE_PY)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out, log = tmp_path / "out", tmp_path / "argv.log"
    import sys
    e = dict(os.environ, PY=str(fake), OUT=str(out), FAKE_LOG=str(log), REAL_PY=sys.executable, **env)
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, log.read_text().splitlines()


def test_every_part_runs_and_the_summary_is_written(tmp_path):
    out, argv = _run(tmp_path)
    joined = "\n".join(argv)
    for needle in ("pytest -q -p no:cacheprovider --collect-only tests/test_kernels_logprobs.py",
                   "tests/test_decode.py::test_cuda_graph_engine_draws_the_eager_tokens_on_cuda",
                   "bench/bench_kernels.py --n 64", "bench/bench_kernels.py --sampler",
                   "bench/bench_decode.py --shape tiny", "bench/throughput.py --shape tiny"):
        assert needle in joined, needle
    for path in [p.split("::")[0] for p in joined.split() if p.startswith("tests/")]:
        assert (ROOT / path).exists(), path  # every test file the GPU run names is real
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["parts"]) == ["tests", "kernels", "sampler", "decode", "step"]
    assert {n: (p["status"], p["json"] is not None) for n, p in summary["parts"].items()} == {
        "tests": ("ok", False), **{n: ("ok", True) for n in ("kernels", "sampler", "decode", "step")}}
    md = (out / "results.md").read_text()
    assert "| decode | ok |" in md and "static: 7.5 ms/token, 1.15× floor (6.5 ms)" in md
    assert "| tests | ok |" in md and "3 passed" in md


def test_a_hung_part_is_cut_off_and_the_budget_caps_the_rest(tmp_path):
    """decode hangs: with 15 s of budget it gets min(90, left) ≈ 15 s, is killed and reported; the step after it
    finds the budget spent and is skipped — the call still ends, with a summary."""
    out, argv = _run(tmp_path, BUDGET_S="15", FAKE_SLEEP="600")
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert parts["decode"]["status"] == "timed out" and parts["decode"]["seconds"] <= 16
    assert parts["step"]["status"] == "skipped"
    assert not any("throughput.py" in a for a in argv)
    assert "| decode | timed out |" in (out / "results.md").read_text()
