#!/usr/bin/env bash
# Session 17 (issue 6), after the vLLM 0.26 carry: where the k2v2-g64 step of the SmolLM2 1k job
# goes (runs 131: 7.25-7.6 ms median against k2v2's 3.9-4.4 and fp8's 4.72).
# Stage p: benchmarks/profile_engine.py, 128 requests of 92 prompt tokens and 1,024 new ones,
# 4 GiB of KV (nothing queues), for the presets in $3; torch.profiler over 64 steps from step 500.
# Stage h: the host plan's cost per step on this machine's CPU (benchmarks/plan_step.py), G 128 and 64.
# $1: output folder, $2: stage, $3: presets (stage p).
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
case $stage in
p) for p in $(echo ${3:?presets} | tr ',' ' '); do
     timeout 290 python3 benchmarks/profile_engine.py --model /tmp/models/smollm2-135m --preset $p --prompts 128 \
       --prompt-tokens 92 --max-tokens 1024 --kv-cache-memory-mib 4096 --top 40 --gpu-profile \
       --gpu-profile-after 500 --gpu-profile-steps 64 > $R/prof_$p.log 2>&1
     echo "$p exit $?"; grep -E "pass|max_num_seqs|waits for the GPU" $R/prof_$p.log | cut -c1-300
   done ;;
h) for g in 128 64; do python3 benchmarks/plan_step.py --rows 128 --block-size $g --width $(( 1124 / g + 1 )) --prompt 92 --steps 1000; done 2>&1 | tee $R/plan.log ;;
esac
