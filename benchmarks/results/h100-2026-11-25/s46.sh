#!/usr/bin/env bash
# Session 21 (issue 6), run 173: decode-only steps planned straight into the CUDA-graph buffers
# against plan() + load, in ONE engine (profile_admission.py --ab-direct: ABBA passes over the same
# prompts), since runs 170-172 showed host speed moving between engines by more than the difference.
# Then fp8's timed pass at the same concurrency for reference. Usage: s46.sh OUT [rounds]
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
timeout 300 python3 benchmarks/profile_admission.py $A --preset k2v2 --ab-direct ${2:-3} > $R/ab_k2v2.log 2>&1
echo "k2v2 ab exit $?"; grep -E "^preset|^ab " $R/ab_k2v2.log
timeout 150 python3 benchmarks/profile_admission.py $A --preset fp8 --decode-cprofile --steps 1 > $R/fp8.log 2>&1
echo "fp8 exit $?"; grep -E "^preset|^timed pass" $R/fp8.log | cut -c1-300
