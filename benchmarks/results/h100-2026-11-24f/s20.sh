#!/usr/bin/env bash
# Lease 2 of session 15 (issue 6), after the vLLM 0.26 carry: the Qwen3-4B-shaped 2k-6k job
# again on f9be4cd (runs 91-92 ran session 11's kernels; at head_dim 128 only the refactor's
# register allocation and k4v4's two waves changed since): 32 chats, lengths spread 0.5 around
# 4,096 tokens, 4 GiB of KV, dummy weights, two timed passes per engine. Stage a: k2v2 + fp8,
# stage b: bf16 + k4v4.  $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts 32 \
    --max-tokens 4096 --length-spread 0.5 --passes 2 --warmup-prompts 4 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
case $stage in
a) nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
   job k2v2,fp8 270 e2e4k_k2v2_fp8 ;;
b) job bf16,k4v4 280 e2e4k_bf16_k4v4 ;;
esac
