#!/usr/bin/env bash
# Session 22 (issue 6), run 177: the CUDA split kernel launched through cuda_decode.Launcher (cells
# written in place) instead of torch's __call__: the kernel and plugin tests on the GPU, then the
# host time per eager launch, both paths in alternating rounds of one process (host_overhead.py).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py > $R/tests_kernels.log 2>&1
echo "kernel tests exit $?"; tail -2 $R/tests_kernels.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_plugin.py > $R/tests_plugin.log 2>&1
echo "plugin tests exit $?"; tail -2 $R/tests_plugin.log
timeout 150 python3 benchmarks/host_overhead.py --rows 64,128 --out $R/host.json > $R/host.log 2>&1
echo "host_overhead exit $?"; head -30 $R/host.log
