#!/usr/bin/env bash
# Session 17 (issue 6), lease 2, after the vLLM 0.26 carry: the host plan rework (a7a8ef0) on the
# SmolLM2 1k job. Stage h: plan_step on this host (runs 133: 0.94 / 0.99 ms per step before).
# Stage e: the 1k job at 1 GiB, fp8 against k2v2-g64 and k2v2 (as runs 131, s22.sh stage e).
# Stage v: profile_engine's step medians at 128 sequences: fp8 on vLLM's V1 runner (the one kvarn
# uses) beside fp8 on V2 (its default) and k2v2-g64, no cProfile.
# Stage k: the backend's GPU tests.
# $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
prof() {  # $1 preset, $2 log name, env in front
  timeout 200 python3 benchmarks/profile_engine.py --model /tmp/models/smollm2-135m --preset $1 --prompts 128 \
    --prompt-tokens 92 --max-tokens 1024 --kv-cache-memory-mib 4096 --no-cprofile > $R/$2.log 2>&1
  echo "$2 exit $?"; grep -E "pass:|waits for the GPU" $R/$2.log | cut -c1-300
}
case $stage in
h) for g in 128 64; do python3 benchmarks/plan_step.py --rows 128 --block-size $g --width $(( 1124 / g + 1 )) --prompt 92 --steps 1000; done 2>&1 | tee $R/plan.log ;;
e) timeout 480 python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
     --data .gpuwork/gsm8k_test.jsonl --presets fp8,k2v2-g64,k2v2 --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 \
     --passes 2 --warmup-prompts 8 --timeout-s 150 --out $R/e2e1k.json > $R/e2e1k.log 2>&1
   echo "e2e exit $?"; python3 .gpuwork/summ.py $R/e2e1k.json | cut -c1-700 ;;
v) export VLLM_ENABLE_V1_MULTIPROCESSING=0
   VLLM_USE_V2_MODEL_RUNNER=0 prof fp8 prof_fp8_v1
   prof fp8 prof_fp8_v2
   prof k2v2-g64 prof_g64 ;;
k) timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_triton.py 2>&1 | tail -8 | tee $R/tests_kvcache.log ;;
esac
