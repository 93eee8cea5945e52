# lease of 2026-11-23 (session 8), second: the 1k job (128 GSM8K chats x 1,024 generated tokens, Qwen3-4B-shaped
# dummy model, 4 GiB KV, 16 warm-up chats, 2 timed passes), engine core in its own process, with the full engine-start
# warm-up (e027d0a). Stage d (run 68): k2v2 and fp8; stage e (run 69): bf16 and k4v4.
R=$1; stage=$2
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts 128 \
    --max-tokens 1024 --passes 2 --warmup-prompts 16 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
case $stage in
d) job k2v2,fp8 240 e2e_1k_k2v2_fp8 ;;
e) job bf16,k4v4 240 e2e_1k_bf16_k4v4 ;;
esac
