#!/usr/bin/env bash
# Session 19 (issue 6), run 157: where a k2v2 prefill step's host time goes, by kvarn phase (wall clocks,
# profile_admission.py --phases-only), on the 8-shot job at 64 sequences as runs 150-154.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
for p in ${2:-k2v2}; do
  timeout ${3:-250} python3 benchmarks/profile_admission.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
    --preset $p --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
    --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 64 --phases-only > $R/phases_${p//:/_}.log 2>&1
  echo "$p exit $?"; grep -E "^preset|^timed pass|^phase pass" $R/phases_${p//:/_}.log | cut -c1-1500
done
