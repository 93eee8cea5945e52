# lease of 2026-11-23 (session 8). Stage a (run 64): the kernels' CUDA tests after the split count became a
# runtime value, the builder's engine-start warm-up on CUDA, then the 4k job for k2v2 with the engine core in its
# own process (vLLM's default), stacks of any step over 2 s. Stage b (run 65): k4v4 and fp8. Stage c (run 66): bf16
# and the 32k decode microbenchmark. 4k job: 32 x 4096 tokens, Qwen3-4B-shaped dummy model, 4 GiB KV, 2 passes.
R=$1; stage=$2
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
[ -d /tmp/models/qwen3-4b-shape ] || python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m >/dev/null
job() {  # $1 presets, $2 per-preset limit, $3 file name
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape \
    --load-format dummy --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 4096 --num-prompts 32 \
    --max-tokens 4096 --passes 2 --warmup-prompts 4 --timeout-s $2 ${EXTRA:-} --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
case $stage in
a)
  timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_kernels.py tests/test_kvcache_plugin.py \
    -k "decode or eager_steps or flush" 2>&1 | tail -3
  EXTRA="--core-stall-dump 2" job k2v2 280 e2e_k2v2
  python3 - $R/e2e_k2v2.json <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    for d in r.get("core_stall_dumps", [])[:3]:
        print(d[:2000])
PY
  ;;
b) job k4v4,fp8 250 e2e_k4v4_fp8 ;;
c)
  job bf16 290 e2e_bf16
  timeout 150 python3 benchmarks/decode_attention.py --variants tmwhb --methods k2v2 --contexts 32768 --batches 1,32,64 \
    --no-flush --out $R/decode.json 2>&1 | tail -14
  ;;
esac
