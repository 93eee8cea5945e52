#!/usr/bin/env bash
# Session 18 (issue 6), run 145, same machine as run 143 (commit 127e6ae): the rest of run 143's checks,
# which ran out of time there: the CUDA tests of the new path (only those files), and the prefix-hit
# greedy smoke for k2v2 with decode graphs (the engine start alone takes ~60 s).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_triton_dequant.py tests/test_kvcache_triton.py > $R/tests.log 2>&1
echo "tests exit $?"; tail -3 $R/tests.log
KVARN_DECODE_GRAPHS=1 timeout 170 python3 tests/prefix_hit_smoke.py /tmp/models/smollm2-135m .gpuwork/gsm8k_test.jsonl k2v2 \
  > $R/prefix_k2v2.log 2>&1
echo "prefix smoke k2v2 exit $?"; grep "prompt \|generate" $R/prefix_k2v2.log | tail -4
