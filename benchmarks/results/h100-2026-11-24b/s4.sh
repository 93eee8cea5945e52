#!/usr/bin/env bash
# Lease 4 of session 11 (issue 6): launch bounds at D = 64 (v4: 16 programs per SM, 128
# registers; v4m20: 20, 96 registers with a small spill; v3: none, run 86), the reduce kernel
# with 8 partials in flight at D = 64 and both side slots unrolled, cuda_splits normalized to
# whole blocks per split. GPU tests, time per launch, A/B at default_splits. $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24b
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or split_count or (decode_matches and (hilo or tmwhb))" 2>&1 | tail -8 | tee "$R/tests.log"
timeout 100 python3 $D/prof.py smollm2:k2v2:32 smollm2:k2v2:64 qwen3-4b:k2v2:32 qwen3-4b:k2v2:64 2>&1 | grep -v Warn | tee "$R/prof.log"
sed 's/constexpr int MIN_CTAS = D == 64 ? 16 : 1;/constexpr int MIN_CTAS = D == 64 ? 20 : 1;/' kvarn_cli/kernels/cuda_decode_split.cu > /tmp/v4m20.cu
grep -c "D == 64 ? 20" /tmp/v4m20.cu
timeout 300 python3 $D/ab4.py --out "$R/ab4.json" v4=kvarn_cli/kernels/cuda_decode_split.cu v3=$D/split_v3.cu v4m20=/tmp/v4m20.cu 2>&1 | tee "$R/ab4.log"
