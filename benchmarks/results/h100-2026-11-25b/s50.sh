#!/usr/bin/env bash
# Session 22 (issue 6), run 178: decode-step time against the rows in the batch, per preset, on the
# SmolLM2 1k job with lengths spread +-50% (so the batch shrinks through each pass): the fit
# ms = per_step + per_row x rows says whether a preset's extra host cost is per step or per row.
# One engine each, in the order given. Usage: s50.sh OUT "k2v2-g64 fp8 fp8:v1 k2v2-g64:v2" [timeout]
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 1024 --length-spread 0.5 --warmup-prompts 8 --steps 20 --top 45"
for P in ${2:-k2v2-g64 fp8 fp8:v1 k2v2-g64:v2}; do
  L=$(echo $P | tr ':' '_'); X="--decode-cprofile"; case $P in k2v2*) X="--phases-only";; esac
  timeout ${3:-130} python3 benchmarks/profile_admission.py $A --preset $P $X > $R/rows_$L.log 2>&1
  echo "$P exit $?"; grep -E "^preset|^timed pass|^phase pass|wall median" $R/rows_$L.log | cut -c1-1500
done
