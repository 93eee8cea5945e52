#!/usr/bin/env bash
# Lease 2 of session 14 (issue 6): the one-launch decode with blocks dealt out by tickets.
# GPU tests of the CUDA kernel, then ab8.py (new against head.cu in one process).  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda" 2>&1 | tail -15 | tee "$R/tests.log"
timeout 420 python3 benchmarks/results/h100-2026-11-24e/${AB:-ab8}.py 2>&1 | tee "$R/${AB:-ab8}.log"
