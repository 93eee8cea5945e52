#!/usr/bin/env bash
# Session 20 (issue 6), runs 162-163: the decode plan with slot lookups by array (this tree) against
# 790fb5b's (dict lookups per row): plan_step.py A/B on the H100 host, then the 8-shot job's k2v2 at
# 128 sequences with kvarn's phase clocks, one engine per tree, in the order given ("new old", ...).
# .gpuwork/head/ holds 790fb5b's staging.py, graph.py and backend.py.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
if [ "${3:-}" != "noplan" ]; then
  for rows in 64 128; do
    python3 benchmarks/plan_step.py --rows $rows --baseline .gpuwork/staging_790fb5b.py --rounds 7 2>&1 | tee -a $R/plan_ab.log
  done
fi
mkdir -p /tmp/newtree && cp kvarn_cli/kvcache/{staging,graph,backend}.py /tmp/newtree/
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
for T in ${2:-new old}; do
  if [ $T = old ]; then cp .gpuwork/head/*.py kvarn_cli/kvcache/; else cp /tmp/newtree/*.py kvarn_cli/kvcache/; fi
  timeout ${4:-200} python3 benchmarks/profile_admission.py $A --preset k2v2 --phases-only > $R/phases_$T.log 2>&1
  echo "$T exit $?"; grep -E "^preset|^timed pass|^phase pass" $R/phases_$T.log | cut -c1-330
done
cp /tmp/newtree/*.py kvarn_cli/kvcache/
