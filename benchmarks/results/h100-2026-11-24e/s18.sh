#!/usr/bin/env bash
# Lease 5 of session 14 (issue 6), after the vLLM 0.26 carry. Stage a: GPU kernel tests and the
# decode benchmark (as s17.sh) on the tree of the first_blocks commit; then SmolLM2 k2v2 in vLLM
# with decode CUDA graphs (graphs_smoke.py of h100-2026-11-24d: 8 prompts x 200 greedy tokens),
# twice with KVARN_DETERMINISTIC_DECODE=1. Stage b: twice with the default (tickets), and the
# comparisons.  $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
G=benchmarks/results/h100-2026-11-24d/graphs_smoke.py
smoke() {  # $1 name, $2 KVARN_DETERMINISTIC_DECODE
  mkdir -p /tmp/smoke  # kept between the calls of one lease, for stage b's comparisons
  KVARN_DETERMINISTIC_DECODE=$2 timeout 200 python3 $G /tmp/models/smollm2-135m .gpuwork/gsm8k_test.jsonl /tmp/smoke/$1.json > $R/$1.log 2>&1
  echo "$1 exit $?"; cp /tmp/smoke/$1.json $R/ 2>/dev/null
}
case $stage in
a)
  TREE=3a05864 PYTHONPATH=$PWD bash benchmarks/results/h100-2026-11-24e/s17.sh $R
  smoke det1 1; smoke det2 1 ;;
b)
  smoke tick1 0; smoke tick2 0
  for pair in "det1 det2" "tick1 tick2" "det1 tick1"; do
    set -- $pair; echo "== $1 vs $2"; python3 $G compare /tmp/smoke/$1.json /tmp/smoke/$2.json
  done 2>&1 | tee $R/compare.log ;;
esac
