#!/usr/bin/env bash
# Lease 3 of session 11 (issue 6): the reduce kernel with four partials' loads in flight and
# the CUDA kernel's occupancy-based split count (default_splits). GPU tests, the split sweep
# (sweep.py), the time per launch (prof.py) and the split kernel's stall reasons (Nsight
# Compute) on the SmolLM2 shape. Needs only the device image.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24b
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or split_count or (decode_matches and (hilo or tmwhb))" 2>&1 | tail -8 | tee "$R/tests.log"
timeout 100 python3 $D/prof.py smollm2:k2v2:32 smollm2:k2v2:64 qwen3-4b:k2v2:32 qwen3-4b:k2v2:64 qwen3-4b:k4v4:32 2>&1 | tee "$R/prof.log"
timeout 300 python3 $D/sweep.py --out "$R/sweep.json" 2>&1 | tee "$R/sweep.log"
timeout 100 ncu --kernel-name kvarn_split --launch-skip 2 --launch-count 1 \
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__warps_active.avg.per_cycle_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum' \
  python3 benchmarks/profile_decode.py --shape smollm2 --method k2v2 --batch 32 --variant cuda > "$R/ncu_stalls_smollm2.txt" 2>&1
echo "ncu exit $?"; grep -E "ratio|pct|per_cycle|duration" "$R/ncu_stalls_smollm2.txt" | awk '$NF+0 > 0.05 || /pct|duration|per_cycle/' | head -40
