#!/usr/bin/env bash
# Session 17 (issue 6), lease 3, after the vLLM 0.26 carry: kvarn on vLLM's V2 model runner,
# through the host mirror of its block tables (vllm_compat.mirror_v2_block_tables). Run 136
# found fp8 at 10.1 ms per step on the V1 runner kvarn uses, against 4.8-5.3 on V2 (128 sequences).
# Stage a: profile_engine step medians, k2v2-g64 on V2 (does the backend run there at all?).
# Stage e: the SmolLM2 1k job at 1 GiB: fp8 (V2, vLLM's default), k2v2-g64 on V2, k2v2-g64 on V1.
# $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
case $stage in
a) VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_USE_V2_MODEL_RUNNER=1 timeout 220 python3 benchmarks/profile_engine.py \
     --model /tmp/models/smollm2-135m --preset k2v2-g64 --prompts 128 --prompt-tokens 92 --max-tokens 1024 \
     --kv-cache-memory-mib 4096 --no-cprofile > $R/prof_g64_v2.log 2>&1
   echo "exit $?"; grep -E "pass:|waits for the GPU|Error|error" $R/prof_g64_v2.log | cut -c1-400 | tail -12 ;;
e) timeout 560 python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
     --data .gpuwork/gsm8k_test.jsonl --presets fp8,k2v2-g64:v2,k2v2-g64 --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 \
     --passes 2 --warmup-prompts 8 --timeout-s 175 --out $R/e2e1k.json > $R/e2e1k.log 2>&1
   echo "e2e exit $?"; python3 .gpuwork/summ.py $R/e2e1k.json | cut -c1-600 ;;
esac
