#!/usr/bin/env bash
# Lease 4 of session 14 (issue 6), kernel only: GPU kernel tests and the decode benchmark on the
# committed tree (tickets at head_dim 64, two waves for k4v4 at 128).  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
echo "tree of ${TREE:-a13d84b}"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda or split_count" 2>&1 | tail -4 | tee "$R/tests.log"
timeout 250 python3 benchmarks/decode_attention.py --variants cuda --methods k2v2,k4v4 --contexts 4096,32768 \
  --batches 1,8,32,64 --no-flush --out "$R/decode.json" 2>&1 | tee "$R/decode.log" | tail -17
