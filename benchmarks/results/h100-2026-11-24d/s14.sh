#!/usr/bin/env bash
# Lease 6 of session 13 (issue 6), after the vLLM 0.26 carry: paths3.py one/two/torch and the
# top-2 gaps where they part.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24d
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
m=/tmp/models/smollm2-135m
for mode in one two torch; do
  f=1; [ $mode = torch ] && f=0
  KVARN_FORCE_TRITON=$f timeout 150 python3 $D/paths3.py $mode $m .gpuwork $R/top_$mode.json > $R/top_$mode.log 2>&1; echo "$mode exit $?"
done
for pair in "one two" "torch two" "torch one"; do set -- $pair; python3 $D/paths3.py compare $R/top_$1.json $R/top_$2.json; done 2>&1 | tee $R/compare.log
