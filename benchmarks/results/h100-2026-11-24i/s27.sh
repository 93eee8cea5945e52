#!/usr/bin/env bash
# Session 18 (issue 6), run 142: commit ba6f852 (continued prefill chunks in one FlashAttention call).
# 1. the CUDA tests of the new path and the staging/triton suites on the GPU;
# 2. benchmarks/prefill_continued.py: one layer's attention of continued chunks, both paths.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
git log -1 --format='commit %h %s' 2>/dev/null
python3 -c "import torch, vllm; print(torch.__version__, vllm.__version__, torch.cuda.get_device_name())"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_triton.py tests/test_kvcache_staging.py -k "cuda or continued" > $R/tests.log 2>&1
echo "tests exit $?"; tail -5 $R/tests.log
timeout 200 python3 benchmarks/prefill_continued.py --rows 1,16,64 > $R/prefill.log 2>&1
echo "prefill exit $?"; cat $R/prefill.log | tail -20
