#!/usr/bin/env bash
# Session 20 (issue 6), run 165: where the rest of k2v2's metadata build goes at 128 sequences (the
# 8-shot job's decode steps): phase clocks on the build's parts (flush_last, host_table, plan, load),
# k2v2 on V1 and V2 in one lease.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
for P in ${2:-k2v2 k2v2:v2}; do
  L=$(echo $P | tr ':' '_')
  timeout ${3:-200} python3 benchmarks/profile_admission.py $A --preset $P --phases-only > $R/phases_$L.log 2>&1
  echo "$P exit $?"; grep -E "^preset|^timed pass|^phase pass" $R/phases_$L.log | cut -c1-600
done
