"""Session 13, run 103: tests/triton_engine_smoke.py (SmolLM2 k2v2, eager, float32, 250 greedy
tokens) with the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so that the decode
can be held to the two-launch path: `two` makes cuda_decode._fusable refuse every output.
Run 102 found the kernel path 69/250 tokens equal to the PyTorch path where run 98 had 250;
this tells the one-launch form's share apart.

    python paths2.py {one,two} MODEL DATA_DIR OUT.json 250
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

mode = sys.argv.pop(1)
if mode == "two":
    from kvarn_cli.kernels import cuda_decode

    cuda_decode._fusable = lambda query, out: False
import triton_engine_smoke  # noqa: E402

triton_engine_smoke.main()
