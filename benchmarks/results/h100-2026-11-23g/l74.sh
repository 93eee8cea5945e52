# lease of 2026-11-23 (session 9), second: the 1k and 2k jobs with request lengths spread over (1 +- 0.5) x the mean
# (e2e_gpu.py --length-spread 0.5: the same lengths for every preset), k2v2 against fp8 and bf16 in the same lease.
# Qwen3-4B-shaped dummy model, 4 GiB KV, engine core in its own process, 2 timed passes.
# Stage j: 1k job k2v2 + fp8. k: 1k job bf16, 2k job k2v2. l: 2k job fp8 + bf16.
R=$1; stage=$2
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name, $4 prompts, $5 mean tokens, $6 warm-up prompts
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts $4 \
    --max-tokens $5 --length-spread 0.5 --passes 2 --warmup-prompts $6 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
case $stage in
j) job k2v2,fp8 270 e2e_1ks_k2v2_fp8 128 1024 16 ;;
k) job bf16 200 e2e_1ks_bf16 128 1024 16; job k2v2 200 e2e_2ks_k2v2 64 2048 8 ;;
l) job fp8,bf16 200 e2e_2ks_fp8_bf16 64 2048 8 ;;
esac
