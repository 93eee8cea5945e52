# Lease 5 of 2026-11-24 (session 11): the CUDA split kernel v3 (runs 84-87) inside vLLM. Stage a: GPU
# kernel and backend tests, the 32k/4k decode benchmark with the split sweep. Triton-vs-PyTorch-path
# greedy tokens in one SmolLM2 engine (run with stage c). Stage b: the 1k job (128 x 1,024) fp8 + k2v2. Stage c: the 1k
# job bf16. Stage d: 2k-6k varied lengths (32 x 4,096 mean, --length-spread 0.5) k2v2 + fp8. Stage e:
# the same job, bf16. Qwen3-4B-shaped dummy model, 4 GiB KV, engine core in its own process.
R=$1; stage=$2
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name, $4 prompts, $5 (mean) tokens, $6 warm-up prompts, $7 spread
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts $4 \
    --max-tokens $5 --length-spread $7 --passes 2 --warmup-prompts $6 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
case $stage in
a)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_kvcache_triton.py \
    -k "cuda or rotated or tmwhb or kvcache or split_count" 2>&1 | tail -6 | tee $R/tests.log
  timeout 170 python3 benchmarks/decode_attention.py --variants cuda,tmwhb --methods k2v2,k4v4 --contexts 4096,32768 \
    --batches 1,32,64 --no-flush --tune --out $R/decode.json 2>&1 | tee $R/decode.log | tail -30
  ;;
b) job fp8,k2v2 200 e2e_1k_fp8_k2v2 128 1024 16 0 ;;
c) job bf16 200 e2e_1k_bf16 128 1024 16 0; OUT=$R bash benchmarks/gpu_session.sh paths 2>&1 | tail -3 ;;
d) job k2v2,fp8 270 e2e_4ks_k2v2_fp8 32 4096 4 0.5 ;;
e) job bf16 280 e2e_4ks_bf16 32 4096 4 0.5 ;;
esac
