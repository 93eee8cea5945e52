#!/usr/bin/env bash
# Lease 4 of session 13 (issue 6), after the vLLM 0.26 carry: the one-launch decode inside vLLM.
# (1) benchmarks/gpu_session.sh paths: the Triton-kernel vs PyTorch path of the backend in one
# eager float32 SmolLM2 k2v2 engine; (2) graphs_smoke.py: bf16 SmolLM2 k2v2 with decode CUDA
# graphs, 8 prompts, default decode (CUDA kernel) against KVARN_DECODE_VARIANT=hilo.  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24d
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
OUT=$R bash benchmarks/gpu_session.sh paths 2>&1 | tail -4
for v in cuda hilo; do
  [ $v = hilo ] && export KVARN_DECODE_VARIANT=hilo
  timeout 200 python3 $D/graphs_smoke.py /tmp/models/smollm2-135m .gpuwork/gsm8k_test.jsonl /tmp/graphs_$v.json > "$R/graphs_$v.log" 2>&1
  echo "graphs $v exit $?"; grep -i "captur" "$R/graphs_$v.log" | tail -2
done
python3 $D/graphs_smoke.py compare /tmp/graphs_cuda.json /tmp/graphs_hilo.json 2>&1 | tee "$R/graphs_compare.log"
