#!/usr/bin/env bash
# Lease 1 of session 16 (issue 6), after the vLLM 0.26 carry, tree of 4541370 (kernels as f9be4cd).
# Stages a/b: SmolLM2-135M 2k-6k job under 512 MiB of KV (staging included), so that fp8 must queue
# too (at 1 GiB, runs 113-114, it ran all 32 chats at once and only the host step time separated
# it from k2v2): 32 GSM8K chats, lengths spread 0.5 around 4,096, two timed passes per engine.
# Stage c: the 1k job at 1 GiB (runs 111-112) with fp8, k2v2 at the no-preemption cap, and k2v2
# allowed 120 and 128 sequences (oversubscribed: vLLM preempts when the paged blocks run out).
# $1: output folder, $2: stage.
set -u
R=${1:?output folder}; stage=${2:?stage}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -c "import orjson" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
job4k() {  # $1 presets, $2 per-preset limit, $3 file name, $4 --max-num-seqs (0: no-preemption cap)
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
    --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 512 --num-prompts 32 --max-tokens 4096 \
    --length-spread 0.5 --passes 2 --warmup-prompts 4 --max-num-seqs ${4:-0} --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
job1k() {  # $1 presets, $2 per-preset limit, $3 file name, $4 --max-num-seqs (0: no-preemption cap)
  timeout $(( $2 * $(echo $1 | tr ',' ' ' | wc -w) + 20 )) python3 benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
    --data .gpuwork/gsm8k_test.jsonl --presets $1 --kv-budget-mib 1024 --num-prompts 128 --max-tokens 1024 \
    --passes 2 --warmup-prompts 8 --max-num-seqs $4 --timeout-s $2 --out $R/$3.json > $R/$3.log 2>&1
  echo "job $1 seqs $4 exit $?"; python3 .gpuwork/summ.py $R/$3.json | cut -c1-900
}
# Run 125 (stage a, no-preemption cap) gave k2v2 24 sequences (the cap for 24 x 4,224 tokens) and
# fp8 32 with 28 preemptions: k2v2 0.89-0.93x fp8. Stage a2/b run the quantized presets at 32 (the
# default of `kvarn run` for quantized presets; vLLM preempts if the paged blocks run out), all four
# presets on one lease; stage c the 1k job at 1 GiB with k2v2 allowed 120 sequences.
case $stage in
a) nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
   job4k fp8,k2v2 250 e2e4k512_fp8_k2v2 ;;
a2) nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
   job4k fp8,k2v2 250 e2e4k512_fp8_k2v2s32 32 ;;
b) job4k bf16,k4v4 270 e2e4k512_bf16_k4v4s32 32 ;;
c) job1k fp8,k2v2 130 e2e1k_fp8_k2v2s120 120 ;;
esac
