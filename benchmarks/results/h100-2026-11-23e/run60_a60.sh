# lease of 2026-11-23 (session 7), run 60: the engine-start flush warm-up on CUDA (its tests, and one kvarn run k2v2
# on SmolLM2, phases timed), then the 4k job (32 x 4096 tokens, Qwen3-4B-shaped dummy model, 4 GiB KV) for bf16
R=$1
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_kvcache_triton.py tests/test_kvcache_plugin.py \
  -k "warm_flush or prefill_flush" 2>&1 | tail -4
/usr/bin/time -f "kvarn run k2v2 wall %e s" timeout 120 python3 -m kvarn_cli run sample_jobs/word_problems.jsonl \
  --model /tmp/models/smollm2-135m --preset k2v2 --out /tmp/runs/k2v2 --temperature 0 --max-tokens 200 \
  --kv-cache-memory 256MiB > $R/run_k2v2.log 2>&1; echo "kvarn run exit $?"; grep -v "Capturing\|Loading" $R/run_k2v2.log | tail -5
PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=2 PRESETS=bf16 TOTAL_TIMEOUT=400 PRESET_TIMEOUT=390 OUT=$R bash benchmarks/gpu_session.sh dummy
python3 benchmarks/results/h100-2026-11-23e/summ.py $R/e2e_dummy.json
