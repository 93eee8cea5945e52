#!/usr/bin/env bash
# Session 21 (issue 6), run 170: decode-only steps planned straight into the CUDA-graph buffers
# (plan_decodes + load_decodes) against plan + load: plan_step.py on the H100 host, the plugin and
# staging tests on the GPU, then the 8-shot job's k2v2 at 128 sequences with kvarn's phase clocks,
# one engine per tree in the order given ("new old"). .gpuwork/head_ebe8960/ holds ebe8960's
# staging.py, graph.py and backend.py (before this change).
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
for rows in 128 64; do
  python3 benchmarks/plan_step.py --rows $rows --rounds 7 2>&1 | tee -a $R/plan_step.log
done
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_plugin.py tests/test_kvcache_staging.py > $R/tests.log 2>&1
echo "tests exit $?"; tail -2 $R/tests.log
mkdir -p /tmp/newtree && cp kvarn_cli/kvcache/{staging,graph,backend}.py /tmp/newtree/
A="--model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 128 \
  --max-tokens 512 --length-spread 0.5 --few-shot 8 --max-prompt-tokens 1536 --max-num-seqs 128"
for T in ${2:-new old}; do
  if [ $T = old ]; then cp .gpuwork/head_ebe8960/*.py kvarn_cli/kvcache/; else cp /tmp/newtree/*.py kvarn_cli/kvcache/; fi
  timeout ${3:-170} python3 benchmarks/profile_admission.py $A --preset k2v2 --phases-only > $R/phases_$T.log 2>&1
  echo "$T exit $?"; grep -E "^preset|^timed pass|^phase pass" $R/phases_$T.log | cut -c1-400
done
cp /tmp/newtree/*.py kvarn_cli/kvcache/
