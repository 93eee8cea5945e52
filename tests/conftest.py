"""Shared fixtures: paths to the shared data and the offline test model, and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))
TEST_MODEL = Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models" / "smollm2-135m"))

# Without a GPU the Triton kernels run in Triton's interpreter. Triton decides per @triton.jit
# function at decoration time, and vLLM imports triton as soon as any test imports vLLM, so the
# variable must be set here, before every test module, not in the Triton test module.
import torch  # noqa: E402  (torch itself does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One-process CPU engine on both cores: start-up in seconds instead of a minute.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "math500.jsonl").is_file():
        pytest.skip(f"shared data not found at {DATA} (set KVARN_DATA)")
    return DATA


@pytest.fixture(scope="session")
def test_model() -> Path:
    if not (TEST_MODEL / "config.json").is_file():
        pytest.skip(f"test model not found at {TEST_MODEL}; run `make test-model` (or set KVARN_TEST_MODEL)")
    return TEST_MODEL


def kvarn(*args: str, timeout: float = 900, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real `kvarn` CLI in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "kvarn_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=kw.pop("cwd", REPO), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kvarn {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
