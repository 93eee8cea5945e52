#!/usr/bin/env bash
# The GPU lease of issue 6, stage by stage, after vLLM 0.26 was carried (../shared/gpu/).
#   bash benchmarks/gpu_session.sh check   # CUDA tests, kvarn run fp16/k2v2, Triton vs PyTorch in vLLM
#   bash benchmarks/gpu_session.sh e2e     # benchmarks/e2e_gpu.py: bf16 / fp8 / k4v4 / k2v2 under one KV budget
#   bash benchmarks/gpu_session.sh kernels # decode/flush microbenchmarks
#   bash benchmarks/gpu_session.sh step    # benchmarks/decode_step.py: one decode step's KV work, kvarn kernels vs vLLM bf16
#   bash benchmarks/gpu_session.sh graphs  # kernel tests, kvarn run fp16/k2v2 and Triton vs PyTorch with decode CUDA graphs (the default)
#   bash benchmarks/gpu_session.sh paths   # only the Triton vs PyTorch greedy tokens in one vLLM engine
#   bash benchmarks/gpu_session.sh prefix  # prefix-cache hits, decode graphs on and off: same greedy tokens? (tests/prefix_hit_smoke.py)
#   bash benchmarks/gpu_session.sh dummy   # e2e_gpu.py on a Qwen3-4B-shaped model with random weights (benchmarks/dummy_model.py)
#   bash benchmarks/gpu_session.sh stall   # the 4k job's k2v2 step that stalls with the engine core in its own process:
#                                          # the engine core's stacks (--core-stall-dump), then with OMP_NUM_THREADS=16
# Needs, carried beside the tree: .whl/ (orjson for the CLI) and .gpuwork/gsm8k_test.jsonl.
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu-out.
set -u
stage=${1:?stage: check, e2e or kernels}
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
model=/tmp/models/smollm2-135m
data=.gpuwork
if [ -d .whl ] && ! python3 -c "import orjson" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
python3 -c "import torch, triton, vllm; print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())"
git log -1 --format='commit %h %s' 2>/dev/null || true

# kvarn run fp16 and k2v2 on the word problems; how far their greedy texts agree. $1: log prefix
engine_runs() {
  for preset in fp16 k2v2; do
    /usr/bin/time -f "$preset wall %e s" timeout 200 python3 -m kvarn_cli run sample_jobs/word_problems.jsonl \
      --model "$model" --preset "$preset" --out "/tmp/runs/$preset" --temperature 0 --max-tokens 400 \
      --kv-cache-memory 256MiB > "$out/$1_run_$preset.log" 2>&1
    echo "exit $? ($preset)"; tail -4 "$out/$1_run_$preset.log"
  done
  grep -i "capturing" "$out/$1_run_k2v2.log" | tail -2
  python3 - <<'PY' 2>&1 | tee "$out/$1_agreement.log"
import json
rows = {p: {json.loads(l)["id"]: json.loads(l) for l in open(f"/tmp/runs/{p}/outputs.jsonl")} for p in ("fp16", "k2v2")}
for rid, a in rows["fp16"].items():
    b = rows["k2v2"].get(rid)
    ta, tb = a["completions"][0], (b or {"completions": [""]})["completions"][0]
    same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    print(f"{rid}: first {same} chars equal; fp16 {len(ta)} chars, k2v2 {len(tb)} chars")
print(json.dumps(json.load(open("/tmp/runs/k2v2/stats.json")), indent=1)[:3000])
PY
}

# The Triton and PyTorch paths of the backend in one vLLM engine (eager, float32). $1: log prefix
path_smoke() {
  for force in 0 1; do
    KVARN_FORCE_TRITON=$force timeout 150 python3 tests/triton_engine_smoke.py "$model" "$data" "/tmp/smoke_$force.json" 250 \
      > "$out/$1_smoke_$force.log" 2>&1; echo "smoke force=$force exit $?"
  done
  python3 - <<'PY' 2>&1 | tee -a "$out/$1_agreement.log"
import json
a, b = (json.load(open(f"/tmp/smoke_{f}.json")) for f in "01")
same = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), len(a["tokens"]))
diff = [abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])]
print(f"vLLM k2v2 on CUDA, PyTorch vs Triton path (eager engine): first {same} of {len(a['tokens'])} greedy tokens equal; "
      f"logprob |diff| max {max(diff[:same] or [0]):.4f} mean {sum(diff[:same]) / max(1, same):.5f} over the equal prefix")
PY
}

case "$stage" in
check)
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_stage.py tests/test_triton_kernels.py \
    tests/test_kvcache_triton.py 2>&1 | tee "$out/check_tests.log" | tail -15
  engine_runs check
  path_smoke check
  timeout 60 python3 benchmarks/decode_magnitude_error.py 2>&1 | tee "$out/check_magnitude.log" | tail -12
  ;;
prefix)
  for graphs in 1 0; do
    echo "== KVARN_DECODE_GRAPHS=$graphs"
    KVARN_DECODE_GRAPHS=$graphs timeout 150 python3 tests/prefix_hit_smoke.py "$model" "$data/gsm8k_test.jsonl" k2v2-g64 2>&1 \
      | grep "prompt \|generate" | tee -a "$out/prefix.log"
  done
  ;;
graphs)
  export KVARN_DECODE_GRAPHS=1
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_stage.py tests/test_triton_kernels.py \
    -k "stage or flush or hilo" 2>&1 | tee "$out/graphs_tests.log" | tail -6
  engine_runs graphs
  path_smoke graphs
  ;;
paths)
  path_smoke paths
  ;;
