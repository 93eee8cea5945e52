#!/usr/bin/env bash
# Session 18 (issue 6), run 143: commit 127e6ae (continued prefill chunks: records dequantized by one
# Triton launch into packed bf16 rows, then one FlashAttention call).
# 1. CUDA tests: the dequant kernel, the continued path against the float32 path, the fresh path,
#    the staging and decode kernels; 2. benchmarks/prefill_continued.py; 3. prefix-hit greedy smoke
#    (the second pass's prefills continue after cache hits) for k2v2 and k2v2-g64, decode graphs on.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_dequant.py tests/test_kvcache_triton.py \
  tests/test_triton_stage.py tests/test_triton_kernels.py > $R/tests.log 2>&1
echo "tests exit $?"; tail -4 $R/tests.log
timeout 150 python3 benchmarks/prefill_continued.py --rows 1,16,64 > $R/prefill.log 2>&1
echo "prefill exit $?"; tail -9 $R/prefill.log
for p in k2v2 k2v2-g64; do
  KVARN_DECODE_GRAPHS=1 timeout 120 python3 tests/prefix_hit_smoke.py /tmp/models/smollm2-135m .gpuwork/gsm8k_test.jsonl $p \
    > $R/prefix_$p.log 2>&1
  echo "prefix smoke $p exit $?"; grep "prompt \|generate" $R/prefix_$p.log | tail -4
done
