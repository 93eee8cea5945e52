#!/usr/bin/env bash
# Session 17 (issue 6), lease 4: commit 5e8a07a (the V2 stack walk gated, plan step 4 tidied) still
# runs k2v2-g64 on both model runners without a GPU wait in the builder; greedy tokens printed.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
for v in 1 0; do
  VLLM_USE_V2_MODEL_RUNNER=$v timeout 200 python3 benchmarks/profile_engine.py --model /tmp/models/smollm2-135m --preset k2v2-g64 \
    --prompts 64 --prompt-tokens 92 --max-tokens 256 --kv-cache-memory-mib 2048 --no-cprofile > $R/prof_g64_v2runner$v.log 2>&1
  echo "V2 runner=$v exit $?"; grep -E "pass:|waits for the GPU|Model Runner|Error" $R/prof_g64_v2runner$v.log | cut -c1-250
done
