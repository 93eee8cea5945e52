# lease of 2026-11-23 (session 9): k2v2-g64 (64-token tiles: half the 16-bit sink/tail per sequence) on the 1k job
# against bf16, fp8 and k2v2 in the same lease; the 2k job (64 chats x 2,048 tokens) for all of them; and `kvarn run`
# from a cold and a warm cache with a stack dump of any engine-core step over 1 s (the full engine-start warm-up).
# Qwen3-4B-shaped dummy model, 4 GiB KV, engine core in its own process (vLLM's default), 2 timed passes.
# Stage f: kvarn run (cold), 1k job k2v2-g64 + fp8. g: 1k job bf16 + k2v2. h: 2k job k2v2 + fp8.
# i: 2k job bf16 + k2v2-g64, kvarn run (warm).
R=$1; stage=$2
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name, $4 prompts, $5 max tokens, $6 warm-up prompts
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts $4 \
    --max-tokens $5 --passes 2 --warmup-prompts $6 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
kvrun() {  # $1 tag
  rm -rf /tmp/kv_$1
  KVARN_STALL_DUMP_S=1 /usr/bin/time -f "kvarn run $1 wall %e s" timeout 150 python3 -m kvarn_cli run \
    sample_jobs/word_problems.jsonl --model /tmp/models/smollm2-135m --preset k2v2 --temperature 0 --max-tokens 300 \
    --kv-cache-memory 256MiB --out /tmp/kv_$1 > $R/kvrun_$1.log 2>&1
  echo "kvarn run $1 exit $?"; tail -1 $R/kvrun_$1.log; cp /tmp/kv_$1/stats.json $R/kvrun_$1_stats.json 2>/dev/null
  grep -c "Thread 0x" $R/kvrun_$1.log; grep -n "most recent call first\|triton/compiler\|kvarn_cli/kvcache" $R/kvrun_$1.log | head -20
}
case $stage in
f) kvrun cold; job k2v2-g64,fp8 210 e2e_1k_g64_fp8 128 1024 16 ;;
g) job bf16,k2v2 230 e2e_1k_bf16_k2v2 128 1024 16 ;;
h) job k2v2,fp8 230 e2e_2k_k2v2_fp8 64 2048 8 ;;
i) job bf16,k2v2-g64 220 e2e_2k_bf16_g64 64 2048 8; kvrun warm ;;
esac
