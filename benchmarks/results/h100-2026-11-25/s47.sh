#!/usr/bin/env bash
# Session 21 (issue 6), runs 175-176: the SmolLM2 1k job at 1 GiB (runs 131, 135-139: 128 GSM8K chats,
# 1,024 new tokens each) after decode-only steps are planned straight into the graph buffers,
# fp8 against k2v2-g64, one engine each, in the order given. Usage: s47.sh OUT fp8,k2v2-g64
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 540 python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
  --presets ${2:-fp8,k2v2-g64} --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 --passes 2 --warmup-prompts 8 \
  --timeout-s 250 --out $R/e2e1k.json > $R/e2e1k.log 2>&1
echo "e2e exit $?"; grep -vE "^PHASE|INFO|WARNING|^\{" $R/e2e1k.log | tail -4
python3 -c "
import json; d = json.load(open('$R/e2e1k.json'))
for r in d['results']:
    print(r['preset'], r.get('max_num_seqs'), r.get('peak_running'), r.get('preemptions'), [(p['tokens_per_s'], p['median_step_ms'], p['steps'], p['preemptions']) for p in r.get('passes', [])], r.get('error', ''))"
