#!/usr/bin/env bash
# Session 22 (issue 6), run 179: the 8-shot job at 64 sequences (runs 152-157), where steps that admit
# a request run the other rows' decode eagerly in every layer (run 157: 8.18 ms per such step):
# kvarn's phase clocks with the CUDA kernel launched through Launcher and through torch's __call__
# (":torch-launch"), one engine each, in the order given. Usage: s51.sh OUT "k2v2 k2v2:torch-launch"
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 64"
for P in ${2:-k2v2 k2v2:torch-launch}; do
  L=$(echo $P | tr ':' '_')
  timeout ${3:-150} python3 benchmarks/profile_admission.py $A --preset $P --phases-only > $R/eager_$L.log 2>&1
  echo "$P exit $?"; grep -E "^preset|^timed pass|^phase pass" $R/eager_$L.log | cut -c1-1200
done
