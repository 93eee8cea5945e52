#!/usr/bin/env bash
# Session 20 (issue 6), runs 167-168: the 8-shot job with 128 sequences for k2v2 and fp8 (all 128 requests at
# once), after the plan rework (758e4b4): run 158 had k2v2 at 0.69x fp8. Usage: s43.sh OUT presets [limit] [pass limit]
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout ${3:-570} python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
  --presets ${2:-k2v2,fp8} --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
  --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128 --baseline-max-num-seqs 128 --passes 2 --timeout-s ${4:-200} \
  --out $R/e2e.json > $R/e2e.log 2>&1
echo "e2e exit $?"; grep -vE "^PHASE|INFO|WARNING|^\{" $R/e2e.log | tail -6
python3 -c "
import json; d = json.load(open('$R/e2e.json'))
for r in d['results']:
    print(r['preset'], r.get('num_blocks'), r.get('peak_running'), r.get('preemptions'), [(p['tokens_per_s'], p['median_step_ms'], p['max_step_ms'], p['stall_s'], p['preemptions']) for p in r.get('passes', [])], r.get('error', ''))"
