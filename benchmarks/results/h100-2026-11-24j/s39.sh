#!/usr/bin/env bash
# Session 19 (issue 6), run 159: k2v2's decode steps at 128 sequences (run 158: 7.3-8.2 ms median against
# fp8's 3.3-5.5 ms): profile_admission.py at 128 sequences, timed pass + torch.profiler + slowest steps,
# then the phase pass (build = plan per step).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --preset k2v2 --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
timeout ${2:-200} python3 benchmarks/profile_admission.py $A --steps 8 --top 30 > $R/profile128.log 2>&1
echo "profile exit $?"; grep -E "^preset|^timed pass|^torch.profiler|^cProfile" $R/profile128.log | cut -c1-900
