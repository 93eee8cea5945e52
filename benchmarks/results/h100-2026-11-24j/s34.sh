#!/usr/bin/env bash
# Session 19 (issue 6), run 154: the 8-shot GSM8K job of runs 146/152 (SmolLM2, 1 GiB of KV, 128 prompts,
# 512 +- 50% tokens), every preset at 64 sequences: fp8, k2v2 (triton_pack), k2v2:torch-pack (PyTorch packing).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout ${3:-570} python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
  --presets ${2:-k2v2,k2v2:torch-pack,fp8} --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
  --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 64 --baseline-max-num-seqs 64 --passes 2 --timeout-s ${4:-180} \
  --out $R/e2e.json > $R/e2e.log 2>&1
echo "e2e exit $?"; grep -vE "^PHASE|INFO|WARNING|^\{" $R/e2e.log | tail -12
python3 -c "
import json; d = json.load(open('$R/e2e.json'))
for r in d['results']:
    print(r['preset'], [(p['tokens_per_s'], p['median_step_ms'], p['max_step_ms'], p['stall_s']) for p in r.get('passes', [])], r.get('error', ''))"
