#!/usr/bin/env bash
# Lease 3 of session 13 (issue 6): the one-launch decode at head_dim 64 with MIN_PROGRAMS and
# fence.acq_rel (after run 100). GPU tests, ab7.py (patches of it), time per launch, and the
# decode benchmark of this tree and of 8c6ad54 (old/, as in s10.sh) in one call.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24d
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or split_count or (decode_matches and (hilo or tmwhb))" 2>&1 | tail -8 | tee "$R/tests.log"
timeout 120 python3 $D/ab7.py 2>&1 | grep -v Warn | tee "$R/ab7.log"
timeout 100 python3 benchmarks/results/h100-2026-11-24b/prof.py smollm2:k2v2:32 smollm2:k2v2:64 smollm2:k4v4:32 smollm2:k4v4:64 qwen3-4b:k2v2:32 2>&1 | grep -v Warn | tee "$R/prof.log"
for tree in new old; do
  script=benchmarks/decode_attention.py; [ $tree = old ] && script=$D/old/benchmarks/decode_attention.py
  PYTHONPATH= timeout 120 python3 $script --variants cuda --methods k2v2,k4v4 --contexts 4096,32768 \
    --batches 1,32,64 --no-flush --out "$R/decode_$tree.json" 2>&1 | tee "$R/decode_$tree.log" | tail -13
done
