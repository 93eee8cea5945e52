#!/usr/bin/env bash
# Session 22 (issue 6), run 182 (bare machine, no vLLM): after the raw current stream and the kept
# unsupported() answers, the CUDA kernel tests and host_overhead.py again (both launch paths).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda or launch" > $R/tests_cuda.log 2>&1
echo "cuda tests exit $?"; tail -2 $R/tests_cuda.log
timeout 150 python3 benchmarks/host_overhead.py --rows 64,128 --out $R/host.json > $R/host.log 2>&1
echo "host_overhead exit $?"; grep -E "^R=|cells/torch" $R/host.log
