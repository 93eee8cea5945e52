# lease of 2026-11-23 (session 7), run 61 (the device call's command, as one script): kvarn run k2v2 on SmolLM2 with
# the engine core in-process and faulthandler armed (stacks if it ran past 190 s: it finished in 91 s), then the 4k
# job (32 x 4096 tokens, Qwen3-4B-shaped dummy model, 4 GiB KV) for k2v2, engine core in its own process (vLLM's default)
R=$1
rm -rf /tmp/runs
(VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONFAULTHANDLER=1 python3 -m kvarn_cli run sample_jobs/word_problems.jsonl \
   --model /tmp/models/smollm2-135m --preset k2v2 --out /tmp/runs/k2v2 --temperature 0 --max-tokens 200 \
   --kv-cache-memory 256MiB > $R/run_k2v2.log 2>&1 & p=$!
 for i in $(seq 190); do sleep 1; kill -0 $p 2>/dev/null || break; done
 if kill -0 $p 2>/dev/null; then echo "still running at $i s: stacks"; kill -ABRT $p; sleep 3; fi
 wait $p; echo "kvarn run exit $? after $i s")
PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=2 PRESETS=k2v2 TOTAL_TIMEOUT=330 PRESET_TIMEOUT=320 OUT=$R bash benchmarks/gpu_session.sh dummy >/dev/null 2>&1
python3 benchmarks/results/h100-2026-11-23e/summ.py $R/e2e_dummy.json
