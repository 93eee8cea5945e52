#!/usr/bin/env bash
# Session 23 (issue 6), runs 184-185: the SmolLM2 1k job at 1 GiB (128 GSM8K chats, 1,024 new tokens
# each, runs 175-176) with the engine core in its own process (kvarn run's configuration): per preset,
# step time against the rows that got a token (e2e_gpu's by_rows), and a third pass with vLLM's torch
# profiler on in the engine core for 30 steps from step 400 (GPU busy per step against the step).
# One engine each, in the order given. Usage: s53.sh OUT fp8,k2v2-g64,fp8:v1
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout ${3:-550} python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
  --presets ${2:-fp8,k2v2-g64,fp8:v1} --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 --passes 2 --warmup-prompts 8 \
  --profile-steps 30 --profile-at 400 --timeout-s 200 --out $R/e2e1k.json > $R/e2e1k.log 2>&1
echo "e2e exit $?"; grep -vE "^PHASE|INFO|WARNING|^\{" $R/e2e1k.log | tail -5
rm -f $R/e2e1k_trace_*/*.json.tmp 2>/dev/null
python3 - "$R/e2e1k.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d['results']:
    print(r['preset'], 'seqs', r.get('max_num_seqs'), 'peak', r.get('peak_running'), r.get('error', ''))
    for p in r.get('passes', []):
        b = p.get('by_rows', {})
        print('  pass', p['tokens_per_s'], 'tok/s', p['median_step_ms'], 'ms', p['steps'], 'steps', p['preemptions'], 'preempt',
              'fit', b.get('fit_ms'), 'buckets', b.get('buckets'))
    pr = r.get('profile') or {}
    s = pr.get('summary', {})
    print('  profile', pr.get('error', ''), 'rows', pr.get('rows_median'), 'profiled step ms', pr.get('profiled_step_ms_median'),
          'gpu', {k: v for k, v in s.get('gpu', {}).items() if k != 'streams'})
    for k, v in list(s.get('host_calls', {}).items())[:6]:
        print('    call', k, v)
    for k, v in list(s.get('host_regions', {}).items())[:10]:
        print('    region', k[:70], v)
PY
du -sh $R/e2e1k_trace_* 2>/dev/null; find $R -name "*.pt.trace.json" -exec gzip {} \; ; find $R -name "*.pt.trace.json.gz" -size +30M -delete
