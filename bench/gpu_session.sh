#!/usr/bin/env bash
# Everything a lent H100/H200 should run (its image has torch, triton, transformers, peft, pytest; nothing can be
# fetched there). The device tool allows 10 minutes a call, so two calls from the repo root ($OUT is set there):
#     bash bench/gpu_session.sh check        # device info, GPU correctness tests, kernel benchmark   (~5 min)
#     bash bench/gpu_session.sh step         # Qwen3-14B-shaped GRPO step, fused vs reference, + plan (~8 min)
# Writes into $OUT: gpu_tests.txt, kernels.txt (+ .json), throughput_14b.txt (+ .json, .png), memory_14b.txt;
# copy the figures, with the device name and date printed at the top, into bench/RESULTS.md.
set -u
STAGE=${1:-check}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
PY=${PY:-python3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; $PY -c \
  "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } \
  | tee "$OUT/device.txt"
if [ "$STAGE" = check ]; then
# 1. correctness on the GPU: kernels (Triton for real, fp64 references), log-prob paths and the loss math
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_kernels_logprobs.py tests/test_kernels_linear.py \
  tests/test_logprobs.py tests/test_loss.py 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
# 2. kernel timing, TFLOP/s / GB/s against measured ceilings, extra peak memory (N = 4k, 16k, 64k; H=5120, V=151,936)
timeout 300 $PY bench/bench_kernels.py 2>&1 | tee "$OUT/kernels.txt" | tail -40
tail -1 "$OUT/kernels.txt" > "$OUT/kernels.json"
fi
if [ "$STAGE" = step ]; then
# 3. the paper's step on a Qwen3-14B-shaped random model: fused vs reference log-probs, with the planner beside it
timeout 500 $PY bench/throughput.py --shape qwen3-14b --compare --out "$OUT" 2>&1 | tee "$OUT/throughput_14b.txt" | tail -60
tail -1 "$OUT/throughput_14b.txt" > "$OUT/throughput_14b.json"
$PY bench/memory.py --shape qwen3-14b --budget-gb 96 --rollout-batch 24 --prompt-len 512 > "$OUT/memory_14b.txt" 2>&1
fi
