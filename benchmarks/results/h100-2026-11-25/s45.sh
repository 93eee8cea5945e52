#!/usr/bin/env bash
# Session 21 (issue 6), runs 171-172: the 8-shot job at 128 sequences (all 128 requests at once),
# one engine each, in the order given: k2v2 with decode steps planned straight into the graph
# buffers ("new"), k2v2 at ebe8960 ("old", .gpuwork/head_ebe8960/), and fp8. Usage: s45.sh OUT "new old fp8"
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
mkdir -p /tmp/newtree && cp kvarn_cli/kvcache/{staging,graph,backend}.py /tmp/newtree/
for T in ${2:-new old fp8}; do
  if [ $T = old ]; then cp .gpuwork/head_ebe8960/*.py kvarn_cli/kvcache/; else cp /tmp/newtree/*.py kvarn_cli/kvcache/; fi
  P=k2v2; [ $T = fp8 ] && P=fp8
  timeout 200 python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
    --presets $P --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
    --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128 --baseline-max-num-seqs 128 --passes 2 --timeout-s 180 \
    --out $R/e2e_$T.json > $R/e2e_$T.log 2>&1
  echo "$T exit $?"
  python3 -c "
import json; d = json.load(open('$R/e2e_$T.json'))
for r in d['results']:
    print('$T', r['preset'], r.get('peak_running'), r.get('preemptions'), [(p['tokens_per_s'], p['median_step_ms'], p['max_step_ms'], p['stall_s'], p['steps']) for p in r.get('passes', [])], r.get('error', ''))"
done
cp /tmp/newtree/*.py kvarn_cli/kvcache/
