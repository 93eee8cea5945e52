#!/usr/bin/env bash
# Run 83 (2026-11-24): after the review refactor (shared lane reductions in the .cu, the Hadamard
# matrix passed down): the CUDA kernel's GPU tests, the rotated-query test, and the 32k timing.
# Needs only the device image.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
git log -1 --format='commit %h %s' 2>/dev/null || true
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or (decode_matches and hilo)" 2>&1 | tail -6 | tee "$R/tests.log"
timeout 200 python3 benchmarks/decode_attention.py --variants cuda,tmwhb --methods k2v2 --contexts 32768 \
  --batches 1,32,64 --no-flush --out "$R/decode.json" 2>&1 | tee "$R/decode.log" | tail -8
