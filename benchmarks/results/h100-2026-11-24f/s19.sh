#!/usr/bin/env bash
# Leases 1-2 of session 15 (issue 6), kernel only: GPU kernel tests of the working tree (table
# entries read before nblk arrives: spec.diff, run 119), then ab10.py (variants of the prologue
# and merge; run 120: AB=ab11, the tree of f9be4cd, merge widths for 2-bit K codes).
# $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda or split_count" 2>&1 | tail -4 | tee "$R/tests.log"
timeout 400 python3 benchmarks/results/h100-2026-11-24f/${AB:-ab10}.py 2>&1 | tee "$R/${AB:-ab10}.log"
