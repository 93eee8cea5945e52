# lease of 2026-11-23 (session 7), run 62: the 4k job for fp8 (same lease as runs 60-61), then k2v2 again with the
# Python stacks of any timed step over 2 s (engine core in-process: --stall-stacks), to see run 61's step-2 stall
R=$1
PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=2 PRESETS=fp8 TOTAL_TIMEOUT=260 PRESET_TIMEOUT=250 OUT=$R bash benchmarks/gpu_session.sh dummy >/dev/null 2>&1
python3 benchmarks/results/h100-2026-11-23e/summ.py $R/e2e_dummy.json
timeout 290 python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape --load-format dummy --data .gpuwork/gsm8k_test.jsonl \
  --presets k2v2 --kv-budget-mib 4096 --num-prompts 32 --max-tokens 4096 --passes 2 --warmup-prompts 4 --timeout-s 280 \
  --stall-stacks 2 --out $R/e2e_stall.json > $R/e2e_stall.log 2>&1
python3 - $R <<'PY'
import json, sys
d = json.load(open(f"{sys.argv[1]}/e2e_stall.json"))
for r in d["results"]:
    print(r.get("preset"), r.get("error"), r.get("phases"), r.get("first_fill_prefill"), [(p["tokens_per_s"], p["max_step_ms"], p["stall_s"], p.get("stalls")) for p in r.get("passes", [])])
    for s in r.get("stall_stacks", []):
        print(s[-3500:])
PY
