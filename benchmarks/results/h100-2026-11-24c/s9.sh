#!/usr/bin/env bash
# Lease 5 of session 12 (issue 6), as lease 4 (s8.sh) but the reduce kernel merges by tiles only where it reads no slot: at head_dim 64 only, the splits of the CUDA kernel attend to the 16-bit slots
# (a slot's split takes cuda_decode.slot_blocks fewer blocks); at 128 the kernel is run 88's
# and the reduce kernel reads the slots. The reduce kernel merges each head's partials as
# one tile. GPU tests, time per launch (session 11's prof.py) and the decode benchmark of this tree and of 5036b9f (old/, from
# `git archive 5036b9f kvarn_cli benchmarks/decode_attention.py | tar -x -C $D/old`, not kept) in one call.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24c
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or split_count or (decode_matches and (hilo or tmwhb))" 2>&1 | tail -8 | tee "$R/tests.log"
timeout 100 python3 benchmarks/results/h100-2026-11-24b/prof.py smollm2:k2v2:32 smollm2:k2v2:64 qwen3-4b:k2v2:32 qwen3-4b:k2v2:64 qwen3-4b:k4v4:32 2>&1 | grep -v Warn | tee "$R/prof.log"
for tree in new old; do
  script=benchmarks/decode_attention.py; [ $tree = old ] && script=$D/old/benchmarks/decode_attention.py
  PYTHONPATH= timeout 120 python3 $script --variants cuda --methods k2v2,k4v4 --contexts 4096,32768 \
    --batches 1,32,64 --no-flush --out "$R/decode_$tree.json" 2>&1 | tee "$R/decode_$tree.log" | tail -13
done
