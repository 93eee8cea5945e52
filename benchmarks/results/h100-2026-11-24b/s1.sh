#!/usr/bin/env bash
# Lease 1 of session 11 (issue 6): the CUDA split kernel v2 (fewer instructions per block: one
# LOP3 per code pair, one shift per two 2-bit pairs, the 128 offsets taken out by an MMA, block
# multipliers hoisted, paired scale loads, bank-conflict-free code rows). GPU tests, A/B against
# v1 (split_v1.cu, the kernel of 76b5483) at 32k with the split sweep, and Nsight Compute on both.
# Needs only the device image.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24b
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda or rotated" 2>&1 | tail -15 | tee "$R/tests.log"
sed 's/__launch_bounds__(32)/__launch_bounds__(32, 11)/' kvarn_cli/kernels/cuda_decode_split.cu > /tmp/v2m11.cu
timeout 300 python3 $D/ab.py --out "$R/ab.json" v1=$D/split_v1.cu v2=kvarn_cli/kernels/cuda_decode_split.cu v2m11=/tmp/v2m11.cu 2>&1 | tee "$R/ab.log"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
if [ -n "$NCU" ]; then
  for v in v2 v1; do
    src=kvarn_cli/kernels/cuda_decode_split.cu; [ $v = v1 ] && { cp $src /tmp/v2.cu; cp $D/split_v1.cu $src; }
    timeout 120 $NCU --kernel-name kvarn_split --launch-skip 2 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
      --section MemoryWorkloadAnalysis --section InstructionStats \
      python3 benchmarks/profile_decode.py --shape qwen3-4b --method k2v2 --batch 32 --variant cuda > "$R/ncu_$v.txt" 2>&1
    echo "ncu $v exit $?"; grep -E "Duration|DRAM Throughput|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Theoretical Occ|Stall|Block Limit" "$R/ncu_$v.txt" | head -40
    [ $v = v1 ] && cp /tmp/v2.cu $src
  done
fi
