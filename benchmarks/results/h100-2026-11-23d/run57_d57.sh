# lease of 2026-11-23 (session 5), run 57: where the k2v2 4k job's one ~9.4 s step goes (run 56): Python stacks of
# any timed step over 2 s (engine core in-process), two passes
R=$1
python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m
timeout 300 python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape --load-format dummy --data .gpuwork/gsm8k_test.jsonl \
  --presets k2v2 --kv-budget-mib 4096 --num-prompts 32 --max-tokens 4096 --passes 2 --warmup-prompts 4 --timeout-s 290 \
  --stall-stacks 2 --out $R/e2e_stall.json 2>&1 | tail -3 | cut -c1-600
python3 - $R <<'PY'
import json, sys
d = json.load(open(f"{sys.argv[1]}/e2e_stall.json"))
for r in d["results"]:
    print(r.get("preset"), r.get("error"), [(p["tokens_per_s"], p["max_step_ms"], p["stall_s"], p.get("stalls")) for p in r.get("passes", [])])
    for s in r.get("stall_stacks", []):
        print(s[-3000:])
PY
