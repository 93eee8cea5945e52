# lease of 2026-11-23 (session 5), call C: the 4k-token job (as runs 45-46, one timed pass each) with the branch's
# k2v2, fp8, then main's k2v2 (.gpuwork/main)
R=$1
mkdir -p $R/branch $R/main .gpuwork/main/.gpuwork && cp .gpuwork/gsm8k_test.jsonl .gpuwork/main/.gpuwork/
PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=1 PRESETS=k2v2,fp8 TOTAL_TIMEOUT=330 OUT=$R/branch bash benchmarks/gpu_session.sh dummy 2>&1 | tail -5
cd .gpuwork/main && PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=1 PRESETS=k2v2 TOTAL_TIMEOUT=200 OUT=$R/main bash benchmarks/gpu_session.sh dummy 2>&1 | tail -4
