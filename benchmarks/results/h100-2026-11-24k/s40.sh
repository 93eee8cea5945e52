#!/usr/bin/env bash
# Session 20 (issue 6), runs 160-161: the 8-shot job's decode steps at 128 sequences, host work side
# by side: fp8 and k2v2 on each of vLLM's model runners (V2: fp8's default; V1: kvarn's), timed
# pass + cProfile over sampled decode steps (+ kvarn's phase clocks). Usage: s40.sh OUT "presets"
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
for P in ${2:-fp8 k2v2}; do
  L=$(echo $P | tr ':' '_')
  X=""; case $P in k*) X="--phases-only";; esac
  timeout ${3:-280} python3 benchmarks/profile_admission.py $A --preset $P --decode-cprofile $X --steps 20 --top 45 > $R/prof_$L.log 2>&1
  echo "$P exit $?"; grep -E "^preset|^timed pass|^phase pass|^cProfile" $R/prof_$L.log | cut -c1-700
done
