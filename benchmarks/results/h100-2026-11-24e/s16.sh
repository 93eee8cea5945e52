#!/usr/bin/env bash
# Lease 3 of session 14 (issue 6), after the vLLM 0.26 carry: stage a: GPU kernel and backend
# tests and the 32k/4k decode benchmark of the working tree (tickets at head_dim 64); stage b/c:
# SmolLM2-135M end to end under 1 GiB of KV (staging included), 128 GSM8K chats x 1,024 tokens,
# two timed passes per engine, bf16 + fp8 (b) and k4v4 + k2v2 (c).  $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
job() {  # $1 presets, $2 per-preset limit, $3 file name
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
    --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 \
    --passes 2 --warmup-prompts 8 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-1200
}
case $stage in
a)
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_kvcache_triton.py \
    -k "cuda or rotated or kvcache or split_count" 2>&1 | tail -6 | tee $R/tests.log
  timeout 200 python3 benchmarks/decode_attention.py --variants cuda --methods k2v2,k4v4 --contexts 4096,32768 \
    --batches 1,8,32,64 --no-flush --out $R/decode.json 2>&1 | tee $R/decode.log | tail -34
  ;;
b) job bf16,fp8 250 e2e_bf16_fp8 ;;
c) job k4v4,k2v2 250 e2e_k4v4_k2v2 ;;
esac
# stage d/e: the 2k-6k job on SmolLM2 (32 chats, lengths spread 0.5 around 4,096, same 1 GiB)
job4k() {
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
    --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 1024 --num-prompts 32 --max-tokens 4096 \
    --length-spread 0.5 --passes 2 --warmup-prompts 4 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-1200
}
case $stage in
d) job4k bf16,fp8 270 e2e4k_bf16_fp8 ;;
e) job4k k4v4,k2v2 270 e2e4k_k4v4_k2v2 ;;
esac
