#!/bin/bash
# kvarn as a Slurm job array: 4 shards of one job file, each on one GPU, resumable on requeue.
#   sbatch sample_jobs/slurm_array.sh jobs/math500.jsonl runs/math500-k2v2
# then, when all tasks are done:
#   kvarn merge runs/math500-k2v2/shard-* --out runs/math500-k2v2/all && kvarn score runs/math500-k2v2/all
#SBATCH --job-name=kvarn
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120          # SIGTERM two minutes before the time limit: kvarn saves and exits 75
#SBATCH --output=logs/kvarn-%A_%a.out
set -uo pipefail
JOBS=${1:?job file}
OUT=${2:?run directory}
mkdir -p "$OUT" logs
# kvarn reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT and runs shard ID/COUNT by itself.
# The same command resumes after a preemption or requeue: finished records are skipped.
kvarn run "$JOBS" --model Qwen/Qwen3-4B --bits 2 --max-tokens 16384 --temperature 0.6 --top-p 0.95 \
    --out "$OUT/shard-$SLURM_ARRAY_TASK_ID" &
wait $!                               # `wait` lets bash pass the TERM from --signal=B: on to kvarn
code=$?
if [ "$code" -eq 75 ]; then           # interrupted: put the task back in the queue; it resumes
    scontrol requeue "$SLURM_ARRAY_JOB_ID"_"$SLURM_ARRAY_TASK_ID"
fi
exit "$code"
