#!/usr/bin/env bash
# Lease 5 of session 13 (issue 6), after the vLLM 0.26 carry: the float32 paths check three
# ways in-process (paths2.py): PyTorch path, kernel path one-launch, kernel path two-launch.
set -u
R=${1:?output folder}; mkdir -p "$R"
D=benchmarks/results/h100-2026-11-24d
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
m=/tmp/models/smollm2-135m
KVARN_FORCE_TRITON=0 timeout 150 python3 $D/paths2.py one $m .gpuwork /tmp/p_torch.json 250 > $R/p_torch.log 2>&1; echo "torch exit $?"
KVARN_FORCE_TRITON=1 timeout 150 python3 $D/paths2.py one $m .gpuwork /tmp/p_one.json 250 > $R/p_one.log 2>&1; echo "one exit $?"
KVARN_FORCE_TRITON=1 timeout 150 python3 $D/paths2.py two $m .gpuwork /tmp/p_two.json 250 > $R/p_two.log 2>&1; echo "two exit $?"
python3 - <<'PY' 2>&1 | tee $R/compare.log
import json
d = {k: json.load(open(f"/tmp/p_{k}.json")) for k in ("torch", "one", "two")}
for a, b in (("torch", "one"), ("torch", "two"), ("one", "two")):
    x, y = d[a], d[b]
    same = next((i for i, (s, t) in enumerate(zip(x["tokens"], y["tokens"])) if s != t), len(x["tokens"]))
    diff = [abs(s - t) for s, t in zip(x["logprobs"][:same], y["logprobs"][:same])]
    print(f"{a} vs {b}: first {same} of {len(x['tokens'])} greedy tokens equal; logprob |diff| max {max(diff or [0]):.2e} mean {sum(diff) / max(1, len(diff)):.2e}")
PY
