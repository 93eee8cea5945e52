#!/usr/bin/env bash
# Lease 2 of session 16 (issue 6), after the vLLM 0.26 carry: the CUDA decode kernel taking
# 64-token blocks (the -g64 presets). Stage t (no carry needed): the GPU kernel tests, and the decode
# benchmark of k2v2 and k2v2-g64 through the CUDA kernel and Triton's tmwhb (what -g64 ran
# before). Stage k: the backend's GPU tests. Stage e: SmolLM2 1k job at 1 GiB (runs 111-112, 128), fp8 against k2v2-g64 and k2v2.
# Stage f: the SmolLM2 2k-6k job under 512 MiB (runs 125-127), fp8 against k2v2-g64 at 32 sequences.
# $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
job1k() {  # $1 presets, $2 per-preset limit, $3 file name
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
    --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 \
    --passes 2 --warmup-prompts 8 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-700
}
case $stage in
t) nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
   timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
     -k "cuda or rotated or split_count or block_size_64" 2>&1 | tail -8 | tee $R/tests.log
   timeout 250 python3 benchmarks/decode_attention.py --variants cuda,tmwhb --methods k2v2,k2v2-g64 --contexts 4096,32768 \
     --batches 8,32,64 --no-flush --out $R/decode.json 2>&1 | tee $R/decode.log | tail -14 ;;
k) timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_triton.py 2>&1 | tail -8 | tee $R/tests_kvcache.log ;;
e) job1k fp8,k2v2-g64,k2v2 150 e2e1k_fp8_g64_k2v2 ;;
f) timeout 560 python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m --data .gpuwork/gsm8k_test.jsonl \
     --presets fp8,k2v2-g64 --kv-budget-mib 512 --num-prompts 32 --max-tokens 4096 --length-spread 0.5 --passes 2 \
     --warmup-prompts 4 --max-num-seqs 32 --timeout-s 260 --out $R/e2e4k512_fp8_g64.json > $R/e2e4k512_fp8_g64.log 2>&1
   echo "exit $?"; python3 .gpuwork/summ.py $R/e2e4k512_fp8_g64.json | cut -c1-700 ;;
esac
