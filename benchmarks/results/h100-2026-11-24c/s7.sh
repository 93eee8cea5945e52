#!/usr/bin/env bash
# Lease 3 of session 12: ab5.py (registers and the slot cost at head_dim 128).  $1: output folder.
set -u
R=${1:?output folder}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 benchmarks/results/h100-2026-11-24c/ab5.py 2>&1 | tee "$R/ab5.log"
