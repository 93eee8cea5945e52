"""Session 14, run 108: blocks dealt out by tickets in the one-launch decode (working tree)
against the committed kernel (head.cu, 323ec13's cuda_decode_split.cu; the kernel arguments are
the same), in one process: registers, then decode time at 32k (and 4k) on both shapes, each
case timed head, new, new, head (CUDA-graph replays as benchmarks/decode_attention.py times
them). Then the new kernel's timeline (timeline.py's stamps) and k4v4 at head_dim 128 with
two waves.

    python ab8.py

head.cu is not kept: `git show 323ec13:kvarn_cli/kernels/cuda_decode_split.cu > head.cu`. The
kernel run 108 ran as "new" is dyn1.cu of ab9.py (see there).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24d"))  # ab6.attr: cuFuncGetAttribute

import timeline as tl  # noqa: E402
from ab6 import attr  # noqa: E402
from kvarn_cli.kernels import cuda_decode, triton_decode  # noqa: E402

SOURCES = {"head": (HERE / "head.cu").read_text(), "new": cuda_decode.SOURCE.read_text()}
CACHES: dict[str, tuple[dict, dict]] = {name: ({}, {}) for name in SOURCES}


def use(name: str) -> None:
    cuda_decode._source_text = lambda t=SOURCES[name]: t
    cuda_decode._KERNELS, cuda_decode._RESIDENT = CACHES[name]


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    cases = [("smollm2", m, b, 32768) for m in ("k2v2", "k4v4") for b in (1, 8, 32, 64)]
    cases += [("smollm2", "k2v2", 64, 4096), ("smollm2", "k2v2", 32, 4096)]
    cases += [("qwen3-4b", m, b, 32768) for m in ("k2v2", "k4v4") for b in (1, 8, 32, 64)]
    shapes = {"smollm2": (3, 9, 64), "qwen3-4b": (8, 32, 128)}
    for shape, m, b, ctx in cases:
        kvh, qh, d = shapes[shape]
        t = {}
        for name in ("head", "new", "new", "head"):
            use(name)
            t.setdefault(name, []).append(tl.timed_case(m, b, kvh, qh, d, True, ctx))
        h, n = min(t["head"]), min(t["new"])
        print(f"{shape:8s} {m} L={ctx:5d} B={b:2d}: head {t['head'][0]:7.1f} {t['head'][1]:7.1f}  new {t['new'][0]:7.1f} {t['new'][1]:7.1f}"
              f"  new/head {n / h:.3f}", flush=True)
    for name in SOURCES:
        for key, kernel in CACHES[name][0].items():
            print(f"{name} kb{key[2]} vb{key[3]} D{key[1]} fused{int(key[-1])}: {attr(kernel, 4)} regs, {attr(kernel, 3)} B local")
    use("new")
    for waves in (1, 2):
        triton_decode.CUDA_WAVES = waves
        line = f"new k4v4 D=128 waves={waves}:"
        for b in (1, 8, 32, 64):
            line += f" B={b} {tl.timed_case('k4v4', b, 8, 32, 128, True):7.1f}"
        print(line + " us", flush=True)
    triton_decode.CUDA_WAVES = 1
    tl.TEXT = SOURCES["new"]
    tl.patched(tl.STAMP)
    for m in ("k2v2", "k4v4"):
        for b in (32, 64):
            tl.timeline(m, b)


if __name__ == "__main__":
    main()
