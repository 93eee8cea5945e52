#!/usr/bin/env bash
# Session 19 (issue 6), run 150: where the 8-shot job's admission steps go (benchmarks/profile_admission.py),
# k2v2 and fp8 at the same 64 sequences, same prompts and budget as runs 146-147.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
for p in ${2:-k2v2 fp8}; do
  timeout ${3:-220} python3 benchmarks/profile_admission.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
    --preset $p --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 \
    --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 64 --steps ${4:-12} --top 35 > $R/admit_${p//:/_}.log 2>&1
  echo "$p exit $?"; grep -E "^preset|^timed pass|^torch.profiler|^cProfile" $R/admit_${p//:/_}.log
done
