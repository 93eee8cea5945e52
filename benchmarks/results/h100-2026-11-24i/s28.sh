#!/usr/bin/env bash
# Session 18 (issue 6), run 144: an 8-shot GSM8K job on SmolLM2 (every prompt starts with the same
# ~1,290 tokens of worked examples, held by vLLM's prefix cache), 1 GiB of KV: fp8, k2v2, and k2v2
# with continued chunks on the PyTorch path (:torch-prefill, KVARN_BATCHED_PREFILL=0).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
git log -1 --format='commit %h %s' 2>/dev/null
timeout ${3:-570} python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
  --presets ${2:-fp8,k2v2,k2v2:torch-prefill} --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
  --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 64 --passes ${5:-2} --timeout-s ${4:-180} --out $R/e2e.json > $R/e2e.log 2>&1
echo "e2e exit $?"; grep -vE "^PHASE|INFO|WARNING" $R/e2e.log | tail -30
