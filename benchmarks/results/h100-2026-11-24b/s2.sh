#!/usr/bin/env bash
# Lease 2 of session 11 (issue 6): the CUDA split kernel v3 (v2 of run 84 writing only the GQA
# partial rows; the reduce kernel masks the rest). GPU tests (the cuda variant and the Triton
# variants through the masked reduce), the split-count sweep at 32k (sweep.py), Nsight Compute
# on the SmolLM2 shape at a one-wave split count. Needs only the device image.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24b
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "cuda or rotated or (decode_matches and (hilo or tmwhb))" 2>&1 | tail -8 | tee "$R/tests.log"
timeout 300 python3 $D/sweep.py --out "$R/sweep.json" 2>&1 | tee "$R/sweep.log"
S=$(python3 - <<'PY'
import torch
from kvarn_cli.kernels import cuda_decode, make_quantizer
from kvarn_cli.kernels.triton_common import kernel_layout
qz = make_quantizer("k2v2", head_dim=64, block_size=128)
n = cuda_decode.resident_per_sm(kernel_layout(qz.layout), qz.layout, 3, 16, 0)
print(max(1, n * torch.cuda.get_device_properties(0).multi_processor_count // 96))
PY
)
echo "smollm2 B=32 one-wave splits: $S"
timeout 100 ncu --kernel-name kvarn_split --launch-skip 2 --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section MemoryWorkloadAnalysis --section InstructionStats \
  python3 benchmarks/profile_decode.py --shape smollm2 --method k2v2 --batch 32 --variant cuda --splits $S > "$R/ncu_smollm2.txt" 2>&1
echo "ncu exit $?"; grep -E "Duration|DRAM Throughput|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Theoretical Occ|Block Limit (Reg|Sha)|Grid Size" "$R/ncu_smollm2.txt"
