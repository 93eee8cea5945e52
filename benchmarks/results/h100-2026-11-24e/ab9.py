"""Session 14, run 109: as ab8.py (run 108), with the ticket kernel's splits that hold a 16-bit
slot taking no fixed blocks (they ask for tickets once done with their slots): head.cu
(323ec13), dyn1.cu (run 108's tickets) and the working tree, each case timed head, dyn1, new,
new, dyn1, head in one process. Then the new kernel's timeline at 1, 32 and 64 rows (32k) and
64 rows at 4k.

    python ab9.py

head.cu and dyn1.cu are not kept: `git show 323ec13:kvarn_cli/kernels/cuda_decode_split.cu >
head.cu`, and `patch -o dyn1.cu kvarn_cli/kernels/cuda_decode_split.cu dyn1.diff` on the
kernel of the commit that added this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24d"))  # ab6.attr: cuFuncGetAttribute

import ab8  # noqa: E402
import timeline as tl  # noqa: E402
from ab6 import attr  # noqa: E402
from kvarn_cli.kernels import cuda_decode  # noqa: E402

ab8.SOURCES["dyn1"] = (HERE / "dyn1.cu").read_text()
ab8.CACHES["dyn1"] = ({}, {})


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    cases = [("smollm2", "k2v2", b, 32768) for b in (1, 8, 32, 64)] + [("smollm2", "k4v4", b, 32768) for b in (1, 8, 32, 64)]
    cases += [("smollm2", "k2v2", b, 4096) for b in (8, 32, 64)] + [("smollm2", "k2v2", b, 16384) for b in (8, 32)]
    cases += [("qwen3-4b", "k2v2", 32, 32768), ("qwen3-4b", "k4v4", 32, 32768)]
    shapes = {"smollm2": (3, 9, 64), "qwen3-4b": (8, 32, 128)}
    for shape, m, b, ctx in cases:
        kvh, qh, d = shapes[shape]
        t: dict[str, list[float]] = {}
        for name in ("head", "dyn1", "new", "new", "dyn1", "head"):
            ab8.use(name)
            t.setdefault(name, []).append(tl.timed_case(m, b, kvh, qh, d, True, ctx))
        h = min(t["head"])
        print(f"{shape:8s} {m} L={ctx:5d} B={b:2d}: " + "  ".join(f"{k} {v[0]:7.1f} {v[1]:7.1f}" for k, v in t.items())
              + f"  dyn1/head {min(t['dyn1']) / h:.3f}  new/head {min(t['new']) / h:.3f}", flush=True)
    for name in ab8.SOURCES:
        for key, kernel in ab8.CACHES[name][0].items():
            print(f"{name} kb{key[2]} vb{key[3]} D{key[1]} fused{int(key[-1])}: {attr(kernel, 4)} regs, {attr(kernel, 3)} B local")
    ab8.use("new")
    tl.TEXT = ab8.SOURCES["new"]
    tl.patched(tl.STAMP)
    for b, ctx in ((1, 32768), (32, 32768), (64, 32768), (64, 4096)):
        tl.timeline("k2v2", b, ctx)


if __name__ == "__main__":
    main()
