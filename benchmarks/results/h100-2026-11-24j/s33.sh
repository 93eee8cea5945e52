#!/usr/bin/env bash
# Session 19 (issue 6), run 153: kernels/triton_pack.py (continued chunks' slot/tile rows copied and
# K/V/queries/output rotated in one launch each). 1. CUDA tests of the new kernels and the packed path;
# 2. benchmarks/prefill_continued.py: one layer, packed with the kernels vs packed with PyTorch vs the PyTorch path.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_pack.py tests/test_triton_dequant.py \
  tests/test_kvcache_triton.py -k "pack or rows or continued or cuda" > $R/tests.log 2>&1
echo "tests exit $?"; tail -3 $R/tests.log
timeout 200 python3 benchmarks/prefill_continued.py --rows 1,16,64 > $R/prefill.log 2>&1
echo "prefill exit $?"; tail -9 $R/prefill.log
