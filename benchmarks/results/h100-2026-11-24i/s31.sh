#!/usr/bin/env bash
# Session 18 (issue 6), run 147 (commit after 127e6ae: e2e_gpu's capN label): run 146's 8-shot job again,
# fp8 / k2v2 / k2v2 with vLLM's CUDA graphs captured up to 512 tokens (vLLM's default for 64 sequences
# is 128, so a step that adds a ~70-token prefill to 63 decodes ran eagerly: run 146's 80-100 ms stalls?).
set -u
R=${1:?output folder}; mkdir -p "$R"
bash .gpuwork/s28.sh $R fp8,k2v2,k2v2:cap512 560 175 1
