# lease of 2026-11-23 (session 5), call B: the CUDA tests (call A's timed out at 74% while compiling), then greedy
# tokens in vLLM (PyTorch path, tmwhb, hilo) on the branch
R=$1
t() { echo "== $*"; }
M=/tmp/models/smollm2-135m
t tests
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/test_triton_stage.py tests/test_kvcache_triton.py tests/test_triton_kernels.py > $R/tests.log 2>&1; echo "exit $?"; tail -6 $R/tests.log
t greedy
for cfg in "0 tmwhb" "1 tmwhb" "1 hilo"; do set -- $cfg
  KVARN_FORCE_TRITON=$1 KVARN_DECODE_VARIANT=$2 timeout 100 python3 tests/triton_engine_smoke.py $M .gpuwork $R/greedy_$1_$2.json 250 > /tmp/greedy_$1_$2.log 2>&1; echo "force=$1 $2 exit $?"; tail -2 /tmp/greedy_$1_$2.log
done
python3 - $R <<'PY'
import json, sys
r = sys.argv[1]
a = json.load(open(f"{r}/greedy_0_tmwhb.json"))
for name in ("1_tmwhb", "1_hilo"):
    b = json.load(open(f"{r}/greedy_{name}.json"))
    same = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), len(a["tokens"]))
    d = [abs(x - y) for x, y in zip(a["logprobs"][:same], b["logprobs"][:same])]
    print(f"PyTorch path vs Triton {name}: first {same} of {len(a['tokens'])} greedy tokens equal; logprob |diff| max {max(d or [0]):.4f} mean {sum(d) / max(1, len(d)):.5f}")
PY
