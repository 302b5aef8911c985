#!/usr/bin/env bash
# Everything a lent GPU should run, in ONE device call of at most 8 minutes (from the repo root; $OUT is set there):
#     bash bench/gpu_session.sh                 # on the GPU: ~7 min, every part under its own timeout
#     bash bench/gpu_session.sh --dry-run       # on a CPU: the same parts with tiny shapes, ~2-4 min
# (tests/test_gpu_session.py checks the orchestration itself with a stand-in interpreter, in seconds)
# Parts (each with its own `timeout`, capped by what is left of BUDGET_S, so one hang cannot eat the call):
#   tests     CUDA correctness: Triton kernels (log-probs, fused linear, sampler) vs torch/fp64, static = eager decode
#   kernels   bench/bench_kernels.py (+ --sampler): ms, GB/s vs the measured copy ceiling, extra peak memory
#   decode    bench/bench_decode.py on Qwen3-14B's shape: eager vs static engine, decode ms/token vs the bandwidth floor
#   step      bench/throughput.py on Qwen3-14B's shape, random weights: 1 warm-up + 1 measured GRPO step
# Writes under $OUT: device.txt, <part>.txt (full log), <part>.json (its last JSON line), summary.json (every part's
# rc, seconds, JSON) and results.md (a block for bench/RESULTS.md with device and date). Needs only torch, triton,
# transformers, peft, pytest (torch 2.11 / transformers 5.17 on the device image; nothing is fetched there).
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-450}  # 8 min call limit − start-up and the transfer of $OUT
START=$SECONDS

if [ $DRY = 1 ]; then  # same commands, CPU, tiny shapes; tests only collected (a typo in a path or import shows)
  TESTS_ARGS="--collect-only"
  KERNELS_ARGS="--n 64 --h 32 --v 500 --reps 1"
  SAMPLER_ARGS="--n 3 --v 500 --reps 1"
  DECODE_ARGS="--shape tiny --rows 2 --prompt-len 8 --new-tokens 4 --device cpu"
  STEP_ARGS="--shape tiny --device cpu --prompts 2 --G 2 --prompt-len 8 --completion-len 4 --steps 1 --warmup 1"
  export TRITON_INTERPRET=0 CUDA_VISIBLE_DEVICES=""
else
  TESTS_ARGS=""
  KERNELS_ARGS=""
  SAMPLER_ARGS=""
  # the paper's rollout chunk: 24 rows × 512-token prompts; 128 new tokens keep eager (launch-bound) inside its slot
  DECODE_ARGS="--shape qwen3-14b --rows 24 --prompt-len 512 --new-tokens 128 --lora-r 16"
  # the paper's step shape with 256-token completions (1024 does not fit beside the rest in one 8-minute call)
  STEP_ARGS="--shape qwen3-14b --completion-len 256 --steps 1 --warmup 1"
fi
TESTS="tests/test_kernels_logprobs.py tests/test_kernels_linear.py tests/test_kernels_sampling.py
  tests/test_decode.py::test_cuda_graph_engine_draws_the_eager_tokens_on_cuda"

part() {  # part NAME SECONDS CMD...: run under min(SECONDS, budget left), log to $OUT/NAME.txt, keep its last JSON line
  local name=$1 want=$2 left t0 rc
  shift 2
  left=$((BUDGET_S - (SECONDS - START)))
  [ "$want" -gt "$left" ] && want=$left
  if [ "$want" -le 5 ]; then
    echo "skipped: budget spent" > "$OUT/$name.txt"
    echo "$name 0 -1" >> "$OUT/parts.tsv"
    return
  fi
  echo "== $name (timeout ${want}s): $*"
  t0=$SECONDS
  timeout -k 10 "$want" "$@" > "$OUT/$name.txt" 2>&1
  rc=$?
  echo "$name $((SECONDS - t0)) $rc" >> "$OUT/parts.tsv"
  tail -n 15 "$OUT/$name.txt"
  grep -E '^[[{]' "$OUT/$name.txt" | tail -n 1 > "$OUT/$name.json"
}

: > "$OUT/parts.tsv"
{ date -u +%Y-%m-%dT%H:%MZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no GPU (dry run)"; $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, end=' '); import importlib.util as u; print('triton', __import__('triton').__version__ \
if u.find_spec('triton') else 'none')"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

part tests 150 $PY -m pytest -q -p no:cacheprovider $TESTS_ARGS $TESTS
part kernels 60 $PY bench/bench_kernels.py $KERNELS_ARGS
part sampler 30 $PY bench/bench_kernels.py --sampler $SAMPLER_ARGS
part decode 90 $PY bench/bench_decode.py $DECODE_ARGS
part step 150 $PY bench/throughput.py $STEP_ARGS --out "$OUT"

OUT="$OUT" $PY - <<'EOF'
"""summary.json and results.md from the parts' logs; a part that failed or timed out is reported as such."""
import json, os
from pathlib import Path

out = Path(os.environ["OUT"])
device = (out / "device.txt").read_text().strip().splitlines()
parts = {}
for line in (out / "parts.tsv").read_text().split("\n"):
    if not line.strip():
        continue
    name, secs, rc = line.split()
    js = out / f"{name}.json"
    try:
        data = json.loads(js.read_text()) if js.exists() and js.read_text().strip() else None
    except json.JSONDecodeError:
        data = None
    status = {"0": "ok", "124": "timed out", "137": "killed", "-1": "skipped"}.get(rc, f"failed (rc {rc})")
    parts[name] = {"rc": int(rc), "seconds": int(secs), "status": status, "json": data}
tests = (out / "tests.txt").read_text().strip().splitlines() if (out / "tests.txt").exists() else []
(out / "summary.json").write_text(json.dumps({"device": device, "parts": parts,
                                              "tests_tail": tests[-1:] if tests else []}, indent=1))
md = [f"### GPU session — {device[1] if len(device) > 1 else '?'}, {device[0] if device else '?'}", "",
      f"`{device[2] if len(device) > 2 else ''}` · `bash bench/gpu_session.sh` (one call)", "",
      "| part | status | s | result |", "|---|---|---:|---|"]
for name, p in parts.items():
    note = ""
    if name == "tests":
        note = tests[-1] if tests else ""
    elif name == "decode" and isinstance(p["json"], list):
        note = "; ".join(f"{r['engine']}: {r['decode_ms_per_step']:.1f} ms/token, {r['ratio_to_floor']:.2f}× floor "
                         f"({r['floor_ms_per_step']:.1f} ms)" for r in p["json"])
    elif isinstance(p["json"], dict):
        note = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(
            (p["json"].get("summary") or p["json"]).items())[:6] if not isinstance(v, (dict, list)))
    md.append(f"| {name} | {p['status']} | {p['seconds']} | {note} |")
(out / "results.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "total $((SECONDS - START)) s; files in $OUT"