step)
  timeout 240 python3 benchmarks/decode_step.py --rows "${ROWS:-104,128}" --methods "${METHODS:-k2v2,k4v4}" \
    --out "$out/decode_step.json" 2>&1 | tee "$out/step.log" | tail -20
  ;;
e2e)
  timeout 570 python3 benchmarks/e2e_gpu.py --model "$model" --data "$data/gsm8k_test.jsonl" \
    --presets "${PRESETS:-bf16,k2v2-g64,fp8,k4v4-g64}" --kv-budget-mib "${BUDGET:-1024}" --num-prompts "${PROMPTS:-128}" \
    --max-tokens "${TOKENS:-1024}" --timeout-s "${PRESET_TIMEOUT:-200}" --out "$out/e2e_gpu.json" 2>&1 | tee "$out/e2e.log" | tail -40
  ;;
dummy)
  # a model whose GPU step outweighs vLLM's host work per request (SmolLM2's does not)
  python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like "$model"
  timeout "${TOTAL_TIMEOUT:-570}" python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape --load-format dummy \
    --data "$data/gsm8k_test.jsonl" --presets "${PRESETS:-bf16,fp8,k2v2}" --kv-budget-mib "${BUDGET:-4096}" \
    --num-prompts "${PROMPTS:-128}" --max-tokens "${TOKENS:-1024}" --passes "${PASSES:-1}" --warmup-prompts "${WARMUP:-8}" \
    --timeout-s "${PRESET_TIMEOUT:-180}" --out "$out/e2e_dummy.json" 2>&1 | tee "$out/e2e_dummy.log" | tail -12
  ;;
stall)
  # docs/BENCHMARKS.md runs 60-62: one front-end step of 13.4 s / 3.7 s per k2v2 pass, only with
  # vLLM's engine core in its own process. Its stacks, then the same with more Torch CPU threads
  python3 benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like "$model"
  for threads in default 16; do
    (if [ "$threads" != default ]; then export OMP_NUM_THREADS=$threads; fi
     timeout "${PRESET_TIMEOUT:-270}" python3 benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape --load-format dummy \
       --data "$data/gsm8k_test.jsonl" --presets k2v2 --kv-budget-mib 4096 --num-prompts 32 --max-tokens 4096 --passes 2 \
       --warmup-prompts 4 --core-stall-dump "${DUMP_S:-2}" --timeout-s "$(( ${PRESET_TIMEOUT:-270} - 10 ))" \
       --out "$out/stall_$threads.json") > "$out/stall_$threads.log" 2>&1
    python3 - "$out/stall_$threads.json" "$threads" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"OMP threads {sys.argv[2]}:", r.get("error"), [(p["tokens_per_s"], p["stalls"][:2]) for p in r.get("passes", [])])
    for d in r.get("core_stall_dumps", [])[:4]:
        print(d[:2500])
PY
  done
  ;;
profile)
  VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout 260 python3 benchmarks/profile_engine.py --model "$model" \
    --preset "${PRESET:-k2v2}" --prompts "${PROMPTS:-32}" --max-tokens "${TOKENS:-300}" ${PROFILE_ARGS:-} 2>&1 | grep -v "Capturing\|Loading" | tee "$out/profile.log" | tail -120
  timeout 300 python3 benchmarks/decode_attention.py --variants "${VARIANTS:-tmwhb,hilo}" --methods k2v2 \
    --contexts 32768 --batches 1,32,64 --no-flush --out "$out/decode.json" 2>&1 | tee "$out/kernels.log" | tail -30
  ;;
decode)
  # each candidate's CUDA tests in its own process (an illegal access poisons the CUDA context
  # for every later test), then the 32k timings of the candidates that passed and hilo
  # (with TUNE=1 the first passing candidate's split counts are tried too)
  ok=""
  for v in ${TRY:-tmw tmwb tmws tmwh tmwhb}; do
    ids=$(python3 -m pytest --collect-only -q -p no:cacheprovider tests/test_triton_kernels.py 2>/dev/null \
      | grep -E "decode_matches_dequantized_sdpa\[$v-|decode_block_size_64\[$v\]|loads_stay_inside_its_tensors\[$v\]")
    if [ -n "$ids" ] && CUDA_LAUNCH_BLOCKING=1 timeout 90 python3 -m pytest -q -p no:cacheprovider $ids > "$out/decode_tests_$v.log" 2>&1; then
      ok="$ok$v,"; echo "$v: tests pass ($(tail -1 "$out/decode_tests_$v.log"))"
    else
      echo "$v: FAILED or timed out"; tail -3 "$out/decode_tests_$v.log"
    fi
  done
  timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/decode_attention.py --variants "${ok}hilo" --methods "${METHODS:-k2v2}" \
    --contexts 32768 --batches "${BATCHES:-1,32,64}" --no-flush ${TUNE:+--tune} --out "$out/decode.json" 2>&1 \
    | tee "$out/decode.log" | tail -24
  ;;
kernels)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_stage.py tests/test_triton_kernels.py \
    -k "${TEST_FILTER:-stage or flush or hilo or tmwhb}" 2>&1 | tee "$out/kernels_tests.log" | tail -12
  timeout 200 python3 benchmarks/decode_attention.py --variants "${VARIANTS:-tmwhb,hilo}" --methods k2v2 \
    --contexts 32768 --batches 1,32,64 --no-flush --out "$out/decode.json" 2>&1 | tee "$out/kernels.log" | tail -20
  timeout 120 python3 benchmarks/decode_attention.py --only flush --methods k2v2,k4v4 --flush-warps auto \
    --out "$out/flush.json" 2>&1 | tee "$out/flush.log" | tail -20
  ;;
esac
